"""Node agents and node-level attacks, end to end: a real `shakeout agent` for a kwok
node acts on targets that live in network namespaces of this machine.

Each attack: the run applies it, the test observes the effect as a node would (packets,
CPU time, memory, processes, qdiscs), the run rolls it back, the test observes it gone.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.e2e.agents import (
    AGENT_NODE,
    LEASE_DURATION,
    OWN_ROLLBACK_SLACK,
    Netns,
    NodeAgent,
    TcpProxy,
    UdpEcho,
    dropped,
    rss_mib,
    running_agent,
)
from tests.e2e.conftest import Cluster, eventually
from tests.e2e.invariants import assert_clean
from tests.e2e.runs import TEAM, create_run, set_switch, wait_phase
from tests.node.lab import CpuMeter

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


@pytest.fixture(scope="module")
def agent(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with running_agent(crds, tmp_path_factory.mktemp("agent"), show_log=True) as node_agent:
        yield node_agent


@pytest.fixture
def live_agent(agent: NodeAgent, ready: Cluster) -> NodeAgent:
    """The module's agent, restarted if an earlier test killed or froze it."""
    if not agent.running():
        agent.start()
    return agent


@pytest.fixture
def target(ready: Cluster) -> Iterator[Netns]:
    ns = Netns.create()
    try:
        yield ns
    finally:
        ns.delete()


def target_pod(cluster: Cluster, app: str, ns: Netns, node: str = AGENT_NODE) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": app,
                "namespace": TEAM,
                "labels": {"app": app},
                "annotations": {"shakeout.dev/netns": ns.name},
            },
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        }
    )
    eventually(
        lambda: cluster.get("pod", app, "-n", TEAM).get("status", {}).get("phase") == "Running",
        what=f"pod {app} Running",
    )


def node_experiment(cluster: Cluster, name: str, attack: dict[str, Any], **spec: Any) -> None:
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": name}}},
                "attacks": [{"name": "a", **attack}],
                **spec,
            },
        }
    )


def run_attack(cluster: Cluster, name: str, ns: Netns, attack: dict[str, Any], **spec: Any) -> str:
    target_pod(cluster, name, ns)
    node_experiment(cluster, name, attack, **spec)
    run, created = create_run(cluster, name)
    if not attack_reversible(attack):
        # Said before the run starts: the admission warning that kubectl prints.
        assert "cannot be rolled back: a (ProcessKill)" in created.stderr, created.stderr
    status = wait_phase(cluster, run, {"ATTACKS_STARTED", *TERMINAL}, timeout=30)
    assert status["phase"] == "ATTACKS_STARTED", status
    eventually(
        lambda: (
            (s := cluster.get("experimentrun", run, "-n", TEAM)["status"])["attacks"][0]["state"]
            in ("Applied", "Failed", "RolledBack")
            and s
        ),
        what="the attack applied",
    )
    return run


def attack_reversible(attack: dict[str, Any]) -> bool:
    return attack["type"] not in ("ProcessKill", "PodDelete")


def finished(cluster: Cluster, run: str, timeout: float = 60) -> dict[str, Any]:
    status = wait_phase(cluster, run, TERMINAL, timeout=timeout)
    return status


def nft_tables(ns: Netns) -> str:
    return ns.exec("nft", "list", "tables").stdout


def fault_gone_after(target: Netns, since: float, timeout: float) -> float:
    """Seconds from `since` until the target's nftables fault is gone (polled every 50 ms)."""
    eventually(
        lambda: "shakeout_" not in nft_tables(target),
        timeout=timeout,
        interval=0.05,
        what="the blackhole rolled back",
    )
    return time.monotonic() - since


# -- each node-level attack -------------------------------------------------------------


def test_blackhole_drops_everything_and_rollback_restores(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    echo = UdpEcho(target)
    assert echo.ratio(50) == 1.0
    run = run_attack(ready, "bh", target, {"type": "NetworkBlackhole", "durationSeconds": 4})
    assert echo.ratio(50) == 0.0
    assert "shakeout_" in nft_tables(target)
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    assert status["attacks"][0]["state"] == "RolledBack"
    assert status["agents"] == [AGENT_NODE]
    assert echo.ratio(50) == 1.0
    assert "shakeout_" not in nft_tables(target)
    report = ready.get(
        "nodeattacks",
        "-n",
        TEAM,
        "-l",
        f"shakeout.dev/run-uid={ready.get('experimentrun', run, '-n', TEAM)['metadata']['uid']}",
    )
    (obj,) = report["items"]
    assert obj["status"]["phase"] == "RolledBack"
    assert obj["status"]["targets"] == [{"name": "bh", "state": "RolledBack"}]


def test_packet_loss_drops_the_configured_share(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    echo = UdpEcho(target)
    run = run_attack(
        ready,
        "loss",
        target,
        {
            "type": "PacketLoss",
            "durationSeconds": 6,
            "packetLoss": {"percent": 50, "direction": "Egress"},
        },
    )
    during = echo.ratio(400)
    print(f"\nPacketLoss 50% egress: {during:.2f} of echoes came back (expected about 0.50)")
    assert 0.35 <= during <= 0.65
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    assert echo.ratio(200) == 1.0


def test_bandwidth_limit_installs_tbf_and_rollback_removes_it(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    run = run_attack(
        ready,
        "bw",
        target,
        {"type": "BandwidthLimit", "durationSeconds": 4, "bandwidthLimit": {"rateKbit": 800}},
    )
    qdiscs = target.exec("tc", "qdisc", "show").stdout
    assert "tbf" in qdiscs, qdiscs
    assert "800Kbit" in qdiscs, qdiscs
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    assert "tbf" not in target.exec("tc", "qdisc", "show").stdout


def test_cpu_stress_burns_cpu_in_the_target_and_stops(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    run = run_attack(
        ready,
        "cpu",
        target,
        {"type": "CpuStress", "durationSeconds": 12, "cpuStress": {"workers": 1}},
    )
    # Measured against a reference busy loop alongside: the 2 cores are shared with the
    # control plane. The window ends well before the stress does (12 s).
    rate, reference = CpuMeter.against_reference(target.pids(), enough=0.5, longest=6.0)
    print(
        f"\nCpuStress workers=1: {rate:.2f} CPU-seconds per second in the target; a "
        f"reference busy loop alongside: {reference:.2f}"
    )
    assert rate >= 0.5 * reference
    assert rate <= 1.1  # one worker burns at most one CPU (tick rounding aside)
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    assert target.pids() == []


def test_memory_stress_holds_memory_in_the_target_and_frees_it(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    run = run_attack(
        ready,
        "mem",
        target,
        {"type": "MemoryStress", "durationSeconds": 5, "memoryStress": {"megabytes": 64}},
    )
    held = eventually(lambda: (m := rss_mib(target.pids())) >= 64 and m, what="64 MiB held")
    print(f"\nMemoryStress 64 MiB: {held:.0f} MiB resident in the target")
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    assert target.pids() == []


def test_process_kill_kills_and_is_reported_irreversible(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    victim = target.start("sleep", "1000")
    run = run_attack(ready, "kill", target, {"type": "ProcessKill", "durationSeconds": 1})
    eventually(lambda: victim.poll() is not None, what="the process killed")
    assert victim.returncode == -signal.SIGKILL
    status = finished(ready, run)
    assert status["phase"] == "COMPLETED", status
    attack = status["attacks"][0]
    assert (attack["reversible"], attack["state"]) == (False, "Completed")
    experiment = ready.get("experiment", "kill", "-n", TEAM)
    assert experiment["status"]["irreversibleAttacks"] == 1


def test_an_attack_the_node_cannot_do_is_refused_before_the_run_exists(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    target_pod(ready, "delay", target)
    node_experiment(ready, "delay", {"type": "NetworkDelay", "networkDelay": {"delayMs": 100}})
    _, result = create_run(ready, "delay", check=False)
    assert result.returncode != 0
    assert "cannot do NetworkDelay" in result.stderr, result.stderr
    assert "netem" in result.stderr, result.stderr
    assert not [
        r
        for r in ready.get("experimentruns", "-n", TEAM)["items"]
        if r["spec"]["experimentRef"]["name"] == "delay"
    ]


def test_a_run_waits_for_agents_and_fails_with_its_own_reason(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    # kwok-node-1 has no agent.
    ready.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "noagent", "namespace": TEAM, "labels": {"app": "noagent"}},
            "spec": {"nodeName": "kwok-node-1", "containers": [{"name": "c", "image": "x"}]},
        }
    )
    node_experiment(ready, "noagent", {"type": "NetworkBlackhole"}, agentTimeoutSeconds=2)
    run, _ = create_run(ready, "noagent")
    status = finished(ready, run, timeout=30)
    assert (status["phase"], status["reason"]) == ("FAILED", "AgentsNotConnected"), status
    assert "kwok-node-1" in status["message"]
    assert status["attacks"][0]["state"] == "Skipped"


def test_stop_all_while_a_node_attack_is_being_applied_halts_it(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    """Stop All arriving while the agent applies MemoryStress to 50 pods of its node: it
    starts no further target, undoes those it applied, and reports that it halted."""
    targets = 50
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {"nodeName": AGENT_NODE, "containers": [{"name": "c", "image": "nginx"}]},
    }
    items = [
        {
            **pod,
            "metadata": {
                "name": f"nhalt-{i:02d}",
                "namespace": TEAM,
                "labels": {"app": "nhalt"},
                # One network namespace for all: each target gets a stress process in it.
                "annotations": {"shakeout.dev/netns": target.name},
            },
        }
        for i in range(targets)
    ]
    ready.create({"apiVersion": "v1", "kind": "List", "items": items})
    try:
        eventually(
            lambda: (
                sum(
                    p.get("status", {}).get("phase") == "Running"
                    for p in ready.get("pods", "-n", TEAM, "-l", "app=nhalt")["items"]
                )
                == targets
            ),
            what=f"{targets} pods Running",
        )
        attack = {"type": "MemoryStress", "durationSeconds": 600, "memoryStress": {"megabytes": 1}}
        node_experiment(ready, "nhalt", attack)
        run, _ = create_run(ready, "nhalt")
        eventually(target.pids, interval=0.05, what="the first target stressed")
        set_switch(ready, False)
        status = finished(ready, run)
        assert (status["phase"], status["reason"]) == ("CANCELED", "StoppedAll"), status
        assert status["attacks"][0]["state"] == "RolledBack", status
        uid = ready.get("experimentrun", run, "-n", TEAM)["metadata"]["uid"]
        (obj,) = ready.get("nodeattacks", "-n", TEAM, "-l", f"shakeout.dev/run-uid={uid}")["items"]
        report = obj["status"]
        assert report["phase"] == "RolledBack", report
        assert report["message"].startswith("halted after "), report["message"]
        applied = int(report["message"].split()[2])
        print(f"\nStop All mid-apply: {applied} of {targets} node targets stressed")
        assert 0 < applied < targets  # halted partway through
        eventually(lambda: target.pids() == [], what="every stress process gone")
        assert_clean(ready, TEAM, netns=[target])
    finally:
        set_switch(ready, True)
        ready.kubectl("delete", "pods", "-n", TEAM, "-l", "app=nhalt", "--wait=false")


# -- agent loss -------------------------------------------------------------------------


def test_agent_sigkill_fails_the_run_and_its_faults_are_rolled_back(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    echo = UdpEcho(target)
    run = run_attack(ready, "k9", target, {"type": "NetworkBlackhole", "durationSeconds": 120})
    assert echo.ratio(20) == 0.0
    killed = time.monotonic()
    live_agent.signal(signal.SIGKILL)
    # The keeper sees its parent die and rolls back at once.
    gone = fault_gone_after(target, killed, timeout=5)
    print(f"\nagent SIGKILL: fault gone after {gone:.2f} s")
    assert echo.ratio(20) == 1.0
    status = finished(ready, run, timeout=LEASE_DURATION + 10)
    assert (status["phase"], status["reason"]) == ("FAILED", "AgentDisconnected"), status
    print(f"run FAILED AgentDisconnected {time.monotonic() - killed:.2f} s after the kill")


def test_agent_sigstop_rolls_back_at_lease_expiry_and_fails_the_run(
    live_agent: NodeAgent, target: Netns, ready: Cluster
) -> None:
    echo = UdpEcho(target)
    run = run_attack(ready, "stop", target, {"type": "NetworkBlackhole", "durationSeconds": 120})
    frozen = time.monotonic()
    live_agent.signal(signal.SIGSTOP)
    try:
        gone = fault_gone_after(target, frozen, timeout=LEASE_DURATION + OWN_ROLLBACK_SLACK + 2)
        print(
            f"\nagent SIGSTOP: fault gone {gone:.2f} s after the freeze (lease {LEASE_DURATION} s)"
        )
        assert gone <= LEASE_DURATION + OWN_ROLLBACK_SLACK
        assert echo.ratio(20) == 1.0
        status = finished(ready, run, timeout=LEASE_DURATION + 10)
        assert (status["phase"], status["reason"]) == ("FAILED", "AgentDisconnected"), status
    finally:
        live_agent.signal(signal.SIGCONT)
    live_agent.stop()


@pytest.mark.usefixtures("live_operator")
def test_agent_cut_off_from_the_api_server_rolls_back_on_its_own(
    ready: Cluster, target: Netns, tmp_path: Path, agent: NodeAgent
) -> None:
    crds = ready
    # This test runs its own agent, whose API traffic goes through a proxy port that
    # nftables can drop; the module's agent is stopped meanwhile.
    agent.stop()
    config = yaml.safe_load(crds.admin_kubeconfig.read_text())
    server = urlparse(config["clusters"][0]["cluster"]["server"])
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 443))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    kubeconfig = tmp_path / "agent.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    cut_agent = NodeAgent(crds, tmp_path, kubeconfig=kubeconfig)
    cut_agent.start()
    try:
        echo = UdpEcho(target)
        run = run_attack(ready, "cut", target, {"type": "NetworkBlackhole", "durationSeconds": 120})
        assert echo.ratio(20) == 0.0
        lease = cut_agent.lease()
        assert lease is not None
        with dropped(proxy.port):
            cut = time.monotonic()
            gone = fault_gone_after(target, cut, timeout=LEASE_DURATION + OWN_ROLLBACK_SLACK + 2)
            print(
                f"\nagent cut off: fault gone {gone:.2f} s after the cut "
                f"(lease {LEASE_DURATION} s; goal: within lease expiry + 1 s)"
            )
            assert gone <= LEASE_DURATION + OWN_ROLLBACK_SLACK
            assert echo.ratio(20) == 1.0
            status = finished(ready, run, timeout=LEASE_DURATION + 10)
            assert (status["phase"], status["reason"]) == ("FAILED", "AgentDisconnected"), status

        # Back online: the agent reports what it lost; nothing is applied again.
        def reported() -> Any:
            items = ready.get("nodeattacks", "-n", TEAM)["items"]
            mine = [i for i in items if i["spec"]["runName"] == run]
            return mine and all(
                i.get("status", {}).get("phase") in ("RolledBack", "Failed") for i in mine
            )

        eventually(reported, timeout=30, what="the agent's report after reconnecting")
        assert "shakeout_" not in nft_tables(target)
    finally:
        cut_agent.stop()
