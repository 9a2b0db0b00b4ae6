"""When the node agent refuses a NodeAttack, given its run as read now: a table."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest

from shakeout.agent.main import locator_refusal
from shakeout.agent.node import keeper_client
from shakeout.agent.nodeattacks import fault_id, refusal, rolled_back
from shakeout.api.nodeattack import TargetState
from shakeout.api.run import AttackState, Phase
from shakeout.kube.client import Obj

NODE = "node-1"
ATTACK = {"name": "loss", "type": "PacketLoss", "packetLoss": {"percent": 30}}


def node_attack() -> Obj:
    return {
        "metadata": {"name": "r1-loss-0", "namespace": "team-a", "uid": "na-1"},
        "spec": {
            "runName": "r1",
            "runUID": "run-1",
            "node": NODE,
            "attack": copy.deepcopy(ATTACK),
            "targets": [{"name": "web-0", "uid": "pod-0"}],
        },
    }


def run() -> Obj:
    return {
        "metadata": {"name": "r1", "namespace": "team-a", "uid": "run-1"},
        "status": {
            "phase": Phase.ATTACKS_STARTED,
            "experiment": {"attacks": [{"name": "other", "type": "CpuStress"}, ATTACK]},
            "attacks": [
                {"name": "other", "state": AttackState.APPLIED},
                {"name": "loss", "state": AttackState.APPLYING},
            ],
        },
    }


def set_state(state: str | None) -> Callable[[Obj, Obj], None]:
    def change(_: Obj, r: Obj) -> None:
        attacks = r["status"]["attacks"]
        if state is None:
            attacks.pop()
        else:
            attacks[1]["state"] = state

    return change


def set_phase(phase: str | None) -> Callable[[Obj, Obj], None]:
    def change(_: Obj, r: Obj) -> None:
        if phase is None:
            del r["status"]
        else:
            r["status"]["phase"] = phase

    return change


def set_percent(o: Obj, _: Obj) -> None:
    o["spec"]["attack"]["packetLoss"]["percent"] = 90


def set_planned_percent(_: Obj, r: Obj) -> None:
    r["status"]["experiment"]["attacks"][1] = {**ATTACK, "packetLoss": {"percent": 31}}


def unchanged(_: Obj, __: Obj) -> None:
    pass


CASES: list[tuple[str, Callable[[Obj, Obj], None], str | None]] = [
    ("applying", unchanged, None),
    ("applied", set_state(AttackState.APPLIED), None),
    ("another node's", lambda o, _: o["spec"].update(node="node-2"), "meant for node node-2"),
    ("run re-created", lambda _, r: r["metadata"].update(uid="run-2"), "ExperimentRun is gone"),
    ("run picked up", set_phase(Phase.PREPARED), "is PREPARED, not ATTACKS_STARTED"),
    ("run stopped", set_phase(Phase.ATTACKS_STOPPED), "is ATTACKS_STOPPED, not ATTACKS_STARTED"),
    ("run canceled", set_phase(Phase.CANCELED), "is CANCELED, not ATTACKS_STARTED"),
    ("run without status", set_phase(None), "is None, not ATTACKS_STARTED"),
    ("parameters not the run's", set_percent, "attack loss is not in the run's copy"),
    ("the run's copy changed", set_planned_percent, "attack loss is not in the run's copy"),
    ("attack rolling back", set_state(AttackState.ROLLING_BACK), "in state RollingBack"),
    ("attack rolled back", set_state(AttackState.ROLLED_BACK), "in state RolledBack"),
    ("attack not started", set_state(AttackState.PENDING), "in state Pending"),
    ("attack failed", set_state(AttackState.FAILED), "in state Failed"),
    ("attack not in the status", set_state(None), "in state None"),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal(change: Callable[[Obj, Obj], None], expected: str | None) -> None:
    obj, current = node_attack(), run()
    change(obj, current)
    found = refusal(obj, current, NODE)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert expected in found, found


def test_a_run_that_is_gone_is_refused() -> None:
    assert refusal(node_attack(), None, NODE) == "its ExperimentRun is gone"


def test_fault_ids_name_the_run_the_attack_and_the_pod() -> None:
    assert fault_id("run-1", "loss", "pod-0") == "run-1/loss/pod-0"


def test_after_a_rollback_applied_targets_are_rolled_back_and_the_rest_stay() -> None:
    reported = [
        {"name": "a", "state": TargetState.APPLIED},
        {"name": "b", "state": TargetState.APPLYING},
        {"name": "c", "uid": "pod-c"},  # from the spec: never reported
        {"name": "d", "state": TargetState.GONE, "message": "pod gone"},
        {"name": "e", "state": TargetState.FAILED, "message": "no netns"},
    ]
    assert rolled_back(reported) == [
        {"name": "a", "state": TargetState.ROLLED_BACK},
        {"name": "b", "state": TargetState.ROLLED_BACK},
        {"name": "c", "state": TargetState.ROLLED_BACK},
        {"name": "d", "state": TargetState.GONE, "message": "pod gone"},
        {"name": "e", "state": TargetState.FAILED, "message": "no netns"},
    ]


# -- SEC-25: the netns-annotation locator on test nodes only ----------------------------------


def test_the_netns_annotation_locator_runs_on_kwok_nodes_only() -> None:
    kwok = {"metadata": {"annotations": {"kwok.x-k8s.io/node": "fake"}}}
    real = {"metadata": {"annotations": {"node.alpha.kubernetes.io/ttl": "0"}}}
    assert locator_refusal("netns-annotation", "n1", kwok) is None
    assert locator_refusal("runtime", "n1", real) is None
    why = locator_refusal("netns-annotation", "n1", real)
    assert why is not None
    assert "node n1 is not one" in why
    assert locator_refusal("netns-annotation", "n1", None) is not None
    relabelled = {"metadata": {"annotations": {"kwok.x-k8s.io/node": "true"}}}
    assert locator_refusal("netns-annotation", "n1", relabelled) is not None


# -- the keeper's cgroup namespace ----------------------------------------------------------


def test_the_keeper_enters_the_hosts_cgroup_namespace_only_when_it_is_another_and_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inodes = {"/host": (1, 10), "/own": (1, 20), "/same": (1, 20)}

    def fake_stat(path: str) -> os.stat_result:
        if path == "/denied":
            raise PermissionError(13, "Permission denied")
        dev, ino = inodes[path]
        return os.stat_result((0, ino, dev, 0, 0, 0, 0, 0, 0, 0))

    monkeypatch.setattr(keeper_client.os, "stat", fake_stat)
    assert keeper_client.must_enter("/host", "/own")
    assert not keeper_client.must_enter("/same", "/own")  # a cgroup v1 node: shared already
    assert not keeper_client.must_enter("/denied", "/own")  # pid 1 holds capabilities we lack
