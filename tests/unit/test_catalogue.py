"""The attack catalogue (api/attacks.py) is the one list of attack types: every type has one
descriptor, each executor registry covers exactly its level, the CRD's CEL rules and the
models' validators say the same thing, and the privileges each type claims are granted by
the manifests."""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shakeout.agent.node.capabilities import _needs, _Reasons
from shakeout.agent.node.faults import FAULTS, MODELS, NodeFault
from shakeout.api.attacks import (
    CATALOGUE,
    NODE_LEVEL,
    PARAMETER_FIELDS,
    REVERSIBLE,
    AttackDescriptor,
    AttackType,
    Level,
    ParameterField,
)
from shakeout.api.checks import CHECK_PARAMETERS, StateCheck, StateCheckType
from shakeout.api.crdgen import all_crds
from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.run import AttackResult, AttackState
from shakeout.attacks.cluster import EXECUTORS
from shakeout.attacks.registry import RunAttacks
from shakeout.gather.targets import needs_detail

REPO = Path(__file__).resolve().parents[2]
API_LEVEL = {t for t, d in CATALOGUE.items() if d.level is Level.API}

# -- one descriptor per type, registries by level -------------------------------------------


def test_every_attack_type_has_exactly_one_descriptor() -> None:
    assert list(CATALOGUE) == list(AttackType)
    for kind, descriptor in CATALOGUE.items():
        assert descriptor.type is kind
        assert descriptor.summary
        assert descriptor.privileges


def test_the_operator_executes_exactly_the_api_level_types() -> None:
    assert set(EXECUTORS) == API_LEVEL
    for kind, executor in EXECUTORS.items():
        assert executor.type is kind


def test_the_node_agent_executes_exactly_the_node_level_types() -> None:
    assert set(FAULTS) == NODE_LEVEL
    assert all(isinstance(fault, NodeFault) for fault in FAULTS.values())
    assert {t: CATALOGUE[t].parameters_model for t in NODE_LEVEL} == MODELS


def test_every_node_fault_names_a_probe_the_agent_can_answer() -> None:
    nothing_missing = _Reasons(network=None, nftables=None, tbf=None, netem=None)
    cannot_enter = _Reasons(network="no setns", nftables=None, tbf=None, netem=None)
    for kind, fault in FAULTS.items():
        _needs(fault.probe, nothing_missing)  # every probe has its answer
        if kind != AttackType.PROCESS_KILL:
            # Every fault but a signal acts inside the pod's network namespace.
            assert _needs(fault.probe, cannot_enter) is not None, kind


# -- the generated tables are what they were ---------------------------------------------


def test_derived_tables() -> None:
    reversible = {
        **dict.fromkeys(AttackType, True),
        AttackType.POD_DELETE: False,
        AttackType.PROCESS_KILL: False,
    }
    assert reversible == REVERSIBLE
    node_level = {
        AttackType.CPU_STRESS,
        AttackType.MEMORY_STRESS,
        AttackType.NETWORK_BLACKHOLE,
        AttackType.PACKET_LOSS,
        AttackType.BANDWIDTH_LIMIT,
        AttackType.NETWORK_DELAY,
        AttackType.PROCESS_KILL,
    }
    assert node_level == NODE_LEVEL
    assert {f.type: (f.field, f.required) for f in PARAMETER_FIELDS} == {
        AttackType.POD_DELETE: ("pod_delete", False),
        AttackType.SCALE_WORKLOAD: ("scale_workload", True),
        AttackType.NETWORK_ISOLATION: ("network_isolation", False),
        AttackType.CPU_STRESS: ("cpu_stress", False),
        AttackType.MEMORY_STRESS: ("memory_stress", True),
        AttackType.NETWORK_BLACKHOLE: ("network_blackhole", False),
        AttackType.PACKET_LOSS: ("packet_loss", True),
        AttackType.BANDWIDTH_LIMIT: ("bandwidth_limit", True),
        AttackType.NETWORK_DELAY: ("network_delay", True),
        AttackType.PROCESS_KILL: ("process_kill", False),
    }
    detail = {t for t, d in CATALOGUE.items() if d.needs_pod_detail}
    assert detail == NODE_LEVEL | {AttackType.ENDPOINT_REMOVAL, AttackType.NODE_CORDON}


@pytest.mark.parametrize("kind", list(AttackType))
def test_the_targets_are_listed_whole_when_the_descriptor_says_so(kind: AttackType) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": "a", "type": kind, **valid_parameters(kind)}],
        }
    )
    assert needs_detail(spec) is CATALOGUE[kind].needs_pod_detail


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"level": Level.NODE}, "needs whole target pods"),
        ({"parameters_field": "pod_delete"}, "give both"),
        ({"parameters_required": True}, "need a parameters_field"),
        ({"privileges": ()}, "privileges"),
    ],
)
def test_an_inconsistent_descriptor_is_refused(change: dict[str, Any], problem: str) -> None:
    fields: dict[str, Any] = {
        "type": AttackType.NODE_CORDON,
        "level": Level.API,
        "reversible": True,
        "privileges": ("nodes: patch",),
        "summary": "s",
    }
    with pytest.raises(ValueError, match=problem):
        AttackDescriptor(**{**fields, **change})


# -- CEL and pydantic agree -------------------------------------------------------------

_TOKEN = re.compile(r"\s*(has\(self\.\w+\)|self\.\w+|'[^']*'|==|!=|\|\||&&|!|\(|\)|in\b)")


def cel_holds(rule: str, obj: dict[str, Any]) -> bool:
    """Evaluate one of the parameter rules (has(), field access, string literals, ==, !=,
    in, ||, &&, ! and parentheses) on a JSON object; any other CEL fails the test."""
    tokens, at = [], 0
    while at < len(rule):
        match = _TOKEN.match(rule, at)
        assert match, f"unsupported CEL at {rule[at:]!r}"
        tokens.append(match.group(1))
        at = match.end()
    python = []
    for index, token in enumerate(tokens):
        if token.startswith("has(self."):
            python.append(f"({token[9:-1]!r} in obj)")
        elif token.startswith("self."):
            python.append(f"obj.get({token[5:]!r})")
        elif token == "!":
            # CEL's ! binds tighter than ==; only `!atom` is supported.
            assert tokens[index + 1].startswith(("has(", "self.")), rule
            python.append("not")
        else:
            python.append({"||": "or", "&&": "and"}.get(token, token))
    return bool(eval(" ".join(python), {"__builtins__": {}}, {"obj": obj}))


@functools.cache
def crd_rules(*path: str) -> list[dict[str, Any]]:
    """The x-kubernetes-validations of a schema node of the Experiment CRD."""
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == "Experiment")
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    rules: list[dict[str, Any]] = node["x-kubernetes-validations"]
    return rules


# Valid parameters of each parameter field, camelCase as a user writes them.
VALID_PARAMETERS: dict[str, dict[str, Any]] = {
    "podDelete": {"gracePeriodSeconds": 5},
    "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}, "replicas": 0},
    "networkIsolation": {"direction": "Ingress"},
    "cpuStress": {"workers": 2},
    "memoryStress": {"megabytes": 64},
    "networkBlackhole": {},
    "packetLoss": {"percent": 5},
    "bandwidthLimit": {"rateKbit": 800},
    "networkDelay": {"delayMs": 100},
    "processKill": {"signal": "TERM"},
    "workloadReady": {"workload": {"kind": "Deployment", "name": "web"}, "minReady": 1},
    "podsReady": {},
    "httpGet": {"url": "http://web/healthz"},
    "prometheus": {"query": "up", "comparison": "Equal", "threshold": 1},
    "alert": {"matchLabels": {"alertname": "Down"}},
}


def valid_parameters(kind: str) -> dict[str, Any]:
    """The valid parameters of a type where they are required, else none."""
    for entry in (*PARAMETER_FIELDS, *CHECK_PARAMETERS):
        if entry.type == kind and entry.required:
            return {entry.key: VALID_PARAMETERS[entry.key]}
    return {}


def cases(fields: tuple[ParameterField, ...], kinds: list[str]) -> list[dict[str, Any]]:
    """Every type with no parameters, and with each parameter field set (valid values)."""
    return [{"type": kind} for kind in kinds] + [
        {"type": kind, entry.key: VALID_PARAMETERS[entry.key]} for kind in kinds for entry in fields
    ]


def case_id(case: dict[str, Any]) -> str:
    return "+".join([case["type"], *(key for key in case if key != "type")])


def test_every_parameter_field_has_valid_example_values() -> None:
    keys = {entry.key for entry in (*PARAMETER_FIELDS, *CHECK_PARAMETERS)}
    assert keys == set(VALID_PARAMETERS), "add the new type's parameters to VALID_PARAMETERS"


def verdicts(obj: dict[str, Any], rules: list[dict[str, Any]], model: Any) -> tuple[Any, Any]:
    failed = [r for r in rules if not cel_holds(r["rule"], obj)]
    cel = failed[0]["fieldPath"].lstrip(".") if failed else None
    try:
        model.model_validate({"name": "x", **obj})
    except ValidationError as error:
        problem = str(error.errors()[0]["msg"])
        return cel, next((k for k in VALID_PARAMETERS if f"{k} parameters" in problem), problem)
    return cel, None


@pytest.mark.parametrize("attack", cases(PARAMETER_FIELDS, list(AttackType)), ids=case_id)
def test_cel_and_pydantic_agree_on_an_attack(attack: dict[str, Any]) -> None:
    cel, pydantic = verdicts(attack, crd_rules("spec", "attacks", "[]"), Attack)
    assert cel == pydantic  # both valid, or both naming the same field


@pytest.mark.parametrize("check", cases(CHECK_PARAMETERS, list(StateCheckType)), ids=case_id)
def test_cel_and_pydantic_agree_on_a_state_check(check: dict[str, Any]) -> None:
    cel, pydantic = verdicts(check, crd_rules("spec", "stateChecks", "[]"), StateCheck)
    assert cel == pydantic


def test_the_table_has_valid_and_invalid_cases() -> None:
    rules = crd_rules("spec", "attacks", "[]")
    outcomes = [verdicts(a, rules, Attack)[0] for a in cases(PARAMETER_FIELDS, list(AttackType))]
    assert None in outcomes
    assert {"scaleWorkload", "packetLoss", "podDelete"} <= set(outcomes)


def test_the_evaluator_reads_cel_as_the_api_server_does() -> None:
    assert cel_holds("(self.type == 'A') == has(self.a)", {"type": "A", "a": {}})
    assert not cel_holds("(self.type == 'A') == has(self.a)", {"type": "B", "a": {}})
    assert cel_holds("self.type == 'A' || !has(self.a)", {"type": "B"})
    assert not cel_holds("self.type == 'A' || !has(self.a)", {"type": "B", "a": {}})


# -- the manifests grant what the catalogue says each type needs -----------------------------


def manifests(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "deploy/base" / name).read_text()) if d]


_RBAC = re.compile(r"(?P<resources>[a-z/, ]+): (?P<verbs>[a-z, ]+)(?: \(.+\))?")


@pytest.mark.parametrize("kind", sorted(API_LEVEL))
def test_the_operator_role_grants_every_api_level_privilege(kind: AttackType) -> None:
    role = next(d for d in manifests("operator-rbac.yaml") if d["kind"] == "ClusterRole")
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for privilege in CATALOGUE[kind].privileges:
        match = _RBAC.fullmatch(privilege)
        assert match, f"{kind}: {privilege!r} is not '<resources>: <verbs> (why)'"
        for resource in match["resources"].split(", "):
            for verb in match["verbs"].split(", "):
                assert (resource, verb) in granted, f"{kind} needs {resource}: {verb}"


@pytest.mark.parametrize("kind", sorted(NODE_LEVEL))
def test_the_agent_daemonset_grants_every_node_level_privilege(kind: AttackType) -> None:
    daemonset = next(d for d in manifests("agent.yaml") if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    added = set(container["securityContext"]["capabilities"]["add"])
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for privilege in CATALOGUE[kind].privileges:
        if privilege.startswith("CAP_"):
            assert privilege.split()[0].removeprefix("CAP_") in added, privilege
        elif privilege.startswith("hostPID"):
            assert pod["hostPID"] is True
        elif privilege.startswith("hostPath "):
            assert privilege.split()[1] in host_paths, privilege
        else:
            pytest.fail(f"{kind}: {privilege!r} is no capability, hostPID or hostPath")


# -- the user's catalogue ----------------------------------------------------------------


def test_docs_attacks_md_lists_every_type_with_its_level_and_reversibility() -> None:
    rows = re.findall(
        r"^\| `(\w+)` \| (API|node) \| (yes|no) \|", (REPO / "docs/attacks.md").read_text(), re.M
    )
    documented = {kind: (level, reversible) for kind, level, reversible in rows}
    assert documented == {
        str(t): ("API" if d.level is Level.API else "node", "yes" if d.reversible else "no")
        for t, d in CATALOGUE.items()
    }


# -- RunAttacks hands each attack to the executor of its level -----------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def prepare(self, attack: Attack, *pods: Any) -> dict[str, object]:
        self.calls.append(("prepare", attack.type))
        return {}

    async def apply(self, attack: Attack, pods: list[Any], *journaled: Any) -> int:
        self.calls.append(("apply", attack.type))
        return 0

    async def rollback(self, attack: Attack, *result: Any) -> None:
        self.calls.append(("rollback", attack.type))

    async def clean_up(self, attack_types: Any) -> None:
        self.calls.append(("clean_up", ",".join(attack_types)))


@pytest.mark.parametrize("kind", list(AttackType))
def test_run_attacks_dispatches_by_level(kind: AttackType) -> None:
    attacks = RunAttacks("team-a", "run", "uid", asyncio.Event())
    cluster, nodes = _Recorder(), _Recorder()
    attacks.cluster, attacks.nodes = cluster, nodes  # type: ignore[assignment]
    attack = Attack.model_validate({"name": "a", "type": kind, **valid_parameters(kind)})
    result = AttackResult(
        name="a", type=kind, reversible=attack.reversible, state=AttackState.APPLIED
    )

    async def walk() -> None:
        await attacks.prepare(attack)
        await attacks.apply(attack, [])
        await attacks.rollback(attack, result)

    asyncio.run(walk())
    if kind in NODE_LEVEL:
        # Nothing to journal for a node-level attack: its agents journal their targets.
        assert (cluster.calls, nodes.calls) == ([], [("apply", kind), ("rollback", kind)])
    else:
        assert nodes.calls == []
        assert cluster.calls == [("prepare", kind), ("apply", kind), ("rollback", kind)]
