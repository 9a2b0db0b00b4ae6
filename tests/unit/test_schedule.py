from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shakeout.api.experiment import Schedule, schedule_error
from shakeout.engine.schedule import decide_schedule, latest_due, run_name, runs_to_prune

CREATED = datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC)


def test_latest_due_in_a_time_zone() -> None:
    now = datetime(2026, 6, 1, 1, 30, tzinfo=UTC)  # 03:30 in Berlin (summer time)
    due = latest_due("0 3 * * *", "Europe/Berlin", now)
    assert due.astimezone(UTC) == datetime(2026, 6, 1, 1, 0, tzinfo=UTC)


def test_fresh_due_time_creates_a_run_once() -> None:
    now = datetime(2026, 3, 1, 0, 5, 10, tzinfo=UTC)
    decision = decide_schedule("*/5 * * * *", "UTC", None, CREATED, now)
    assert decision is not None
    assert decision.create
    assert decision.due == datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    assert decide_schedule("*/5 * * * *", "UTC", decision.due, CREATED, now) is None


def test_a_stale_due_time_is_not_caught_up() -> None:
    now = datetime(2026, 3, 1, 0, 9, 0, tzinfo=UTC)  # 4 minutes after 00:05
    decision = decide_schedule("*/5 * * * *", "UTC", None, CREATED, now)
    assert decision is not None
    assert not decision.create


def test_nothing_before_the_first_due_time_after_creation() -> None:
    now = CREATED + timedelta(seconds=10)
    assert decide_schedule("*/5 * * * *", "UTC", None, CREATED, now) is None


@pytest.mark.parametrize(
    ("cron", "tz", "words"),
    [
        ("61 * * * *", "UTC", "invalid cron"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
        # Valid syntax that never falls due: every look at it would fail.
        ("0 0 31 2 *", "UTC", "never falls due"),
        ("0 0 30 2 *", "Europe/Berlin", "never falls due"),
    ],
)
def test_bad_schedules_are_refused(cron: str, tz: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Schedule(cron=cron, time_zone=tz)


def test_run_names_are_deterministic_and_pruning_keeps_the_newest() -> None:
    due = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    assert run_name("nightly", due) == "nightly-20260301-0300"
    finished = [("2026-03-03", "c"), ("2026-03-01", "a"), ("2026-03-02", "b")]
    assert runs_to_prune(finished, 2) == ["a"]
    assert runs_to_prune(finished, 5) == []


def test_a_schedule_that_falls_due_only_in_leap_years_is_accepted() -> None:
    assert schedule_error("0 0 29 2 *", "UTC") is None
