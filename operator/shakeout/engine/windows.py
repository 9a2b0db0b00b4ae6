"""Time windows: whether an instant falls in one, which blackout is in force, whether a run
may start inside an Experiment's allowed windows, and when the next blackout begins.

Pure: every function takes the instant it decides about (an aware datetime); nothing here
reads a clock.

A window is read in local wall-clock time of its time zone (api/windows.py): the local
date, weekday and time of day of the instant decide. What that means when the clocks
change (daylight saving time):

* a gap (spring forward: 02:00-03:00 does not exist): a window that opens inside the gap
  opens when the gap ends (02:30-04:00 covers 03:00-04:00 that day); a window wholly
  inside the gap covers nothing that day;
* a fold (fall back: 02:00-03:00 happens twice): a window covers both passes of the
  repeated hour (02:00-02:30 covers 02:00-02:30 of the first and of the second pass).

An endTime at or before the startTime spans midnight, and the dates and days then name the
day the night starts: `days: [Fri], startTime: 22:00, endTime: 06:00` covers Friday 22:00
to Saturday 06:00.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shakeout.api.windows import TimeWindow, Weekday

WEEKDAYS = tuple(Weekday)  # Mon..Sun, in date.weekday() order
MINUTES_PER_DAY = 24 * 60
# How far ahead the next blackout's start is looked for: a week and a day covers every
# weekly window; a dated one further away is found when it comes closer.
HORIZON_DAYS = 8
# Dates listed one by one in a window's description; more are counted.
SHOWN_DATES = 4


def _minutes(clock: str) -> int:
    """Minutes since local midnight of HH:MM (24:00 is 1440)."""
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _zone(window: TimeWindow) -> ZoneInfo:
    return ZoneInfo(window.time_zone)  # validated by the model; ZoneInfo caches it


def covers_day(window: TimeWindow, day: date) -> bool:
    """Whether the window's dates and days (those given) include the local date `day`."""
    if window.dates is not None and day.isoformat() not in window.dates:
        return False
    return window.days is None or WEEKDAYS[day.weekday()] in window.days


def in_window(window: TimeWindow, instant: datetime) -> bool:
    """Whether the instant (aware) falls in the window, read in the window's wall clock."""
    local = instant.astimezone(_zone(window))
    day = local.date()
    if window.start_time is None or window.end_time is None:
        return covers_day(window, day)
    minute = local.hour * 60 + local.minute + local.second / 60
    start, end = _minutes(window.start_time), _minutes(window.end_time)
    if start < end:
        return covers_day(window, day) and start <= minute < end
    # Spans midnight: the night that starts on a covered day, or the end of the one that
    # started the day before.
    if minute >= start and covers_day(window, day):
        return True
    return minute < end and covers_day(window, day - timedelta(days=1))


def blackout_in_force(windows: Sequence[TimeWindow], now: datetime) -> TimeWindow | None:
    """The first of the blackout windows that covers `now`, or None."""
    return next((w for w in windows if in_window(w, now)), None)


def allowed_now(windows: Sequence[TimeWindow], now: datetime) -> bool:
    """Whether a run may start now by an Experiment's allowed windows: inside one of them,
    or at any time when it has none."""
    return not windows or any(in_window(w, now) for w in windows)


def _days(days: Sequence[Weekday]) -> str:
    """Mon, Wed, Thu, Fri as "Mon, Wed-Fri": runs of consecutive days (in week order)."""
    indexes = sorted({WEEKDAYS.index(Weekday(d)) for d in days})
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(_run(r) for r in runs)


def _run(run: list[int]) -> str:
    """Three or more consecutive days as a range, fewer one by one."""
    if len(run) >= 3:
        return f"{WEEKDAYS[run[0]].value}-{WEEKDAYS[run[-1]].value}"
    return ", ".join(WEEKDAYS[i].value for i in run)


def describe(window: TimeWindow) -> str:
    """The window for people: "xmas (2026-12-24, 2026-12-25, Europe/Berlin)",
    "business-hours (Mon-Fri 09:00-17:00 Europe/Berlin)"."""
    items: list[str] = []
    if window.dates is not None:
        items.extend(window.dates[:SHOWN_DATES])
        if (more := len(window.dates) - SHOWN_DATES) > 0:
            items.append(f"and {more} more dates")
    when = []
    if window.days is not None:
        when.append(_days(window.days))
    if window.start_time is not None and window.end_time is not None:
        when.append(f"{window.start_time}-{window.end_time}")
    when.append(window.time_zone)
    items.append(" ".join(when))
    return f"{window.name} ({', '.join(items)})"


def _first_at_or_after(wall: datetime, zone: ZoneInfo, fold: int) -> datetime:
    """The first instant whose local wall time is `wall` or later: the instant of `wall`
    (of the pass `fold` in a fold), or when `wall` falls in a gap, the gap's end."""
    instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # In a gap: fold 1 reads the wall time with the offset after the change, so that
    # instant is before the gap, fold 0's after it; the gap's end lies between.
    low, high = sorted(wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    # The change lies in (low, high], at most a second long; changes fall on whole
    # seconds, so it is the whole second at or before `high`.
    whole = high.replace(microsecond=0)
    return whole if whole > low else high


def window_starts(window: TimeWindow, now: datetime, days: int = HORIZON_DAYS) -> list[datetime]:
    """The instants after `now`, within `days` days, at which the window begins to cover
    (it did not cover the second before), in order."""
    zone = _zone(window)
    today = now.astimezone(zone).date()
    opens = time.fromisoformat(window.start_time) if window.start_time else time(0, 0)
    starts: set[datetime] = set()
    for offset in range(-1, days + 1):
        day = today + timedelta(days=offset)
        if not covers_day(window, day):
            continue
        wall = datetime.combine(day, opens)
        for fold in (0, 1):
            start = _first_at_or_after(wall, zone, fold)
            if (
                now < start <= now + timedelta(days=days)
                and in_window(window, start)
                and not in_window(window, start - timedelta(seconds=1))
            ):
                starts.add(start)
    return sorted(starts)


def next_blackout(
    windows: Sequence[TimeWindow], now: datetime, days: int = HORIZON_DAYS
) -> tuple[datetime, TimeWindow] | None:
    """When the next blackout begins after `now` (within `days` days), and which; None
    when none does."""
    found = [(start, w) for w in windows for start in window_starts(w, now, days)[:1]]
    return min(found, key=lambda pair: pair[0]) if found else None
