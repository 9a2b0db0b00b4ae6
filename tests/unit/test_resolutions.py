"""A run's fan-outs and what they reuse: the admitted targets, the first target alone,
the halt on a stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from shakeout.api.experiment import BlastRadius
from shakeout.attacks.fanout import CONCURRENCY, each
from shakeout.engine.targets import select
from shakeout.gather import targets as blast_radius
from shakeout.gather.targets import RecentResolutions
from shakeout.kube.pods import Pod

WEB = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "web"}}})
API = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "api"}}})


def resolution() -> tuple[object, list[Pod]]:
    return select(["a", "b"], None, "seed"), [Pod("a", True, False), Pod("b", True, False)]


def test_a_kept_resolution_is_taken_once_by_the_same_run_and_blast_radius() -> None:
    recent = RecentResolutions()
    kept = resolution()
    recent.keep("uid-1", WEB, False, kept)  # type: ignore[arg-type]
    assert recent.take("uid-2", WEB, False) is None  # another run
    assert recent.take("uid-1", API, False) is None  # the blast radius changed since
    assert recent.take("uid-1", WEB, True) is None  # whole pods needed, names were listed
    assert recent.take("uid-1", WEB, False) == kept
    assert recent.take("uid-1", WEB, False) is None  # taken: the next look lists again


def test_a_stale_resolution_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    recent = RecentResolutions()
    recent.keep("uid-1", WEB, False, resolution())  # type: ignore[arg-type]
    later = time.monotonic() + blast_radius.FRESH_TARGETS
    monkeypatch.setattr(blast_radius.time, "monotonic", lambda: later)
    assert recent.take("uid-1", WEB, False) is None


def test_stale_resolutions_are_dropped_when_another_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recent = RecentResolutions()
    for uid in ("old-1", "old-2"):
        recent.keep(uid, WEB, False, resolution())  # type: ignore[arg-type]
    later = time.monotonic() + blast_radius.FRESH_TARGETS
    monkeypatch.setattr(blast_radius.time, "monotonic", lambda: later)
    recent.keep("new", WEB, False, resolution())  # type: ignore[arg-type]
    assert [key[0] for key in recent._kept] == ["new"]  # noqa: SLF001


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
