"""A run's fan-outs and what they reuse: the admitted targets, the first target alone,
the halt on a stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from shakeout.api.experiment import BlastRadius, ExperimentSpec
from shakeout.attacks.fanout import CONCURRENCY, each
from shakeout.engine.targets import select
from shakeout.gather import targets as blast_radius
from shakeout.gather.targets import RecentResolutions
from shakeout.kube import client as kube_client
from shakeout.kube.pods import Pod
from tests.unit.fake_kube import FakeApi

WEB = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "web"}}})
API = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "api"}}})


def resolution() -> tuple[object, list[Pod]]:
    return select(["a", "b"], None, "seed"), [Pod("a", True, False), Pod("b", True, False)]


def test_a_kept_resolution_is_taken_once_by_the_same_run_and_blast_radius() -> None:
    recent = RecentResolutions()
    kept = resolution()
    recent.keep("a", "uid-1", WEB, False, kept)  # type: ignore[arg-type]
    assert recent.take("a", "uid-2", WEB, False) is None  # another run
    assert recent.take("b", "uid-1", WEB, False) is None  # another namespace
    assert recent.take("a", "uid-1", API, False) is None  # the blast radius changed since
    assert recent.take("a", "uid-1", WEB, True) is None  # whole pods needed, names were listed
    assert recent.take("a", "uid-1", WEB, False) == kept
    assert recent.take("a", "uid-1", WEB, False) is None  # taken: the next look lists again


def test_a_stale_resolution_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    recent = RecentResolutions()
    recent.keep("a", "uid-1", WEB, False, resolution())  # type: ignore[arg-type]
    later = time.monotonic() + blast_radius.FRESH_TARGETS
    monkeypatch.setattr(blast_radius.time, "monotonic", lambda: later)
    assert recent.take("a", "uid-1", WEB, False) is None


def test_stale_resolutions_are_dropped_when_another_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recent = RecentResolutions()
    for uid in ("old-1", "old-2"):
        recent.keep("a", uid, WEB, False, resolution())  # type: ignore[arg-type]
    later = time.monotonic() + blast_radius.FRESH_TARGETS
    monkeypatch.setattr(blast_radius.time, "monotonic", lambda: later)
    recent.keep("a", "new", WEB, False, resolution())  # type: ignore[arg-type]
    assert [key[1] for key in recent._kept] == ["new"]  # noqa: SLF001


def test_resolutions_kept_are_bounded_the_oldest_dropped_first() -> None:
    """Anyone who reaches the admission endpoint makes it keep a resolution: at most
    max_kept are held, for FRESH_TARGETS seconds each."""
    recent = RecentResolutions(max_kept=3)
    for n in range(10):
        recent.keep("a", f"uid-{n}", WEB, False, resolution())  # type: ignore[arg-type]
    assert len(recent) == 3
    assert recent.take("a", "uid-6", WEB, False) is None
    assert recent.take("a", "uid-9", WEB, False) is not None
    assert len(RecentResolutions()) == 0
    assert blast_radius.MAX_KEPT <= 100


def test_nothing_is_kept_without_a_namespace_or_a_uid() -> None:
    recent = RecentResolutions()
    recent.keep("", "uid-1", WEB, False, resolution())  # type: ignore[arg-type]
    recent.keep("a", "", WEB, False, resolution())  # type: ignore[arg-type]
    assert len(recent) == 0


async def test_a_forged_review_in_another_namespace_cannot_change_a_runs_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SEC-08: bob posts a review naming team-b and the UID of alice's run in team-a,
    with her blast radius; his team-b pods are named like her critical ones. Alice's
    pick-up resolves her own pods, in her namespace: the forged resolution is never
    taken."""
    fake = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(fake)
    monkeypatch.setattr(blast_radius, "RECENT", RecentResolutions())
    for namespace in ("team-a", "team-b"):
        fake.add_namespace(namespace)
    for name in ("web-1", "web-2"):
        fake.add_pod("team-a", name, {"app": "web"})
    fake.add_pod("team-b", "postgres-0", {"app": "web"})
    spec = ExperimentSpec.model_validate(
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": "kill", "type": "PodDelete"}],
        }
    )

    _, forged = await blast_radius.resolve_targets("team-b", spec, "alice-run-uid")
    assert [p.name for p in forged] == ["postgres-0"]

    selection, pods = await blast_radius.resolve_targets("team-a", spec, "alice-run-uid")
    assert sorted(p.name for p in pods) == ["web-1", "web-2"]
    assert sorted(selection.targets) == ["web-1", "web-2"]


def test_each_sends_the_first_item_alone_then_the_rest_bounded() -> None:
    in_flight, most, order = 0, 0, []

    async def action(item: int) -> int:
        nonlocal in_flight, most
        order.append((item, in_flight))
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return item * 2

    results = asyncio.run(each(range(100), action))
    assert results == [i * 2 for i in range(100)]  # in the items' order
    assert order[:2] == [(0, 0), (1, 0)]  # the first went out alone, and came back...
    assert most == CONCURRENCY  # ...the rest CONCURRENCY at a time


def test_a_refused_first_item_stops_the_rest() -> None:
    sent = []

    async def action(item: int) -> None:
        sent.append(item)
        raise PermissionError("forbidden")

    with pytest.raises(PermissionError):
        asyncio.run(each(range(50), action))
    assert sent == [0]


def test_a_failure_in_the_middle_starts_no_further_item_and_is_raised() -> None:
    sent = []

    async def action(item: int) -> None:
        sent.append(item)
        await asyncio.sleep(0)
        if item == 40:
            raise PermissionError("forbidden")

    with pytest.raises(PermissionError):
        asyncio.run(each(range(10_000), action))
    # Those already out when it failed, not the 10,000.
    assert 40 in sent
    assert len(sent) < 40 + 2 * CONCURRENCY


def test_a_halt_starts_no_further_item_and_lets_those_in_flight_finish() -> None:
    halt = asyncio.Event()
    started, finished = [], []

    async def action(item: int) -> bool:
        started.append(item)
        if item == 5:
            halt.set()  # Stop All arrives while item 5 and its neighbours are in flight
        await asyncio.sleep(0.01)
        finished.append(item)
        return True

    results = asyncio.run(each(range(1000), action, halt))
    assert sorted(started) == sorted(finished)  # nothing started was abandoned
    assert 5 in started
    assert len(started) <= 1 + CONCURRENCY  # the first, then one batch at the most
    assert results == [True] * len(started)  # only what was acted on is counted


def test_a_halt_set_before_the_start_acts_on_nothing() -> None:
    halt = asyncio.Event()
    halt.set()
    sent = []

    async def action(item: int) -> None:
        sent.append(item)

    assert asyncio.run(each(range(10), action, halt)) == []
    assert sent == []


def test_on_halt_runs_at_once_while_the_items_in_flight_are_still_out() -> None:
    """The stop's own request (NetworkIsolation: the policy's deletion) goes out as soon
    as the halt is set, not after the requests in flight return; each still returns only
    once every one of them did."""
    halt = asyncio.Event()
    release = asyncio.Event()
    finished: list[int] = []
    out_when_halted: list[int] = []

    async def action(item: int) -> bool:
        if item == 5:
            halt.set()  # Stop All while items 1..5 are in flight
        if item:
            await release.wait()  # the API server is slow to answer them
        finished.append(item)
        return True

    async def on_halt() -> None:
        out_when_halted.append(len(finished))
        release.set()

    async def main() -> list[bool]:
        # Had on_halt waited for the items in flight, they would wait for it forever.
        return await asyncio.wait_for(each(range(1000), action, halt, on_halt), 5)

    results = asyncio.run(main())
    assert out_when_halted == [1]  # only the first had come back
    assert sorted(finished) == list(range(6))  # the rest in flight were awaited
    assert results == [True] * 6


def test_on_halt_runs_when_the_halt_came_before_the_start() -> None:
    halt = asyncio.Event()
    halt.set()
    called: list[bool] = []

    async def on_halt() -> None:
        called.append(True)

    async def action(_item: int) -> None:
        raise AssertionError("nothing may be acted on")

    assert asyncio.run(each(range(10), action, halt, on_halt)) == []
    assert called == [True]


def test_on_halt_is_not_called_without_a_halt() -> None:
    called: list[bool] = []

    async def on_halt() -> None:
        called.append(True)

    async def action(item: int) -> int:
        return item

    assert asyncio.run(each(range(50), action, asyncio.Event(), on_halt)) == list(range(50))
    assert called == []
