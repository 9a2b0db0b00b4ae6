"""The keeper never leaves a fault behind: parent death, silence, its own death, repeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shakeout.agent.node import faults
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.system import FaultError
from shakeout.api.attacks import AttackType
from tests.node.lab import Netns, eventually

# An agent in miniature: starts a keeper, applies a blackhole, then just lives on.
AGENT = """
import asyncio, json, sys
from pathlib import Path
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import PodRef

async def main():
    keeper = await Keeper.start(
        journal=Path(sys.argv[1]), deadline=60, locator="netns-annotation"
    )
    pod = PodRef("team-a", "web", "00000000-0000-4000-8000-000000000001",
                 {"shakeout.dev/netns": sys.argv[2]})
    record = await keeper.apply("agent-bh", "NetworkBlackhole", {}, pod)
    print(json.dumps({"keeper": keeper.pid, "table": record["table"]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def test_a_killed_agent_loses_its_faults_within_a_second(netns: Netns, journal: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(journal), netns.name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None
        started = json.loads(agent.stdout.readline())
        assert netns.tables() == [started["table"]]
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        latency = eventually(lambda: netns.tables() == [], timeout=1.0)
        print(f"\nagent SIGKILLed: its blackhole was gone after {latency * 1000:.0f} ms")
        eventually(lambda: gone(started["keeper"]), timeout=2.0)  # and the keeper exited
    finally:
        agent.kill()
        agent.wait()
    assert json.loads(journal.read_text())["faults"] == {}


async def test_a_silent_agent_loses_its_faults_at_the_deadline(netns: Netns, journal: Path) -> None:
    deadline = 2.0
    keeper = await Keeper.start(journal=journal, deadline=deadline, locator="netns-annotation")
    try:
        await keeper.apply("bh", AttackType.NETWORK_BLACKHOLE, {}, netns.pod())
        # Heartbeats keep the fault for longer than the deadline.
        for _ in range(6):
            await asyncio.sleep(deadline / 4)
            sent = time.monotonic()  # the keeper read the last command after this
            assert await keeper.heartbeat() == ["bh"]
        answered = time.monotonic()  # and before this
        assert netns.tables() != []
        while netns.tables():
            # The slack covers a loaded machine: the keeper's 50 ms watch, nft, this poll.
            assert time.monotonic() - answered < deadline + 1.0, "fault outlived the deadline"
            await asyncio.sleep(0.01)
        gone = time.monotonic()
        print(f"\nno heartbeat for {gone - answered:.2f} s (deadline {deadline} s): rolled back")
        assert gone - sent >= deadline  # the deadline, not something earlier, rolled it back
        # The keeper lives on, empty, and takes new faults.
        assert keeper.running
        assert await keeper.held() == []  # answered once the rollback is complete
        assert await keeper.heartbeat() == []
        await keeper.apply("bh-2", "NetworkBlackhole", {}, netns.pod())
        assert len(netns.tables()) == 1
    finally:
        await keeper.stop()
    assert netns.tables() == []


async def test_a_new_keeper_rolls_back_what_a_killed_keeper_left(
    netns: Netns, journal: Path
) -> None:
    first = await Keeper.start(journal=journal, deadline=30, locator="netns-annotation")
    pod = netns.pod()
    await first.apply("bh", "NetworkBlackhole", {}, pod)
    stress = await first.apply("cpu", "CpuStress", {"workers": 2}, pod)
    os.kill(first.pid, signal.SIGKILL)
    with contextlib.suppress(FaultError):
        await first.stop()  # collects the killed process (exit code -9)
    # Its stress children die with it (PR_SET_PDEATHSIG); the nftables table stays.
    stress_pids = [int(entry["pid"]) for entry in stress["processes"]]
    eventually(lambda: all(gone(pid) for pid in stress_pids), timeout=1.0)
    assert len(netns.tables()) == 1
    assert sorted(json.loads(journal.read_text())["faults"]) == ["bh", "cpu"]

    second = await Keeper.start(journal=journal, deadline=30, locator="netns-annotation")
    try:
        assert netns.tables() == []
        assert sorted(second.recovered) == ["bh", "cpu"]
        assert second.unrecovered == []
        assert json.loads(journal.read_text())["faults"] == {}
        assert await second.held() == []
    finally:
        await second.stop()


async def test_rollback_twice_is_a_no_op(netns: Netns, keeper: Keeper) -> None:
    record = await keeper.apply("bh", "NetworkBlackhole", {}, netns.pod())
    await keeper.rollback("bh")
    await keeper.rollback("bh")
    assert netns.tables() == []
    # The mechanism itself, on a record whose fault is gone.
    await faults.rollback(AttackType.NETWORK_BLACKHOLE, record)
    # A repeated apply returns the fault in place instead of applying it twice.
    first = await keeper.apply("bh-3", "NetworkBlackhole", {}, netns.pod())
    assert await keeper.apply("bh-3", "NetworkBlackhole", {}, netns.pod()) == first
    assert netns.tables() == [first["table"]]


async def test_every_fault_rolls_back_after_its_netns_was_deleted(
    netns: Netns, keeper: Keeper
) -> None:
    pod = netns.pod()
    stress = await keeper.apply("cpu", "CpuStress", {}, pod)
    # Applied while the stress runs in the namespace: their records reach it through it.
    await keeper.apply("bh", "NetworkBlackhole", {}, pod)
    await keeper.apply("bw", "BandwidthLimit", {"rateKbit": 1000}, pod)
    await keeper.apply("loss", "PacketLoss", {"percent": 50}, pod)
    subprocess.run(["ip", "netns", "del", netns.name], check=True)
    # The name is gone, the namespace lives on in the stress process: rules included.
    inside = ["nsenter", f"--net=/proc/{stress['processes'][0]['pid']}/ns/net", "--"]
    tables = [*inside, "nft", "list", "tables"]
    assert (
        subprocess.run(tables, capture_output=True, text=True, check=False).stdout.count(
            "shakeout_"
        )
        == 2
    )
    for fault_id in ("bh", "bw", "loss"):
        await keeper.rollback(fault_id)
    assert (
        "shakeout_"
        not in subprocess.run(tables, capture_output=True, text=True, check=False).stdout
    )
    qdisc = subprocess.run(
        [*inside, "tc", "qdisc", "show", "dev", "eth0"], capture_output=True, check=False
    )
    assert b"noqueue" in qdisc.stdout
    await keeper.rollback("cpu")  # the last process: the namespace is gone now
    assert await keeper.held() == []


async def test_rollback_all_and_stop_leave_nothing(netns: Netns, journal: Path) -> None:
    own_cgroup_namespace = f"/proc/{os.getpid()}/ns/cgroup"
    keeper = await Keeper.start(
        journal=journal,
        deadline=30,
        locator="netns-annotation",
        cgroup_namespace=own_cgroup_namespace,  # the plumbing of the host's, on a node
    )
    assert os.path.samefile(f"/proc/{keeper.pid}/ns/cgroup", own_cgroup_namespace)
    pod = netns.pod()
    await keeper.apply("bh", "NetworkBlackhole", {"direction": "Egress"}, pod)
    await keeper.apply("mem", "MemoryStress", {"megabytes": 8}, pod)
    await keeper.rollback_all()
    assert netns.tables() == []
    assert await keeper.held() == []
    await keeper.apply("bw", "BandwidthLimit", {"rateKbit": 1000}, pod)
    await keeper.stop()
    assert netns.root_qdisc()["kind"] == "noqueue"
    assert not keeper.running
