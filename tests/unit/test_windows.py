"""Time windows, table-driven: whether an instant falls in one (time zones, dates, days,
spans over midnight, 24:00, daylight saving gaps and folds), the blackout in force, an
Experiment's allowed windows, their descriptions, when the next blackout begins; and what
the preconditions and the run engine make of them. No cluster, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import Phase
from shakeout.api.switch import ChaosSwitchSpec, describe_change, history_entry
from shakeout.api.windows import TimeWindow
from shakeout.engine.ends import pending_end
from shakeout.engine.policies import NamespaceFacts
from shakeout.engine.preconditions import (
    ADMISSION,
    ATTACK_START,
    PICKUP,
    PREVIEW,
    RunFacts,
    evaluate,
    inside_allowed_window,
    outside_blackout,
)
from shakeout.engine.runs import Observation, Reason, decide, enter, initial_status
from shakeout.engine.targets import Selection
from shakeout.engine.windows import (
    allowed_now,
    blackout_in_force,
    describe,
    in_window,
    next_blackout,
    window_starts,
)


def window(name: str = "w", **fields: Any) -> TimeWindow:
    return TimeWindow.model_validate({"name": name, **fields})


def at(iso: str) -> datetime:
    """An instant, written in UTC."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


BUSINESS = window(
    "business-hours",
    timeZone="Europe/Berlin",
    days=["Mon", "Tue", "Wed", "Thu", "Fri"],
    startTime="09:00",
    endTime="17:00",
)
XMAS = window("xmas", timeZone="Europe/Berlin", dates=["2026-12-24", "2026-12-25"])
FRIDAY_NIGHT = window("friday-night", days=["Fri"], startTime="22:00", endTime="06:00")
EVENING = window("evening", startTime="18:00", endTime="24:00")
WHOLE_DAY = window("whole-day", startTime="00:00", endTime="24:00")
MONDAY_DAY = window("monday", days=["Mon"], startTime="09:00", endTime="09:00")
NEW_YEAR_NIGHT = window("nye", dates=["2026-12-31"], startTime="22:00", endTime="02:00")
# 2026-03-29 02:00-03:00 does not exist in Berlin; 2026-10-25 02:00-03:00 happens twice.
INTO_GAP = window("into-gap", timeZone="Europe/Berlin", startTime="02:30", endTime="04:00")
IN_GAP = window("in-gap", timeZone="Europe/Berlin", startTime="02:00", endTime="02:30")
NEW_YORK_MONDAY = window("ny-monday", timeZone="America/New_York", days=["Mon"])
KOLKATA = window("kolkata", timeZone="Asia/Kolkata", startTime="09:00", endTime="17:00")
WEEKEND = window("weekend", days=["Sat", "Sun"])

# 2026-11-30 is a Monday.
IN_WINDOW_CASES = [
    (BUSINESS, "2026-11-30T08:00:00", True, "09:00 CET opens it (inclusive)"),
    (BUSINESS, "2026-11-30T15:59:59", True, "16:59:59 CET"),
    (BUSINESS, "2026-11-30T16:00:00", False, "17:00 CET closes it (exclusive)"),
    (BUSINESS, "2026-11-30T07:59:59", False, "before 09:00 CET"),
    (BUSINESS, "2026-11-28T10:00:00", False, "a Saturday"),
    (BUSINESS, "2026-07-01T07:00:00", True, "09:00 CEST in summer: 07:00 UTC"),
    (XMAS, "2026-12-23T23:00:00", True, "the local date counts: 00:00 on the 24th in Berlin"),
    (XMAS, "2026-12-23T22:59:59", False, "still the 23rd in Berlin"),
    (XMAS, "2026-12-25T22:59:59", True, "the last second of the 25th in Berlin"),
    (XMAS, "2026-12-25T23:00:00", False, "the 26th in Berlin"),
    (FRIDAY_NIGHT, "2026-11-27T22:00:00", True, "Friday 22:00 opens the night"),
    (FRIDAY_NIGHT, "2026-11-28T05:59:59", True, "Saturday morning: Friday's night"),
    (FRIDAY_NIGHT, "2026-11-28T06:00:00", False, "the night ends at 06:00"),
    (FRIDAY_NIGHT, "2026-11-28T22:00:00", False, "Saturday's night is not covered"),
    (FRIDAY_NIGHT, "2026-11-27T05:00:00", False, "Friday morning is Thursday's night"),
    (FRIDAY_NIGHT, "2026-11-27T21:59:59", False, "Friday evening before 22:00"),
    (EVENING, "2026-11-30T18:00:00", True, "18:00 opens it"),
    (EVENING, "2026-11-30T23:59:59", True, "24:00 is the end of the day"),
    (EVENING, "2026-12-01T00:00:00", False, "midnight closes it"),
    (WHOLE_DAY, "2026-11-30T00:00:00", True, "00:00-24:00 is every instant"),
    (WHOLE_DAY, "2026-11-30T23:59:59", True, "00:00-24:00 is every instant"),
    (MONDAY_DAY, "2026-11-30T09:00:00", True, "equal times span 24 hours from Monday 09:00"),
    (MONDAY_DAY, "2026-12-01T08:59:59", True, "to Tuesday 08:59:59"),
    (MONDAY_DAY, "2026-12-01T09:00:00", False, "Tuesday 09:00 ends it"),
    (MONDAY_DAY, "2026-11-30T08:59:59", False, "Monday morning is Sunday's span"),
    (NEW_YEAR_NIGHT, "2027-01-01T01:00:00", True, "a dated night goes on into the next date"),
    (NEW_YEAR_NIGHT, "2026-12-31T01:00:00", False, "the morning of the date is not its night"),
    (INTO_GAP, "2026-03-29T00:59:59", False, "01:59:59 CET, before the gap"),
    (INTO_GAP, "2026-03-29T01:00:00", True, "03:00 CEST: the window opens when the gap ends"),
    (INTO_GAP, "2026-03-29T01:59:59", True, "03:59:59 CEST"),
    (INTO_GAP, "2026-03-29T02:00:00", False, "04:00 CEST"),
    (IN_GAP, "2026-03-29T00:59:59", False, "a window wholly in the gap covers nothing"),
    (IN_GAP, "2026-03-29T01:00:00", False, "a window wholly in the gap covers nothing"),
    (IN_GAP, "2026-03-30T00:15:00", True, "02:15 CEST the next day"),
    (IN_GAP, "2026-10-25T00:00:00", True, "02:00 CEST, the first pass of the fold"),
    (IN_GAP, "2026-10-25T00:30:00", False, "02:30 CEST"),
    (IN_GAP, "2026-10-25T01:00:00", True, "02:00 CET, the second pass of the fold"),
    (IN_GAP, "2026-10-25T01:29:59", True, "02:29:59 CET"),
    (IN_GAP, "2026-10-25T01:30:00", False, "02:30 CET"),
    (NEW_YORK_MONDAY, "2026-12-01T03:00:00", True, "Tuesday in UTC, Monday 22:00 in New York"),
    (NEW_YORK_MONDAY, "2026-11-30T04:59:59", False, "Monday in UTC, Sunday in New York"),
    (KOLKATA, "2026-11-30T03:30:00", True, "09:00 IST (UTC+05:30)"),
    (KOLKATA, "2026-11-30T03:29:59", False, "08:59:59 IST"),
]


@pytest.mark.parametrize(
    ("win", "instant", "covered", "why"),
    IN_WINDOW_CASES,
    ids=[f"{w.name}-{i}" for w, i, _, _ in IN_WINDOW_CASES],
)
def test_in_window(win: TimeWindow, instant: str, covered: bool, why: str) -> None:
    assert in_window(win, at(instant)) is covered, why


def test_blackout_in_force_is_the_first_covering_window() -> None:
    now = at("2026-12-24T10:00:00")  # a Thursday, 11:00 in Berlin
    assert blackout_in_force([FRIDAY_NIGHT, XMAS, BUSINESS], now) == XMAS
    assert blackout_in_force([FRIDAY_NIGHT], now) is None
    assert blackout_in_force([], now) is None


@pytest.mark.parametrize(
    ("windows", "instant", "allowed", "why"),
    [
        ([], "2026-12-24T10:00:00", True, "no allowed windows: any time"),
        ([BUSINESS], "2026-11-30T10:00:00", True, "inside the only window"),
        ([BUSINESS], "2026-11-30T20:00:00", False, "outside the only window"),
        ([BUSINESS, FRIDAY_NIGHT], "2026-11-27T23:00:00", True, "inside the second window"),
        ([BUSINESS, FRIDAY_NIGHT], "2026-11-28T12:00:00", False, "outside both"),
    ],
)
def test_allowed_now(windows: list[TimeWindow], instant: str, allowed: bool, why: str) -> None:
    assert allowed_now(windows, at(instant)) is allowed, why


@pytest.mark.parametrize(
    ("win", "text"),
    [
        (XMAS, "xmas (2026-12-24, 2026-12-25, Europe/Berlin)"),
        (BUSINESS, "business-hours (Mon-Fri 09:00-17:00 Europe/Berlin)"),
        (FRIDAY_NIGHT, "friday-night (Fri 22:00-06:00 UTC)"),
        (WEEKEND, "weekend (Sat, Sun UTC)"),
        (window("odd", days=["Fri", "Mon", "Wed", "Thu"]), "odd (Mon, Wed-Fri UTC)"),
        (EVENING, "evening (18:00-24:00 UTC)"),
        (
            window("freeze", dates=[f"2026-12-{d}" for d in range(20, 26)]),
            "freeze (2026-12-20, 2026-12-21, 2026-12-22, 2026-12-23, and 2 more dates, UTC)",
        ),
    ],
)
def test_describe(win: TimeWindow, text: str) -> None:
    assert describe(win) == text


@pytest.mark.parametrize(
    ("win", "now", "starts", "why"),
    [
        (BUSINESS, "2026-11-30T12:00:00", ["2026-12-01T08:00:00"], "inside: the next day's"),
        (BUSINESS, "2026-11-28T12:00:00", ["2026-11-30T08:00:00"], "Saturday: Monday's"),
        (BUSINESS, "2026-11-30T08:00:00", ["2026-12-01T08:00:00"], "a start at now is not next"),
        (FRIDAY_NIGHT, "2026-11-27T12:00:00", ["2026-11-27T22:00:00"], "the night's start"),
        (INTO_GAP, "2026-03-28T12:00:00", ["2026-03-29T01:00:00"], "the end of the gap"),
        (
            window("late-in-gap", timeZone="Europe/Berlin", startTime="02:47", endTime="04:00"),
            "2026-03-28T12:00:00",
            ["2026-03-29T01:00:00", "2026-03-30T00:47:00"],
            "the end of the gap to the second, wherever in the gap the window opens",
        ),
        (
            window("lord-howe", timeZone="Australia/Lord_Howe", startTime="02:07", endTime="04:00"),
            "2026-10-03T00:00:00",
            ["2026-10-03T15:30:00", "2026-10-04T15:07:00"],
            "a half-hour change: 02:00 (+10:30) becomes 02:30 (+11:00)",
        ),
        (IN_GAP, "2026-03-28T12:00:00", ["2026-03-30T00:00:00"], "the gap day has none"),
        (
            IN_GAP,
            "2026-10-24T12:00:00",
            ["2026-10-25T00:00:00", "2026-10-25T01:00:00"],
            "both passes of the fold",
        ),
        (WEEKEND, "2026-11-28T12:00:00", ["2026-12-05T00:00:00"], "Sunday goes on Saturday"),
        (XMAS, "2026-12-20T12:00:00", ["2026-12-23T23:00:00"], "a date, in its time zone"),
        (MONDAY_DAY, "2026-11-30T12:00:00", ["2026-12-07T09:00:00"], "a week on"),
    ],
)
def test_window_starts(win: TimeWindow, now: str, starts: list[str], why: str) -> None:
    found = window_starts(win, at(now))
    assert found[: len(starts)] == [at(s) for s in starts], why


def test_window_starts_look_no_further_than_the_horizon() -> None:
    assert window_starts(XMAS, at("2026-11-30T12:00:00")) == []
    assert window_starts(BUSINESS, at("2026-12-04T18:00:00"), days=1) == []


def test_next_blackout_is_the_earliest_start_and_names_its_window() -> None:
    now = at("2026-11-27T12:00:00")  # a Friday
    assert next_blackout([BUSINESS, FRIDAY_NIGHT, WEEKEND], now) == (
        at("2026-11-27T22:00:00"),
        FRIDAY_NIGHT,
    )
    assert next_blackout([XMAS], now) is None
    assert next_blackout([], now) is None


# -- the preconditions ---------------------------------------------------------------------

NOW = at("2026-12-24T10:00:00")
SPEC = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 10}],
    }
)
FACTS = RunFacts(
    namespace="team-a",
    experiment_name="web",
    namespace_facts=NamespaceFacts("team-a", {}),
    experiment=SPEC,
    switch=ChaosSwitchSpec(enabled=True),
    selection=Selection(matched=1, targets=("web-1",)),
    now=NOW,
)
IN_BLACKOUT = replace(
    FACTS, switch=ChaosSwitchSpec(enabled=True, blackout_windows=[FRIDAY_NIGHT, XMAS])
)
OUTSIDE_ALLOWED = replace(
    FACTS, experiment=SPEC.model_copy(update={"allowed_windows": [FRIDAY_NIGHT, WEEKEND]})
)
CHAINS = {"admission": ADMISSION, "pickup": PICKUP, "attack-start": ATTACK_START}


@pytest.mark.parametrize("chain", [*CHAINS.values(), PREVIEW])
def test_a_blackout_refuses_at_every_point_naming_the_window(chain: Any) -> None:
    refusal = evaluate(chain, IN_BLACKOUT)
    assert refusal is not None
    assert refusal.reason == Reason.OUTSIDE_WINDOW
    assert "blackout window xmas (2026-12-24, 2026-12-25, Europe/Berlin)" in refusal.message
    assert "spec.blackoutWindows" in refusal.message


@pytest.mark.parametrize("chain", [ADMISSION, PICKUP, PREVIEW])
def test_outside_the_allowed_windows_is_refused_naming_them(chain: Any) -> None:
    refusal = evaluate(chain, OUTSIDE_ALLOWED)
    assert refusal is not None
    assert refusal.reason == Reason.OUTSIDE_WINDOW
    assert "now (2026-12-24 10:00 UTC) is outside every allowed window" in refusal.message
    assert "friday-night (Fri 22:00-06:00 UTC); weekend (Sat, Sun UTC)" in refusal.message


def test_allowed_windows_gate_the_start_only() -> None:
    # A run that started inside its window and warmed up past its end still attacks.
    assert evaluate(ATTACK_START, OUTSIDE_ALLOWED) is None
    assert inside_allowed_window(OUTSIDE_ALLOWED) is not None


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (FACTS, "no windows at all"),
        (replace(IN_BLACKOUT, now=at("2026-12-23T10:00:00")), "no blackout covers the 23rd"),
        (replace(OUTSIDE_ALLOWED, now=at("2026-11-28T10:00:00")), "inside the weekend window"),
        (replace(IN_BLACKOUT, now=None), "no instant gathered: windows are not checked"),
        (replace(OUTSIDE_ALLOWED, now=None), "no instant gathered: windows are not checked"),
        (replace(OUTSIDE_ALLOWED, experiment=None), "no Experiment: no allowed windows"),
    ],
)
def test_windows_that_do_not_refuse(facts: RunFacts, why: str) -> None:
    assert outside_blackout(facts) is None, why
    assert inside_allowed_window(facts) is None, why
    for chain in CHAINS.values():
        assert evaluate(chain, facts) is None, why


# -- a run going when a blackout begins ------------------------------------------------------


def observe(phase: Phase, **changes: Any) -> Observation:
    return Observation(now=NOW, phase=phase, phase_entered=NOW, experiment=SPEC, **changes)


@pytest.mark.parametrize(
    "phase", [Phase.CREATED, Phase.PREPARED, Phase.ATTACKS_STARTED, Phase.ATTACKS_STOPPED]
)
def test_a_blackout_cancels_a_live_run_with_rollback(phase: Phase) -> None:
    transition = decide(observe(phase, blackout=describe(XMAS)))
    assert transition is not None
    assert (transition.phase, transition.reason) == (Phase.CANCELED, Reason.BLACKOUT_BEGAN)
    assert transition.rollback
    assert "blackout window xmas (2026-12-24, 2026-12-25, Europe/Berlin)" in transition.message
    assert "rolled back" in transition.message


def test_a_users_cancel_and_stop_all_come_first_and_a_finished_run_stays() -> None:
    both = observe(Phase.ATTACKS_STARTED, blackout=describe(XMAS), cancel_requested=True)
    assert (found := decide(both)) is not None
    assert found.reason == Reason.CANCELED
    stop_all = observe(Phase.ATTACKS_STARTED, blackout=describe(XMAS), switch_enabled=False)
    assert (found := decide(stop_all)) is not None
    assert found.reason == Reason.STOPPED_ALL
    assert decide(observe(Phase.CANCELED, blackout=describe(XMAS))) is None


def test_a_blackout_end_survives_a_restart() -> None:
    # The end is written before the rollback (ends.begin_end): a restarted operator
    # finishes it as BlackoutBegan, even if the blackout is over by then.
    transition = decide(observe(Phase.ATTACKS_STARTED, blackout=describe(XMAS)))
    assert transition is not None
    status = initial_status(SPEC, NOW, 1)
    status = status.model_copy(update={"reason": transition.reason, "message": "m"})
    end = pending_end(status)
    assert end is not None
    assert (end.phase, end.reason, end.rollback) == (Phase.CANCELED, Reason.BLACKOUT_BEGAN, True)
    assert enter(status, end, NOW + timedelta(seconds=1), 1).phase == Phase.CANCELED


# -- the switch's history ----------------------------------------------------------------------


def test_the_switch_history_names_blackout_windows_added_and_removed() -> None:
    windows = [{"name": "xmas", "timeZone": "Europe/Berlin", "dates": ["2026-12-24"]}]
    plain = {"enabled": True}
    frozen = {"enabled": True, "blackoutWindows": windows}

    def body(generation: int, spec: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        last = {"generation": generation - 1, "by": "admin", "enabled": True, "spec": before}
        return {
            "metadata": {"name": "default", "generation": generation},
            "spec": spec,
            "status": {"history": [last]},
        }

    added = history_entry(body(2, frozen, plain), NOW)
    assert added is not None
    assert (added.rails, added.enabled_changed) == (["blackoutWindows"], False)
    assert added.spec.blackout_windows[0].name == "xmas"
    assert describe_change(added).startswith("rails changed: blackoutWindows")
    removed = history_entry(body(3, plain, frozen), NOW)
    assert removed is not None
    assert removed.rails == ["blackoutWindows"]
    empty = history_entry(body(4, {"enabled": True, "blackoutWindows": []}, plain), NOW)
    assert empty is not None
    assert empty.rails == []  # an empty list is the default, not a rail set
