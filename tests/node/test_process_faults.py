"""Process faults through a real keeper: stress found as the pod's processes, kills."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shakeout.agent.node import faults
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import Located
from shakeout.api.attacks import AttackType
from tests.node.lab import CpuMeter, Netns, cmdline, comm, eventually, rss_kib

STRESS = "shakeout.agent.node.stress"


def stress_pids(netns: Netns) -> list[int]:
    return [pid for pid in netns.pids() if STRESS in cmdline(pid)]


async def test_cpu_stress_burns_one_cpu_in_the_pod(netns: Netns, keeper: Keeper) -> None:
    record = await keeper.apply("cpu", AttackType.CPU_STRESS, {"workers": 1}, netns.pod())
    pids = stress_pids(netns)
    assert pids == [entry["pid"] for entry in record["processes"]]
    rate, reference = CpuMeter.against_reference(pids)
    print(
        f"\ncpu stress, 1 worker: {rate:.2f} CPU seconds per second; a reference busy loop "
        f"alongside: {reference:.2f} (share {rate / max(reference, 1e-9):.2f})"
    )
    # What one busy process could get meanwhile is the measure: the cores are shared with
    # whatever else the machine runs. One worker burns at most one CPU (tick rounding aside).
    assert rate >= 0.5 * reference
    assert rate <= 1.1

    await keeper.rollback("cpu")
    assert stress_pids(netns) == []
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)  # killed and reaped


async def test_memory_stress_holds_64_mib_in_the_pod(netns: Netns, keeper: Keeper) -> None:
    await keeper.apply("mem", AttackType.MEMORY_STRESS, {"megabytes": 64}, netns.pod())
    holders = [pid for pid in netns.pids() if rss_kib(pid) >= 64 * 1024]
    assert len(holders) == 1
    assert STRESS in cmdline(holders[0])
    print(f"\nmemory stress 64 MiB: RSS {rss_kib(holders[0]) / 1024:.1f} MiB")

    await keeper.rollback("mem")
    assert [pid for pid in netns.pids() if rss_kib(pid) >= 64 * 1024] == []


async def test_process_kill_kills_and_closes_its_journal_entry(
    netns: Netns, keeper: Keeper, journal: Path
) -> None:
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "1000"])
    try:
        # ip netns exec execs sleep: the same pid, once it is in the namespace.
        eventually(lambda: sleeper.pid in netns.pids(), timeout=2)
        eventually(lambda: comm(sleeper.pid) == "sleep", timeout=2)
        parameters = {"signal": "KILL", "processName": "sleep"}
        record = await keeper.apply("kill", AttackType.PROCESS_KILL, parameters, netns.pod())
        assert sleeper.wait(timeout=2) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
    assert record["killed"] == [{"pid": sleeper.pid, "comm": "sleep"}]
    assert record["reversible"] is False
    assert record["undo"] == "nothing: ProcessKill is irreversible"
    # Nothing to undo, so nothing held: the journal entry is closed at once.
    assert await keeper.held() == []
    assert json.loads(journal.read_text())["faults"] == {}
    await keeper.rollback("kill")  # a no-op


async def test_process_kill_spares_other_names(netns: Netns, keeper: Keeper) -> None:
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "1000"])
    try:
        eventually(lambda: sleeper.pid in netns.pids(), timeout=2)
        with pytest.raises(faults.FaultError, match="no process named 'nginx'"):
            await keeper.apply("kill", "ProcessKill", {"processName": "nginx"}, netns.pod())
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def pod_cgroups() -> Iterator[list[str]]:
    """Stand-ins of a pod's cgroup dirs, below this test's own cgroups (v1 and v2)."""
    tag = f"shakeout-t-{secrets.token_hex(3)}"
    created = []
    with open("/proc/self/cgroup") as own:
        for line in own.read().splitlines():
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",")
            if "cpu" in names:
                base = "/sys/fs/cgroup/cpu"
            elif "memory" in names:
                base = "/sys/fs/cgroup/memory"
            elif controllers == "":
                unified = "/sys/fs/cgroup/unified"
                base = unified if os.path.isdir(unified) else "/sys/fs/cgroup"
            else:
                continue
            directory = os.path.join(base + path, tag)
            os.mkdir(directory)
            created.append(directory)
    yield created
    for directory in reversed(created):
        os.rmdir(directory)


async def test_stress_joins_the_pod_cgroups(netns: Netns, pod_cgroups: list[str]) -> None:
    located = Located(netns=netns.path, pids=(), cgroups=tuple(pod_cgroups))
    record = await faults.apply("cg", AttackType.CPU_STRESS, {}, located)
    try:
        pid = record["processes"][0]["pid"]
        assert record["cgroup_errors"] == []
        assert len(record["cgroups"]) == len(pod_cgroups)
        for directory in record["cgroups"]:
            with open(os.path.join(directory, "cgroup.procs")) as procs:
                assert str(pid) in procs.read().split()
        # cgroup v2 takes processes in leaves only: the stress gets a leaf of its own.
        for leaf in record["cgroup_leaves"]:
            assert os.path.basename(leaf).startswith("shakeout-")
            assert leaf in record["cgroups"]
    finally:
        await faults.rollback(AttackType.CPU_STRESS, record)
    assert not any(os.path.exists(leaf) for leaf in record["cgroup_leaves"])
    assert not os.path.exists(f"/proc/{pid}")
