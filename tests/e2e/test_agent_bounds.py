"""The node agent bounds its faults on its own, with the operator stopped (SEC-05, SEC-12):
a fault ends at its NodeAttack's notAfter, Stop All (the ChaosSwitch disabled) rolls it
back, and a NodeAttack on a pod of a protected namespace is refused by the agent itself.

The operator is killed (SIGKILL, no cleanup) once the run's attack is applied: from then
on only the agent and its keeper act. The session's operator is started again afterwards
(the `live_operator` fixture) and ends the runs.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_node_agents
from tests.e2e.agents import AGENT_NODE, Netns, NodeAgent
from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import TEAM, create_run, set_switch, wait_phase
from tests.e2e.test_node_agents import nft_tables, target_pod

# The real agent for a kwok node, and a target netns (fixtures of test_node_agents).
agent = test_node_agents.agent
live_agent = test_node_agents.live_agent
target = test_node_agents.target

BLACKHOLE = {"type": "NetworkBlackhole"}


def node_attack(cluster: Cluster, run: str, namespace: str = TEAM) -> dict[str, Any]:
    uid = cluster.get("experimentrun", run, "-n", namespace)["metadata"]["uid"]
    (obj,) = cluster.get("nodeattacks", "-n", namespace, "-l", f"shakeout.dev/run-uid={uid}")[
        "items"
    ]
    return dict(obj)


def applied_run(
    cluster: Cluster, name: str, ns: Netns, attack: dict[str, Any], namespace: str = TEAM
) -> str:
    """A run whose node-level attack the agent applied (the fault is in the netns)."""
    node_experiment_in(cluster, name, attack, namespace)
    user = "alice" if namespace == TEAM else None  # alice is a member of TEAM only
    run, _ = create_run(cluster, name, user=user, namespace=namespace)
    status = wait_phase(cluster, run, {"ATTACKS_STARTED"}, timeout=30, namespace=namespace)
    assert status["phase"] == "ATTACKS_STARTED", status
    eventually(
        lambda: (
            (node_attack(cluster, run, namespace).get("status") or {}).get("phase") == "Applied"
        ),
        what="the NodeAttack applied",
    )
    assert "shakeout_" in nft_tables(ns)
    return run


def node_experiment_in(cluster: Cluster, name: str, attack: dict[str, Any], namespace: str) -> None:
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": name}}},
                "attacks": [{"name": "a", **attack}],
            },
        }
    )


@pytest.fixture
def operator_down(live_operator: Operator) -> Iterator[Operator]:
    """Kill the operator in the test (`.kill()`); started again afterwards."""
    yield live_operator
    if not live_operator.running():
        live_operator.start()


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# Long (a minute): the keeper's own notAfter is unit-tested, and agent loss with the
# operator up is covered by test_node_agents.py in make test.
@pytest.mark.long
def test_a_node_fault_ends_at_its_not_after_with_the_operator_down(
    live_agent: NodeAgent, target: Netns, ready: Cluster, operator_down: Operator
) -> None:
    target_pod(ready, "bound-deadline", target)
    attack = {**BLACKHOLE, "durationSeconds": 3}
    created = time.time()
    run = applied_run(ready, "bound-deadline", target, attack)
    operator_down.kill()
    obj = node_attack(ready, run)
    not_after = epoch(obj["spec"]["notAfter"])
    bound = not_after - created
    print(f"\nnotAfter: {bound:.1f} s after the run was created (durationSeconds 3)")
    assert 3 < bound <= 3 + 30 + 10 + 5
    # The operator is gone: nothing but the agent's keeper ends the fault.
    eventually(
        lambda: "shakeout_" not in nft_tables(target),
        timeout=bound + 15,
        interval=0.05,
        what="the blackhole rolled back at notAfter",
    )
    late = time.time() - not_after
    print(f"the fault ended {late:+.2f} s from its notAfter, with the operator down")
    assert -0.5 <= late <= 2.0
    assert not operator_down.running()
    eventually(
        lambda: (node_attack(ready, run).get("status") or {}).get("phase") == "RolledBack",
        what="the agent's report",
    )
    assert "notAfter" in node_attack(ready, run)["status"]["message"]


def test_stop_all_rolls_back_a_node_fault_with_the_operator_down(
    live_agent: NodeAgent, target: Netns, ready: Cluster, operator_down: Operator
) -> None:
    target_pod(ready, "bound-stopall", target)
    run = applied_run(ready, "bound-stopall", target, {**BLACKHOLE, "durationSeconds": 600})
    operator_down.kill()
    try:
        stopped = time.monotonic()
        set_switch(ready, False)
        eventually(
            lambda: "shakeout_" not in nft_tables(target),
            timeout=10,
            interval=0.05,
            what="the blackhole rolled back by Stop All",
        )
        gone = time.monotonic() - stopped
        print(f"\nStop All with the operator down: fault gone {gone:.2f} s later")
        eventually(
            lambda: (node_attack(ready, run).get("status") or {}).get("phase") == "RolledBack",
            what="the agent's report",
        )
        assert "ChaosSwitch" in node_attack(ready, run)["status"]["message"]
    finally:
        set_switch(ready, True)


def test_a_protected_namespace_is_refused_by_the_agent_itself(
    live_agent: NodeAgent, target: Netns, ready: Cluster, operator_down: Operator
) -> None:
    """An attacker who can write NodeAttacks (the operator's identity, SEC-12) asks the
    agent for a fault in a namespace labelled shakeout.dev/protected=true."""
    namespace = f"bound-{uuid.uuid4().hex[:6]}"
    ready.kubectl("create", "namespace", namespace)
    run = ""
    try:
        ready.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "guarded",
                    "namespace": namespace,
                    "labels": {"app": "guarded"},
                    "annotations": {"shakeout.dev/netns": target.name},
                },
                "spec": {"nodeName": AGENT_NODE, "containers": [{"name": "c", "image": "nginx"}]},
            }
        )
        run = applied_run(
            ready, "guarded", target, {**BLACKHOLE, "durationSeconds": 600}, namespace
        )
        operator_down.kill()
        original = node_attack(ready, run, namespace)
        # The legitimate fault goes away; then the namespace is protected.
        ready.kubectl(
            "patch", "nodeattack", original["metadata"]["name"], "-n", namespace,
            "--type=merge", "-p", '{"spec":{"rollback":true}}',
        )  # fmt: skip
        eventually(lambda: "shakeout_" not in nft_tables(target), what="the first rolled back")
        ready.kubectl("label", "namespace", namespace, "shakeout.dev/protected=true")
        forged = {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "NodeAttack",
            "metadata": {
                "name": "forged",
                "namespace": namespace,
                "labels": original["metadata"]["labels"],
            },
            "spec": {k: v for k, v in original["spec"].items() if k != "rollback"},
        }
        ready.create(forged)

        def report() -> dict[str, Any]:
            obj = ready.get("nodeattack", "forged", "-n", namespace)
            return dict(obj.get("status") or {})

        eventually(lambda: report().get("phase") == "Failed", what="the agent's refusal")
        print(f"\nforged NodeAttack: {report()['message']}")
        assert "refused by the node agent" in report()["message"]
        assert "protected" in report()["message"]
        time.sleep(1)
        assert "shakeout_" not in nft_tables(target)
    finally:
        # The 600-second run ends here, with the operator back, rather than hold the
        # cluster-wide run lock into the tests after this one.
        if not operator_down.running():
            operator_down.start()
        if run:
            ready.kubectl("label", "namespace", namespace, "shakeout.dev/protected-", check=False)
            ready.kubectl(
                "patch", "experimentrun", run, "-n", namespace, "--type=merge",
                "-p", '{"spec":{"cancel":true}}', check=False,
            )  # fmt: skip
            ended = {"CANCELED", "FAILED", "COMPLETED"}
            wait_phase(ready, run, ended, timeout=180, namespace=namespace)
        ready.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def keeper_of(agent_pid: int) -> int:
    """The keeper: the agent's child running shakeout.agent.node.keeper."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == agent_pid and b"keeper" in cmdline:
            return int(entry)
    raise AssertionError(f"no keeper under the agent {agent_pid}")


def test_the_agent_exits_when_its_keeper_dies_and_the_next_one_recovers(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    target_pod(ready, "bound-keeper", target)
    applied_run(ready, "bound-keeper", target, {**BLACKHOLE, "durationSeconds": 600})
    assert live_agent.process is not None
    keeper = keeper_of(live_agent.process.pid)
    killed = time.monotonic()
    os.kill(keeper, signal.SIGKILL)
    code = live_agent.process.wait(timeout=15)
    took = time.monotonic() - killed
    print(f"\nkeeper SIGKILLed: the agent exited with code {code} {took:.2f} s later")
    assert code == 3
    assert "shakeout_" in nft_tables(target)  # a SIGKILLed keeper leaves its tables
    live_agent.start()  # as the kubelet restarts the container
    eventually(
        lambda: "shakeout_" not in nft_tables(target),
        timeout=10,
        what="the new keeper rolled back the journal",
    )
