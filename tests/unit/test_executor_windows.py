"""The run executor and the switch's blackout windows, against a fake cluster: a blackout
added while a run attacks, or beginning by the clock, cancels it BlackoutBegan with its
fault rolled back; a blackout in force at pick-up fails it OutsideWindow; the idle wait ends
when the next blackout begins. The fixtures are test_executor.py's (a fast clock)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from shakeout.api.run import Phase
from shakeout.engine.runs import Reason
from shakeout.execution import executor as executor_module
from shakeout.kube.resources import SWITCHES
from tests.unit.fake_kube import FakeApi
from tests.unit.test_executor import (
    SCALE,
    Clock,
    clock,  # noqa: F401  (a fixture)
    drive,
    events,
    fake,  # noqa: F401  (a fixture)
    scale_writes,
    spec,
    start,
    status_of,
)

NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at_fake(fast: Clock, instant: datetime) -> None:
    """The executor's clock set to `instant` now (it runs on, fast, from there)."""
    fast.origin, fast.started = instant, time.monotonic()


def around(instant: datetime) -> list[str]:
    return [(instant.date() + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]


async def test_a_blackout_added_during_the_attacks_cancels_the_run(
    fake: FakeApi,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    executor, host = start(fake, spec({**SCALE, "durationSeconds": 600}))
    freeze = {"name": "freeze", "dates": around(clock())}
    fake.on(
        "PATCH",
        r"/deployments/web/scale$",
        lambda _c: fake.edit(SWITCHES, None, "default", {"spec": {"blackoutWindows": [freeze]}}),
        when=lambda c: c.body["spec"]["replicas"] == 0,
    )

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.BLACKOUT_BEGAN)
    assert status["message"].startswith("the blackout window freeze (")
    assert scale_writes(fake) == [0, 3]  # applied, then rolled back
    assert status["attacks"][0]["state"] == "RolledBack"
    assert events(host)[-1] == ("Warning", Reason.BLACKOUT_BEGAN)


async def test_a_blackout_that_begins_by_the_clock_cancels_the_run_when_it_begins(
    fake: FakeApi,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    at_fake(clock, NOON - timedelta(seconds=20))  # a second of real time before noon
    noon = {"name": "noon", "startTime": "12:00", "endTime": "12:30"}
    fake.edit(SWITCHES, None, "default", {"spec": {"blackoutWindows": [noon]}})
    executor, _ = start(fake, spec({**SCALE, "durationSeconds": 600}))

    await drive(executor, timeout=10)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.BLACKOUT_BEGAN)
    assert "noon (12:00-12:30 UTC)" in status["message"]
    assert scale_writes(fake) == [0, 3]
    ended = datetime.fromisoformat(status["finishedAt"].replace("Z", "+00:00"))
    # Not before the blackout began; soon after (a generous band: the fast clock turns a
    # tenth of a second of a loaded machine into two seconds).
    assert NOON <= ended < NOON + timedelta(seconds=60)


async def test_a_run_picked_up_in_a_blackout_fails_and_attacks_nothing(
    fake: FakeApi,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    freeze = {"name": "freeze", "dates": around(clock())}
    fake.edit(SWITCHES, None, "default", {"spec": {"blackoutWindows": [freeze]}})
    executor, _ = start(fake, spec(SCALE))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.OUTSIDE_WINDOW)
    assert "blackout window freeze (" in status["message"]
    assert scale_writes(fake) == []


async def test_the_idle_wait_ends_when_the_next_blackout_begins(
    fake: FakeApi,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor_module, "MAX_IDLE", 1.0)  # the operator's own
    executor, _ = start(fake, spec(SCALE))
    assert await executor.pick_up()
    assert executor.idle_for(NOON) == 1.0
    executor.next_blackout = NOON + timedelta(seconds=0.3)
    assert executor.idle_for(NOON) == 0.3
