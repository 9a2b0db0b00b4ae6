"""Who may execute beside whom (engine/concurrency.py): the run lock's pure rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import ExperimentRunStatus, Phase, UserInfo
from shakeout.api.switch import ChaosSwitchSpec, ChaosSwitchStatus, ClusterScopedAttacks
from shakeout.api.switch import Concurrency as Mode
from shakeout.engine import concurrency as c
from shakeout.engine.concurrency import Holder
from shakeout.engine.policies import NamespaceFacts
from shakeout.engine.preconditions import ADMISSION, RunFacts, evaluate, no_other_run_holds_lock
from shakeout.engine.runs import Reason, Transition
from shakeout.engine.targets import Selection

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ME = Holder("team-a", "mine", "u-me", ("n1", "n2"))


@pytest.mark.parametrize(
    ("mode", "other", "reason", "words"),
    [
        # Cluster: any other live run takes the one turn.
        (Mode.CLUSTER, Holder("team-b", "r1", "u1"), Reason.ANOTHER_RUN_ACTIVE, "cluster-wide"),
        (Mode.CLUSTER, Holder("team-a", "r1", "u1"), Reason.ANOTHER_RUN_ACTIVE, "cluster-wide"),
        # Namespace: the namespace's own turn (keeps two runs off one pod or workload).
        (Mode.NAMESPACE, Holder("team-a", "r1", "u1"), Reason.ANOTHER_RUN_ACTIVE, "team-a's turn"),
        # Namespace: another namespace's run beside it, unless they share a node.
        (Mode.NAMESPACE, Holder("team-b", "r1", "u1"), None, ""),
        (Mode.NAMESPACE, Holder("team-b", "r1", "u1", ("n3",)), None, ""),
        (
            Mode.NAMESPACE,
            Holder("team-b", "r1", "u1", ("n2", "n3")),
            Reason.TARGETS_HELD,
            "holds node(s) n2",
        ),
        # Named only by status.activeRun (an older operator): what it holds is unknown.
        (
            Mode.NAMESPACE,
            Holder("team-b", "r1", "", nodes_known=False),
            Reason.ANOTHER_RUN_ACTIVE,
            "not recorded",
        ),
        # A run never conflicts with itself (taking the turn again after a restart).
        (Mode.CLUSTER, replace(ME, nodes=()), None, ""),
    ],
)
def test_who_conflicts_with_whom(
    mode: Mode, other: Holder, reason: Reason | None, words: str
) -> None:
    found = c.conflict(mode, ME, [other])
    if reason is None:
        assert found is None
        return
    assert found is not None
    assert (found.reason, found.holder) == (reason, other)
    assert other.ref in found.message
    assert words in found.message


def test_the_turn_is_said_before_the_nodes() -> None:
    others = [Holder("team-b", "r1", "u1", ("n1",)), Holder("team-a", "r2", "u2")]
    found = c.conflict(Mode.NAMESPACE, ME, others)
    assert found is not None
    assert (found.reason, found.holder.name) == (
        Reason.ANOTHER_RUN_ACTIVE,
        "r2",
    )


def test_many_shared_nodes_are_shown_with_a_count() -> None:
    nodes = tuple(f"n{i:02d}" for i in range(9))
    found = c.conflict(
        Mode.NAMESPACE, Holder("team-a", "x", "u", nodes), [Holder("b", "y", "v", nodes)]
    )
    assert found is not None
    assert "and 4 more" in found.message


def test_holders_are_read_from_both_fields() -> None:
    status = {
        "activeRun": {"namespace": "team-a", "name": "r1", "uid": "u1"},
        "activeRuns": [
            {"namespace": "team-a", "name": "r1", "uid": "u1", "nodes": ["n2", "n1"]},
            {"namespace": "team-b", "name": "r2", "uid": "u2"},
            {"name": "no-uid"},  # not well formed: skipped
        ],
    }
    assert c.holders_in(status) == [
        Holder("team-a", "r1", "u1", ("n1", "n2")),
        Holder("team-b", "r2", "u2", ()),
    ]
    legacy = {"activeRun": {"namespace": "team-c", "name": "old", "uid": "u9"}}
    assert c.holders_in(legacy) == [Holder("team-c", "old", "u9", nodes_known=False)]
    assert c.holders_in(None) == [] == c.holders_in({"activeRun": None})


def test_taking_and_releasing_keep_activerun_naming_the_first_holder() -> None:
    first, second = Holder("team-a", "r1", "u1", ("n1",)), Holder("team-b", "r2", "u2")
    held = c.taken(c.taken([], first), second)
    assert held == [first, second]
    written = c.lock_status(held)
    assert written["activeRun"] == {"namespace": "team-a", "name": "r1", "uid": "u1"}
    assert [h["name"] for h in written["activeRuns"]] == ["r1", "r2"]
    # The written status is one the CRD accepts, and reads back the same.
    assert c.holders_in(ChaosSwitchStatus.model_validate(written).model_dump(by_alias=True)) == held
    left = c.released(held, "u1")
    assert left == [second]
    assert c.lock_status(left)["activeRun"] == {"namespace": "team-b", "name": "r2", "uid": "u2"}
    assert c.released(left, "u1") is None  # not held: nothing to write
    assert c.lock_status([]) == {"activeRuns": [], "activeRun": None}
    # Taking again (after a restart) replaces the entry, never duplicates it.
    assert c.taken(held, replace(first, nodes=())) == [second, replace(first, nodes=())]


def test_a_legacy_holder_stays_in_activerun_while_it_holds() -> None:
    legacy = Holder("team-c", "old", "u9", nodes_known=False)
    written = c.lock_status(c.taken([legacy], ME))
    assert written["activeRun"]["name"] == "old"
    assert [h["name"] for h in written["activeRuns"]] == ["mine"]


CORDON = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [{"name": "cordon", "type": "NodeCordon"}],
    }
)
KILL = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [{"name": "kill", "type": "PodDelete"}],
    }
)
ALLOWING = ChaosSwitchSpec(
    enabled=True,
    concurrency=Mode.NAMESPACE,
    cluster_scoped_attacks=ClusterScopedAttacks(namespaces=["team-a"]),
)


def test_a_run_holds_the_nodes_its_cordon_may_cordon_and_no_others() -> None:
    assert c.held_nodes(CORDON, ["n2", "n1", "cp"], {"cp"}, ALLOWING) == ("n1", "n2")
    assert c.held_nodes(KILL, ["n1"], set(), ALLOWING) == ()
    assert c.held_nodes(None, ["n1"], set(), ALLOWING) == ()


def facts(spec: ExperimentSpec, *holders: Holder, switch: ChaosSwitchSpec = ALLOWING) -> RunFacts:
    return RunFacts(
        namespace="team-a",
        experiment_name="web",
        namespace_facts=NamespaceFacts("team-a", {}),
        experiment=spec,
        switch=switch,
        selection=Selection(matched=1, targets=("web-1",)),
        target_nodes=("n1",),
        scheduled_target_nodes=("n1",),
        holders=holders,
    )


def test_admission_refuses_a_run_whose_cordon_would_take_a_held_node() -> None:
    other = Holder("team-b", "r2", "u2", ("n1",))
    refusal = no_other_run_holds_lock(facts(CORDON, other))
    assert refusal is not None
    assert refusal.reason == Reason.TARGETS_HELD
    assert "team-b/r2" in refusal.message
    assert "n1" in refusal.message
    # The same holder beside a run without a cordon: no conflict in Namespace mode...
    assert no_other_run_holds_lock(facts(KILL, other)) is None
    # ...and the cluster's turn in Cluster mode.
    cluster = ALLOWING.model_copy(update={"concurrency": Mode.CLUSTER})
    refused = evaluate(ADMISSION, facts(KILL, other, switch=cluster))
    assert refused is not None
    assert refused.reason == Reason.ANOTHER_RUN_ACTIVE


def test_only_a_scheduled_run_waits_and_only_within_its_bound() -> None:
    deadline = c.wait_deadline(T0, 60)
    assert deadline == T0 + timedelta(seconds=60)
    assert c.may_wait(True, 60, T0 + timedelta(seconds=59), deadline)
    assert not c.may_wait(True, 60, deadline, deadline)  # the bound passed
    assert not c.may_wait(False, 60, T0, deadline)  # a manual run is refused at once
    assert not c.may_wait(True, 0, T0, c.wait_deadline(T0, 0))  # 0: fails at once


def test_a_waiting_run_says_for_whom_and_ends_without_a_phase_in_between() -> None:
    found = c.conflict(Mode.CLUSTER, ME, [Holder("team-b", "r1", "u1")])
    assert found is not None
    deadline = c.wait_deadline(T0, 60)
    status = c.waiting(ExperimentRunStatus(), found, deadline, T0, 1)
    assert status.phase is None
    assert c.waited(status)
    (cond,) = status.conditions
    assert (cond.type, cond.status, cond.reason) == ("Waiting", "True", Reason.ANOTHER_RUN_ACTIVE)
    assert "team-b/r1" in cond.message
    assert deadline.isoformat() in cond.message
    alice = UserInfo(username="alice")
    end = Transition(Phase.CANCELED, Reason.CANCELED, "canceled while it waited")
    ended = c.end_wait(status, end, T0 + timedelta(seconds=5), 2, canceled_by=alice)
    assert (ended.phase, ended.reason, ended.canceled_by) == (Phase.CANCELED, "Canceled", alice)
    assert [t.phase for t in ended.timeline] == [Phase.CREATED, Phase.CANCELED]
    waiting_cond = next(x for x in ended.conditions if x.type == "Waiting")
    assert waiting_cond.status == "False"
    over = c.stop_waiting(status, T0, 1)
    assert next(x for x in over.conditions if x.type == "Waiting").status == "False"
    assert over.reason is None
    assert c.stop_waiting(ExperimentRunStatus(), T0, 1) == ExperimentRunStatus()


def test_only_the_holders_it_would_conflict_with_are_contenders() -> None:
    same_ns, shared, apart = (
        Holder("team-a", "r1", "u1"),
        Holder("team-b", "r2", "u2", ("n2",)),
        Holder("team-c", "r3", "u3", ("n9",)),
    )
    held = [same_ns, shared, apart]
    assert c.contenders(Mode.NAMESPACE, ME, held) == [same_ns, shared]
    assert c.contenders(Mode.CLUSTER, ME, held) == held
    assert c.contenders(Mode.NAMESPACE, ME, [apart]) == []
