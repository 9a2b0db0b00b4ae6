from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import MAX_AGENT_NODES, UserInfo
from shakeout.api.switch import ChaosSwitchSpec, ClusterScopedAttacks, NamespaceMode, TargetCaps
from shakeout.api.windows import TimeWindow
from shakeout.engine.concurrency import Holder
from shakeout.engine.policies import NamespaceFacts
from shakeout.engine.preconditions import (
    ADMISSION,
    ATTACK_START,
    CHECKS,
    PICKUP,
    Check,
    Refusal,
    RunFacts,
    WorkloadFacts,
    agent_nodes_within_limit,
    agents_can_attack,
    blast_radius_has_targets,
    cluster_scope_allowed,
    creator_still_member,
    evaluate,
    experiment_found,
    experiment_valid,
    inside_allowed_window,
    irreversible_attacks,
    namespace_allowed,
    no_other_run_holds_lock,
    nodes_within_cap,
    outside_blackout,
    run_seconds,
    run_within_length,
    scale_keeps_data,
    scale_within_caps,
    switch_enabled,
    switch_exists,
    within_caps,
)
from shakeout.engine.runs import Reason
from shakeout.engine.targets import Selection

CHAINS = {"ADMISSION": ADMISSION, "PICKUP": PICKUP, "ATTACK_START": ATTACK_START}


def spec(*attacks: tuple[str, str]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": name, "type": kind} for name, kind in attacks],
        }
    )


def raw_spec(*attacks: dict[str, Any], **timing: int) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": list(attacks),
            **timing,
        }
    )


def scale(kind: str, name: str, to: int, accept: bool = False) -> dict[str, Any]:
    parameters: dict[str, Any] = {"workload": {"kind": kind, "name": name}, "replicas": to}
    if accept:
        parameters["acceptDataLoss"] = True
    return {"name": "scale", "type": "ScaleWorkload", "scaleWorkload": parameters}


POD_SPEC = spec(("kill", "PodDelete"))
CORDON_SPEC = spec(("cordon", "NodeCordon"))
SCALE_SPEC = raw_spec(scale("Deployment", "web", 0))
STS_SPEC = raw_spec(scale("StatefulSet", "db", 1))
LONG_SPEC = raw_spec(
    {"name": "a", "type": "PodDelete", "durationSeconds": 30},
    {"name": "b", "type": "PodDelete", "durationSeconds": 60},
    warmUpSeconds=50,
    coolDownSeconds=10,
)


def allowing(*namespaces: str, control_plane: bool = False, **caps: int) -> ChaosSwitchSpec:
    """A switch that allows attacks of scope Cluster in `namespaces`."""
    return ChaosSwitchSpec(
        enabled=True,
        cluster_scoped_attacks=ClusterScopedAttacks(
            namespaces=list(namespaces), control_plane_nodes=control_plane
        ),
        caps=TargetCaps(**caps) if caps else None,
    )


def caps(**values: int) -> ChaosSwitchSpec:
    return ChaosSwitchSpec(enabled=True, caps=TargetCaps(**values))


NODE_SPEC = spec(("kill", "PodDelete"), ("burn", "CpuStress"))
XMAS = TimeWindow(name="xmas", dates=["2026-12-24", "2026-12-25"])
XMAS_DAY = datetime(2026, 12, 24, 10, tzinfo=UTC)
T_NOW = datetime(2026, 11, 30, 10, tzinfo=UTC)
MANY_NODES = tuple(f"n{i:03d}" for i in range(MAX_AGENT_NODES + 1))

# Every precondition holds.
OK = RunFacts(
    namespace="team-a",
    experiment_name="web",
    namespace_facts=NamespaceFacts("team-a", {}),
    experiment=NODE_SPEC,
    switch=ChaosSwitchSpec(enabled=True),
    protected_namespaces=frozenset({"shakeout-system"}),
    selection=Selection(matched=3, targets=("web-1", "web-2")),
    target_nodes=("n1", "n2"),
    agent_capabilities={"n1": {"CpuStress": None}, "n2": {"CpuStress": None}},
    creator=UserInfo(username="alice"),
)


@dataclass(frozen=True)
class Case:
    """Facts with one precondition broken: the check that refuses, and how."""

    id: str
    changes: dict[str, Any]
    check: Check
    reason: Reason
    words: tuple[str, ...]

    @property
    def facts(self) -> RunFacts:
        return replace(OK, **self.changes)


CASES = [
    Case(
        "no-switch",
        {"switch": None},
        switch_exists,
        Reason.EXPERIMENTING_DISABLED,
        ("no ChaosSwitch named default", "create one with spec.enabled: true"),
    ),
    Case(
        "stop-all",
        {"switch": ChaosSwitchSpec(enabled=False)},
        switch_enabled,
        Reason.EXPERIMENTING_DISABLED,
        ("Stop All", "spec.enabled: false", "kubectl shakeout continue"),
    ),
    Case(
        "in-blackout",
        {"switch": ChaosSwitchSpec(enabled=True, blackout_windows=[XMAS]), "now": XMAS_DAY},
        outside_blackout,
        Reason.OUTSIDE_WINDOW,
        ("blackout window xmas (2026-12-24, 2026-12-25, UTC)", "spec.blackoutWindows"),
    ),
    Case(
        "outside-allowed-windows",
        {"experiment": NODE_SPEC.model_copy(update={"allowed_windows": [XMAS]}), "now": T_NOW},
        inside_allowed_window,
        Reason.OUTSIDE_WINDOW,
        ("outside every allowed window of Experiment team-a/web: xmas (2026-12-24",),
    ),
    Case(
        "lock-held",
        {"holders": (Holder("team-b", "r1", "u1"),)},
        no_other_run_holds_lock,
        Reason.ANOTHER_RUN_ACTIVE,
        ("team-b/r1 holds the cluster-wide lock", "kubectl shakeout stop"),
    ),
    Case(
        "not-found",
        {"experiment_found": False, "experiment": None, "selection": None, "target_nodes": ()},
        experiment_found,
        Reason.EXPERIMENT_NOT_FOUND,
        ("Experiment team-a/web not found", "spec.experimentRef.name"),
    ),
    Case(
        "invalid",
        {"experiment_error": "attacks: too short", "experiment": None, "selection": None},
        experiment_valid,
        Reason.EXPERIMENT_INVALID,
        ("Experiment team-a/web is invalid: attacks: too short", "correct its spec"),
    ),
    Case(
        "selector-refused",
        {"selector_error": "the API server refuses the selector 'a b'", "selection": None},
        experiment_valid,
        Reason.EXPERIMENT_INVALID,
        ("Experiment team-a/web is invalid: the API server refuses the selector 'a b'",),
    ),
    Case(
        "system-namespace",
        {"namespace_facts": NamespaceFacts("kube-system", {})},
        namespace_allowed,
        Reason.NAMESPACE_PROTECTED,
        ("namespace kube-system is protected", "never targeted"),
    ),
    Case(
        "operator-namespace",
        {"namespace_facts": NamespaceFacts("shakeout-system", {})},
        namespace_allowed,
        Reason.NAMESPACE_PROTECTED,
        ("namespace shakeout-system is protected", "shakeout operator"),
    ),
    Case(
        "labelled-protected",
        {"namespace_facts": NamespaceFacts("team-a", {"shakeout.dev/protected": "true"})},
        namespace_allowed,
        Reason.NAMESPACE_PROTECTED,
        ("namespace team-a is protected", "shakeout.dev/protected=true"),
    ),
    Case(
        "not-opted-in",
        {"switch": ChaosSwitchSpec(enabled=True, namespace_mode=NamespaceMode.OPT_IN)},
        namespace_allowed,
        Reason.NAMESPACE_PROTECTED,
        ("namespace team-a has not opted in", "shakeout.dev/chaos=enabled"),
    ),
    Case(
        "nothing-matched",
        {"selection": Selection(matched=0, targets=()), "target_nodes": ()},
        blast_radius_has_targets,
        Reason.NO_TARGETS,
        ("Experiment team-a/web resolves to no pods (0 matched", "spec.blastRadius.selector"),
    ),
    Case(
        "limit-selects-none",
        {"selection": Selection(matched=5, targets=()), "target_nodes": ()},
        blast_radius_has_targets,
        Reason.NO_TARGETS,
        ("resolves to no pods (5 matched", "spec.blastRadius.limit selects none"),
    ),
    Case(
        "over-max-targets",
        {"switch": ChaosSwitchSpec(enabled=True, caps=TargetCaps(max_targets=1))},
        within_caps,
        Reason.OVER_TARGET_CAP,
        ("target 2 pods, over the cluster-wide cap of 1", "maxTargets"),
    ),
    Case(
        "over-max-percent",
        {
            "switch": ChaosSwitchSpec(enabled=True, caps=TargetCaps(max_percent=10)),
            "selection": Selection(matched=10, targets=("web-1", "web-2")),
        },
        within_caps,
        Reason.OVER_TARGET_CAP,
        ("target 2 of 10 matching pods", "maxPercent"),
    ),
    Case(
        "cordon-not-allowed-by-default",
        {"experiment": CORDON_SPEC},
        cluster_scope_allowed,
        Reason.CLUSTER_SCOPE_NOT_ALLOWED,
        (
            "cordon (NodeCordon): attacks whose effect reaches beyond the namespace are not "
            "allowed for namespace team-a",
            "spec.clusterScopedAttacks.namespaces",
        ),
    ),
    Case(
        "cordon-allowed-elsewhere",
        {"experiment": CORDON_SPEC, "switch": allowing("team-b")},
        cluster_scope_allowed,
        Reason.CLUSTER_SCOPE_NOT_ALLOWED,
        ("not allowed for namespace team-a",),
    ),
    Case(
        "run-too-long",
        {"experiment": LONG_SPEC, "switch": ChaosSwitchSpec(enabled=True, max_run_seconds=119)},
        run_within_length,
        Reason.RUN_TOO_LONG,
        ("last 120 s", "cap of 119 s", "spec.maxRunSeconds", "warmUpSeconds"),
    ),
    Case(
        "scale-over-max-targets",
        {
            "experiment": SCALE_SPEC,
            "workloads": {"Deployment/web": WorkloadFacts(5)},
            "switch": caps(max_targets=4),
        },
        scale_within_caps,
        Reason.OVER_TARGET_CAP,
        ("scale Deployment web from 5 to 0 replicas, taking 5 pods away", "cap of 4"),
    ),
    Case(
        "scale-over-max-percent",
        {
            "experiment": SCALE_SPEC,
            "workloads": {"Deployment/web": WorkloadFacts(4)},
            "selection": Selection(matched=4, targets=("web-1", "web-2")),
            "switch": caps(max_percent=50),
        },
        scale_within_caps,
        Reason.OVER_TARGET_CAP,
        ("taking 4 of 4 pods away", "cap of 50%", "maxPercent"),
    ),
    Case(
        "scale-down-deletes-volumes",
        {"experiment": STS_SPEC, "workloads": {"StatefulSet/db": WorkloadFacts(3, True)}},
        scale_keeps_data,
        Reason.DATA_LOSS_NOT_ACCEPTED,
        (
            "scale StatefulSet db down from 3 to 1 replicas",
            "whenScaled is Delete",
            "scaleWorkload.acceptDataLoss: true",
        ),
    ),
    Case(
        "cordon-over-default-node-cap",
        {
            "experiment": CORDON_SPEC,
            "switch": allowing("team-a"),
            "scheduled_target_nodes": ("n1", "n2"),
        },
        nodes_within_cap,
        Reason.OVER_NODE_CAP,
        ("cordon 2 nodes (n1, n2), over the cluster-wide cap of 1", "no spec.caps.maxNodes"),
    ),
    Case(
        "cordon-over-max-nodes",
        {
            "experiment": CORDON_SPEC,
            "switch": allowing("team-a", max_nodes=2),
            "scheduled_target_nodes": ("n1", "n2", "n3"),
        },
        nodes_within_cap,
        Reason.OVER_NODE_CAP,
        ("cordon 3 nodes", "cap of 2 (ChaosSwitch default spec.caps.maxNodes)"),
    ),
    Case(
        "cordon-control-plane-counts-when-allowed",
        {
            "experiment": CORDON_SPEC,
            "switch": allowing("team-a", control_plane=True),
            "scheduled_target_nodes": ("cp1", "n1"),
            "control_plane_nodes": frozenset({"cp1"}),
        },
        nodes_within_cap,
        Reason.OVER_NODE_CAP,
        ("cordon 2 nodes (cp1, n1)",),
    ),
    Case(
        "too-many-agent-nodes",
        {"target_nodes": MANY_NODES, "agent_capabilities": {}},
        agent_nodes_within_limit,
        Reason.ATTACK_UNSUPPORTED,
        (f"on {MAX_AGENT_NODES + 1} nodes, over the limit of {MAX_AGENT_NODES}",),
    ),
    Case(
        "agent-does-not-know-type",
        {"agent_capabilities": {"n1": {}, "n2": {"CpuStress": None}}},
        agents_can_attack,
        Reason.ATTACK_UNSUPPORTED,
        ("node agents cannot do: the agent of node n1 does not know CpuStress;",),
    ),
    Case(
        "agent-cannot-do-type",
        {"agent_capabilities": {"n1": {"CpuStress": None}, "n2": {"CpuStress": "cgroup v1"}}},
        agents_can_attack,
        Reason.ATTACK_UNSUPPORTED,
        ("the agent of node n2 cannot do CpuStress: cgroup v1;", "Experiment team-a/web"),
    ),
    Case(
        "creator-not-member",
        {"creator_is_member": False},
        creator_still_member,
        Reason.UNAUTHORIZED,
        ("alice, who created the run, may not run experiments in namespace team-a",),
    ),
    Case(
        "creator-not-recorded",
        {"creator": None, "creator_required": True},
        creator_still_member,
        Reason.UNAUTHORIZED,
        ("who started the run is not recorded", "shakeout.dev/started-by"),
    ),
]


@pytest.mark.parametrize("chain", CHAINS)
def test_all_preconditions_met(chain: str) -> None:
    assert evaluate(CHAINS[chain], OK) is None


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_refusal_in_each_chain(case: Case, chain: str) -> None:
    """A broken precondition refuses in the chains that contain its check, and only there."""
    found = evaluate(CHAINS[chain], case.facts)
    if case.check not in CHAINS[chain]:
        assert found is None
        return
    assert found is not None
    assert found.reason == case.reason
    for words in case.words:
        assert words in found.message
    # Same reason and words wherever it is refused, and no word of where that was.
    assert found == case.check(case.facts)
    assert "admission" not in found.message.lower()
    assert "pick" not in found.message.lower()


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"agent_capabilities": {}}, "agents not known yet are waited for"),
        ({"agent_capabilities": {"n1": {"CpuStress": None}}}, "n2's agent is not known yet"),
        ({"agent_capabilities": {"n9": {}}}, "only the agents of the target nodes count"),
        (
            {"experiment": POD_SPEC, "agent_capabilities": {"n1": {}, "n2": {}}},
            "no node-level attacks: the agents' capabilities do not matter",
        ),
        (
            {"experiment": POD_SPEC, "target_nodes": MANY_NODES},
            "no node-level attacks: the number of nodes does not count",
        ),
        (
            {"target_nodes": MANY_NODES[:MAX_AGENT_NODES], "agent_capabilities": {}},
            "exactly MAX_AGENT_NODES nodes is allowed",
        ),
        ({"creator": None, "creator_is_member": False}, "no creator recorded: RBAC decided"),
        (
            {"switch": ChaosSwitchSpec(enabled=True, caps=TargetCaps(max_targets=2))},
            "at the cap is within it",
        ),
        (
            {"experiment": None, "selection": None, "target_nodes": ()},
            "checks that need the experiment and the selection pass without them",
        ),
        (
            {
                "experiment": CORDON_SPEC,
                "switch": allowing("team-b", "team-a"),
                "scheduled_target_nodes": ("n1",),
            },
            "a cordon of one node in an allowed namespace",
        ),
        (
            {
                "experiment": CORDON_SPEC,
                "switch": allowing("team-a"),
                "scheduled_target_nodes": ("cp1", "n1"),
                "control_plane_nodes": frozenset({"cp1"}),
            },
            "control-plane nodes are left out, not counted",
        ),
        (
            {
                "experiment": CORDON_SPEC,
                "switch": allowing("team-a"),
                "scheduled_target_nodes": (),
                "target_nodes": ("n1", "n2"),
            },
            "nodes of pinned pods (not scheduled) are not the cordon's",
        ),
        (
            {
                "experiment": CORDON_SPEC,
                "switch": allowing("team-a", max_nodes=3),
                "scheduled_target_nodes": ("n1", "n2", "n3"),
            },
            "at the node cap is within it",
        ),
        (
            {"experiment": POD_SPEC, "scheduled_target_nodes": MANY_NODES},
            "no cordon: the nodes do not count",
        ),
        (
            {"experiment": LONG_SPEC, "switch": ChaosSwitchSpec(enabled=True, max_run_seconds=120)},
            "a run as long as the cap",
        ),
        ({"experiment": LONG_SPEC}, "no maxRunSeconds: no cap"),
        (
            {
                "experiment": SCALE_SPEC,
                "workloads": {"Deployment/web": WorkloadFacts(4)},
                "switch": caps(max_targets=4, max_percent=100),
            },
            "the replicas scaled away at the cap",
        ),
        (
            {
                "experiment": raw_spec(scale("Deployment", "web", 10)),
                "workloads": {"Deployment/web": WorkloadFacts(2)},
                "selection": Selection(matched=2, targets=("web-1",)),
                "switch": caps(max_targets=1, max_percent=1),
            },
            "a scale up takes no pod away",
        ),
        (
            {"experiment": SCALE_SPEC, "switch": caps(max_targets=2)},
            "a workload that does not exist is the attack's failure, not a cap's",
        ),
        (
            {
                "experiment": raw_spec(scale("StatefulSet", "db", 1, accept=True)),
                "workloads": {"StatefulSet/db": WorkloadFacts(3, True)},
            },
            "the data loss is accepted",
        ),
        (
            {"experiment": STS_SPEC, "workloads": {"StatefulSet/db": WorkloadFacts(1, True)}},
            "not a scale down: nothing is deleted",
        ),
        (
            {"experiment": STS_SPEC, "workloads": {"StatefulSet/db": WorkloadFacts(3)}},
            "volumes retained when scaled",
        ),
    ],
)
@pytest.mark.parametrize("chain", CHAINS)
def test_not_refused(changes: dict[str, Any], why: str, chain: str) -> None:
    assert evaluate(CHAINS[chain], replace(OK, **changes)) is None, why


def _broken(facts: RunFacts) -> set[Check]:
    return {check for check in CHECKS if check(facts) is not None}


def _pairs() -> list[tuple[Case, Case]]:
    """Two cases whose changes combine into facts where exactly their two checks refuse."""
    pairs = []
    for first, second in itertools.combinations(CASES, 2):
        if first.check is second.check or first.changes.keys() & second.changes.keys():
            continue
        facts = replace(OK, **first.changes, **second.changes)
        if _broken(facts) == {first.check, second.check}:
            pairs.append((first, second))
    return pairs


PAIRS = _pairs()


def test_enough_pairs_combine() -> None:
    # Guards the order test below against passing on nothing.
    assert len(PAIRS) >= 60


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a.id}+{b.id}" for a, b in PAIRS])
def test_the_earlier_check_wins_in_every_chain(first: Case, second: Case) -> None:
    facts = replace(OK, **first.changes, **second.changes)
    for chain in CHAINS.values():
        present = [c for c in CHECKS if c in chain and c in (first.check, second.check)]
        expected = present[0](facts) if present else None
        assert evaluate(chain, facts) == expected


@pytest.mark.parametrize("chain", CHAINS)
def test_each_chain_is_a_subsequence_of_the_one_order(chain: str) -> None:
    positions = [CHECKS.index(check) for check in CHAINS[chain]]
    assert positions == sorted(set(positions))


def test_what_each_chain_leaves_out() -> None:
    assert [c for c in CHECKS if c not in ADMISSION] == [creator_still_member]
    assert [c for c in CHECKS if c not in PICKUP] == [no_other_run_holds_lock]
    # At attack start the run executes its own snapshot: found, and valid unless the API
    # server refuses its selector now.
    # Allowed windows gate a run's start only (a blackout still refuses).
    assert [c for c in CHECKS if c not in ATTACK_START] == [
        no_other_run_holds_lock,
        experiment_found,
        inside_allowed_window,
    ]


def test_agent_problems_are_listed_by_node_then_counted() -> None:
    nodes = ("n5", "n1", "n4", "n2", "n3")
    facts = replace(
        OK, target_nodes=nodes, agent_capabilities={n: {"CpuStress": "no"} for n in nodes}
    )
    found = agents_can_attack(facts)
    assert found is not None
    assert "node n1 cannot do CpuStress: no; the agent of node n2" in found.message
    assert "node n4" not in found.message
    assert "(and 2 more)" in found.message


def test_an_attack_type_used_twice_is_one_problem_per_node() -> None:
    facts = replace(
        OK,
        experiment=spec(("a", "CpuStress"), ("b", "CpuStress")),
        target_nodes=("n1",),
        agent_capabilities={"n1": {}},
    )
    found = agents_can_attack(facts)
    assert found is not None
    assert found.message.count("does not know CpuStress") == 1


def test_every_node_level_type_is_checked() -> None:
    facts = replace(
        OK,
        experiment=spec(("burn", "CpuStress"), ("cut", "NetworkBlackhole")),
        target_nodes=("n1",),
        agent_capabilities={"n1": {"CpuStress": None, "NetworkBlackhole": "no nftables"}},
    )
    assert evaluate(ADMISSION, facts) == Refusal(
        Reason.ATTACK_UNSUPPORTED,
        "the run needs attacks its node agents cannot do: the agent of node n1 cannot do "
        "NetworkBlackhole: no nftables; remove those attacks from Experiment team-a/web or "
        "narrow its blast radius to nodes whose agents can do them",
    )


def test_irreversible_attacks() -> None:
    experiment = spec(("kill", "PodDelete"), ("burn", "CpuStress"), ("term", "ProcessKill"))
    assert irreversible_attacks(experiment) == ("kill (PodDelete)", "term (ProcessKill)")
    assert irreversible_attacks(spec(("burn", "CpuStress"))) == ()


def test_run_seconds_is_warm_up_longest_attack_and_cool_down() -> None:
    assert run_seconds(LONG_SPEC) == 50 + 60 + 10
    assert run_seconds(POD_SPEC) == 60  # the default duration, no warm-up or cool-down


def test_accepting_data_loss_makes_the_scale_irreversible() -> None:
    accepted = raw_spec(scale("StatefulSet", "db", 1, accept=True))
    assert irreversible_attacks(accepted) == ("scale (ScaleWorkload)",)
    assert irreversible_attacks(STS_SPEC) == ()
