"""The API server stopped mid-run: the operator and the agent survive, the agent rolls
back on its own within lease expiry + 1 s, and after the return status matches reality.

30 s in `make test`; 30 s and 120 s with SHAKEOUT_RELIABILITY=full (`make reliability`).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.agents import LEASE_DURATION, Netns, NodeAgent, UdpEcho
from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.invariants import FULL, TERMINAL, assert_clean
from tests.e2e.runs import TEAM, create_run, deployment, replicas, wait_phase
from tests.e2e.test_node_agents import agent, fault_gone_after, live_agent, target, target_pod

__all__ = ["agent", "live_agent", "target"]  # fixtures, shared with test_node_agents


@pytest.mark.parametrize("outage", [30, 120] if FULL else [30])
def test_api_server_outage_mid_run(
    outage: int,
    ready: Cluster,
    live_operator: Operator,
    live_agent: NodeAgent,
    target: Netns,
) -> None:
    if ready.sandbox is None:
        pytest.fail("the outage test stops the sandbox's API server: it needs the sandbox")
    echo = UdpEcho(target)
    deployment(ready, "outage-web", replicas=2)
    target_pod(ready, "outage", target)
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "outage", "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "outage"}}},
                "attacks": [
                    {"name": "hole", "type": "NetworkBlackhole", "durationSeconds": 900},
                    {
                        "name": "scale",
                        "type": "ScaleWorkload",
                        "durationSeconds": 900,
                        "scaleWorkload": {
                            "workload": {"kind": "Deployment", "name": "outage-web"},
                            "replicas": 1,
                        },
                    },
                ],
            },
        }
    )
    name, _ = create_run(ready, "outage")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(lambda: replicas(ready, "outage-web") == 1, what="scaled down")
    eventually(lambda: echo.ratio(10, wait=0.2) == 0.0, what="the blackhole applied")

    stopped = time.monotonic()
    ready.sandbox.stop_apiserver(abrupt=True)
    own_rollback = fault_gone_after(target, stopped, timeout=LEASE_DURATION + 5)
    assert echo.ratio(20) == 1.0
    time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
    assert live_operator.running(), live_operator.output()[-3000:]
    assert live_agent.running(), live_agent.output()[-3000:]
    ready.sandbox.start_apiserver()
    back = time.monotonic()
    status = wait_phase(ready, name, TERMINAL, timeout=90)
    settled = time.monotonic() - back
    assert (status["phase"], status["reason"]) == ("FAILED", "AgentDisconnected"), status
    assert_clean(ready, TEAM, replicas={"outage-web": 2}, netns=[target], timeout=30)
    assert live_operator.running()
    assert live_agent.running()
    # The sandbox's own controllers (ReplicaSets, scheduling, kwok) take tens of seconds to
    # reconnect after an outage; later tests need them, so wait for them here.
    probe = f"outage-probe-{outage}"
    deployment(ready, probe, replicas=1, timeout=240)
    ready.kubectl("delete", "deployment", probe, "-n", TEAM)
    print(
        f"\nAPI server down {outage} s: agent rolled back on its own after {own_rollback:.2f} s "
        f"(lease {LEASE_DURATION} s); run FAILED AgentDisconnected {settled:.1f} s after the "
        "API server returned, workload restored; operator and agent never restarted"
    )
