"""The keeper's batches: many faults journaled in one save before any is touched, applied
pods side by side, each result reported on its own, and stopped by a rollback_all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shakeout.agent.node import faults, holder
from shakeout.agent.node.holder import FaultHolder
from shakeout.agent.node.journal import Journal
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import NetnsAnnotationLocator, PodRef
from shakeout.agent.node.system import HostPaths
from shakeout.api.nodeattack import MAX_NODE_TARGETS
from tests.node.lab import Netns, create_netns, delete_netns


@pytest.fixture
def three() -> Iterator[list[Netns]]:
    created: list[Netns] = []
    try:
        for _ in range(3):
            created.append(create_netns())
        yield created
    finally:
        for netns in created:
            delete_netns(netns)


def blackhole(fault_id: str, pod: PodRef) -> dict[str, Any]:
    return {"id": fault_id, "type": "NetworkBlackhole", "parameters": {}, "pod": pod.to_json()}


async def test_a_batch_is_journaled_whole_before_its_first_fault_and_saved_twice(
    three: list[Netns], journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper = FaultHolder(Journal(journal), 60.0, NetnsAnnotationLocator(), HostPaths())
    saves: list[list[str]] = []
    real_save = Journal.save

    def counted(self: Journal, entries: dict[str, dict[str, Any]]) -> None:
        saves.append(sorted(entries))
        real_save(self, entries)

    on_disk_at_each_apply: list[list[str]] = []
    real_apply = faults.apply

    async def watched(fault_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        on_disk_at_each_apply.append(sorted(json.loads(journal.read_text())["faults"]))
        return await real_apply(fault_id, *args, **kwargs)

    monkeypatch.setattr(Journal, "save", counted)
    monkeypatch.setattr(faults, "apply", watched)
    pods = [netns.pod() for netns in three]
    batch = [blackhole(f"bh-{i}-{n}", pod) for n, pod in enumerate(pods) for i in range(2)]
    results = await keeper.apply_batch(batch)

    ids = sorted(f["id"] for f in batch)
    assert [r["ok"] for r in results] == [True] * 6
    assert [r["id"] for r in results] == [f["id"] for f in batch]  # in order
    assert on_disk_at_each_apply == [ids] * 6  # every one journaled before the first
    assert saves == [ids, ids]  # once before, once after: not twice a fault
    assert all(entry["state"] == "applied" for entry in keeper.entries.values())
    assert all(len(netns.tables()) == 2 for netns in three)
    held, errors = await keeper.rollback_many(ids, "test")
    assert (held, errors) == (ids, {})
    assert len(saves) == 3  # one save for the whole rollback
    assert all(netns.tables() == [] for netns in three)
    assert json.loads(journal.read_text())["faults"] == {}


async def test_a_batch_reports_each_fault_on_its_own(netns: Netns, keeper: Keeper) -> None:
    pod = netns.pod()
    elsewhere = PodRef(
        "team-a", "gone", "00000000-0000-4000-8000-00000000000f", {"shakeout.dev/netns": "nope-0"}
    )
    batch = [
        blackhole("bh", pod),
        {**blackhole("bad", pod), "parameters": {"direction": "Sideways"}},
        blackhole("nowhere", elsewhere),
        blackhole("bh", pod),  # twice in one batch
        {"id": "loss", "type": "PacketLoss", "parameters": {"percent": 30}, "pod": pod.to_json()},
    ]
    results = await keeper.apply_batch(batch)
    assert [r["ok"] for r in results] == [True, False, False, False, True]
    assert "direction" in results[1]["error"]
    assert "does not exist" in results[2]["error"]
    assert "twice" in results[3]["error"]
    assert sorted(await keeper.held()) == ["bh", "loss"]
    again = await keeper.apply_batch([blackhole("bh", pod)])  # a repeated apply: in place
    assert again[0]["ok"]
    assert again[0]["record"] == results[0]["record"]
    assert await keeper.rollback_many(["bh", "loss", "unknown"]) == {}
    assert netns.tables() == []
    assert await keeper.held() == []


async def test_a_rollback_all_stops_a_batch_in_progress(netns: Netns, keeper: Keeper) -> None:
    pod = netns.pod()  # one pod: its faults go in turn, so the batch takes a while
    batch = [blackhole(f"bh-{i}", pod) for i in range(40)]
    applying = asyncio.create_task(keeper.apply_batch(batch))
    while not netns.tables():
        await asyncio.sleep(0.005)
    await keeper.rollback_all()  # answered after the batch, which started no more
    results = await applying
    halted = [r for r in results if r.get("halted")]
    assert halted, "every fault of the batch was applied: the stop came too late"
    assert all(not r["ok"] for r in halted)
    assert netns.tables() == []
    assert await keeper.held() == []


async def test_rollbacks_of_many_go_on_after_one_fails(
    three: list[Netns], journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper = FaultHolder(Journal(journal), 60.0, NetnsAnnotationLocator(), HostPaths())
    pods = [netns.pod() for netns in three]
    results = await keeper.apply_batch([blackhole(f"bh-{n}", pod) for n, pod in enumerate(pods)])
    assert all(r["ok"] for r in results)
    real_rollback = faults.rollback

    async def failing(kind: Any, record: Mapping[str, Any], **kwargs: Any) -> None:
        if three[1].name in json.dumps(record):
            raise faults.FaultError("nft says no")
        await real_rollback(kind, record, **kwargs)

    monkeypatch.setattr(faults, "rollback", failing)
    errors = await keeper.rollback_all("test")
    assert list(errors) == ["bh-1"]
    assert (three[0].tables(), three[2].tables()) == ([], [])
    assert len(three[1].tables()) == 1
    assert sorted(keeper.entries) == ["bh-1"]  # still held, and journaled
    assert sorted(json.loads(journal.read_text())["faults"]) == ["bh-1"]
    assert keeper.unrecovered == errors  # retried on the keeper's timer
    monkeypatch.setattr(faults, "rollback", real_rollback)
    await keeper.retry_unrecovered()
    assert three[1].tables() == []
    assert (keeper.entries, keeper.unrecovered) == ({}, {})


def test_a_node_attacks_targets_fit_in_one_batch() -> None:
    assert holder.MAX_BATCH >= MAX_NODE_TARGETS
