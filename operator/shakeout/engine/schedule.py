"""When a scheduled Experiment falls due, and what to do about it. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from shakeout.api.experiment import schedule_error

# A run that fell due longer ago than this (the operator was down) is not started late:
# chaos at an unexpected hour is worse than a missed run.
STARTING_DEADLINE = timedelta(seconds=60)


def latest_due(cron: str, time_zone: str, now: datetime) -> datetime:
    """The most recent instant at or before `now` at which the schedule fell due."""
    local = now.astimezone(ZoneInfo(time_zone))
    it = croniter(cron, local + timedelta(microseconds=1))
    prev: datetime = it.get_prev(datetime)
    return prev


@dataclass(frozen=True)
class ScheduleDecision:
    due: datetime
    create: bool  # False: the due time is recorded as passed, no run is created


def decide_schedule(
    cron: str,
    time_zone: str,
    last_schedule_time: datetime | None,
    created: datetime,
    now: datetime,
) -> ScheduleDecision | None:
    """Create a run for a fresh due time; skip one that is stale; else nothing."""
    due = latest_due(cron, time_zone, now)
    if due <= (last_schedule_time or created):
        return None
    return ScheduleDecision(due=due, create=now - due <= STARTING_DEADLINE)


def run_name(experiment: str, due: datetime) -> str:
    """Deterministic per due time, so that a retried create cannot make a second run."""
    stamp = due.astimezone(ZoneInfo("UTC")).strftime("%Y%m%d-%H%M")
    return f"{experiment[: 253 - len(stamp) - 1]}-{stamp}"


def runs_to_prune(finished: list[tuple[str, str]], history_limit: int) -> list[str]:
    """Names of the oldest finished runs beyond the limit; items are (created, name)."""
    ordered = sorted(finished)
    return [name for _, name in ordered[: max(0, len(ordered) - history_limit)]]


__all__ = [
    "ScheduleDecision",
    "decide_schedule",
    "latest_due",
    "run_name",
    "runs_to_prune",
    "schedule_error",
]
