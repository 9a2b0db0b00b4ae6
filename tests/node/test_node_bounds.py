"""The bounds the keeper keeps on its own: each fault's notAfter, the per-node stress
caps, the OOM killer's choice of stress, a journal that team annotations cannot swell,
and rollbacks that failed retried on a timer (SEC-05, SEC-07, SEC-16, SEC-24)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import ANNOTATION_NETNS, PodRef
from shakeout.agent.node.processes import leaf_name
from shakeout.agent.node.system import FaultError
from shakeout.api.attacks import AttackType
from tests.node.lab import Netns


async def test_a_fault_ends_at_its_not_after_whatever_the_heartbeats(
    netns: Netns, journal: Path
) -> None:
    keeper = await Keeper.start(journal=journal, deadline=30, locator="netns-annotation")
    bound = 2.0
    try:
        start = time.monotonic()
        not_after = time.time() + bound  # measured from `start`, never as a wall time
        await keeper.apply("bh", AttackType.NETWORK_BLACKHOLE, {}, netns.pod(), not_after=not_after)
        entry = json.loads(journal.read_text())["faults"]["bh"]
        assert entry["not_after"] == pytest.approx(not_after)
        assert netns.tables() != []
        # The agent is alive and well: heartbeats all along do not keep the fault.
        while netns.tables():
            assert await keeper.heartbeat() in (["bh"], [])
            assert time.monotonic() - start < bound + 0.5, "the fault outlived its notAfter"
            await asyncio.sleep(0.02)
        ended = time.monotonic() - start
        print(f"\nnotAfter {bound} s after the apply: rolled back after {ended:.2f} s")
        assert ended >= bound - 0.05  # notAfter, not something earlier, rolled it back
        # The table goes first, the fault's entry right after (a heartbeat does not wait
        # for the rollback under way): within a moment, nothing is held.
        for _ in range(100):
            if await keeper.heartbeat() == []:
                break
            await asyncio.sleep(0.02)
        assert await keeper.heartbeat() == []
        assert json.loads(journal.read_text())["faults"] == {}
        # A fault whose notAfter has passed is refused before anything is touched.
        with pytest.raises(FaultError, match="notAfter has passed"):
            await keeper.apply("late", "NetworkBlackhole", {}, netns.pod(), not_after=time.time())
        assert netns.tables() == []
    finally:
        await keeper.stop()


async def test_stress_is_the_oom_killers_first_choice(netns: Netns, keeper: Keeper) -> None:
    record = await keeper.apply("cpu", AttackType.CPU_STRESS, {"workers": 2}, netns.pod())
    for process in record["processes"]:
        with open(f"/proc/{process['pid']}/oom_score_adj") as adj:
            assert adj.read().strip() == "1000"
    await keeper.rollback("cpu")


async def test_stress_is_capped_per_node(netns: Netns, journal: Path) -> None:
    keeper = await Keeper.start(
        journal=journal,
        deadline=30,
        locator="netns-annotation",
        max_stress_workers=3,
        max_stress_mib=64,
    )
    try:
        pod = netns.pod()
        await keeper.apply("cpu-1", "CpuStress", {"workers": 2}, pod)
        with pytest.raises(FaultError, match=r"would make 4 on this node, over its cap of 3"):
            await keeper.apply("cpu-2", "CpuStress", {"workers": 2}, pod)
        with pytest.raises(FaultError, match=r"128 MiB on this node, over its cap of 64 MiB"):
            await keeper.apply("mem", "MemoryStress", {"megabytes": 128}, pod)
        assert sorted(await keeper.held()) == ["cpu-1"]
        await keeper.rollback("cpu-1")
        await keeper.apply("cpu-3", "CpuStress", {"workers": 3}, pod)  # room again
    finally:
        await keeper.stop()


async def test_the_journal_keeps_only_the_locators_annotation(netns: Netns, keeper: Keeper) -> None:
    pod = netns.pod()
    big = PodRef(
        pod.namespace,
        pod.name,
        pod.uid,
        {ANNOTATION_NETNS: netns.name, "team/notes": "a" * 200 * 1024},
    )
    await keeper.apply("bh", "NetworkBlackhole", {}, big)
    size = keeper.journal.stat().st_size
    entry = json.loads(keeper.journal.read_text())["faults"]["bh"]
    print(f"\na pod with a 200 KiB annotation: journal of {size} bytes")
    assert entry["pod"]["annotations"] == {ANNOTATION_NETNS: netns.name}
    assert size < 8 * 1024
    await keeper.rollback("bh")


async def test_an_unrecovered_fault_is_retried_on_a_timer(tmp_path: Path, journal: Path) -> None:
    # A stress fault left by an earlier keeper, whose cgroup leaf cannot be removed yet.
    cgroups = tmp_path / "cgroup"
    leaf = cgroups / "kubepods" / "pod1" / leaf_name("stuck")
    leaf.mkdir(parents=True)
    (leaf / "busy").write_text("")
    entry = {
        "type": "CpuStress",
        "parameters": {"workers": 1},
        "pod": {"namespace": "team-a", "name": "web", "uid": "u", "annotations": {}},
        "state": "applied",
        "record": {"mechanism": "stress", "processes": [], "cgroup_leaves": [str(leaf)]},
    }
    journal.write_text(json.dumps({"version": 1, "faults": {"stuck": entry}}))
    keeper = await Keeper.start(
        journal=journal,
        deadline=30,
        locator="netns-annotation",
        cgroup_root=str(cgroups),
        retry_seconds=0.5,
    )
    try:
        assert keeper.unrecovered == ["stuck"]
        assert await keeper.heartbeat() == ["stuck"]
        assert "cannot remove cgroup" in keeper.unrecovered_errors["stuck"]
        (leaf / "busy").unlink()  # whatever kept it: gone now
        start = time.monotonic()
        while await keeper.heartbeat():  # the agent only heartbeats: the keeper retries
            assert time.monotonic() - start < 10, "the unrecovered fault was never retried"
            await asyncio.sleep(0.1)
        print(f"\nunrecovered fault rolled back {time.monotonic() - start:.2f} s later")
        assert keeper.unrecovered_errors == {}
        assert not leaf.exists()
        assert json.loads(journal.read_text())["faults"] == {}
    finally:
        await keeper.stop()
