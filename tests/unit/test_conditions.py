from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shakeout.api.common import ConditionStatus
from shakeout.engine.conditions import find, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_transition_time_moves_only_when_status_changes() -> None:
    conds = set_condition(
        [], type="Ready", status=ConditionStatus.TRUE, reason="A", message="m", now=T0, generation=1
    )
    later = T0 + timedelta(minutes=1)
    conds = set_condition(
        conds,
        type="Ready",
        status=ConditionStatus.TRUE,
        reason="B",
        message="n",
        now=later,
        generation=2,
    )
    ready = find(conds, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0
    assert (ready.reason, ready.message, ready.observed_generation) == ("B", "n", 2)
    conds = set_condition(
        conds,
        type="Ready",
        status=ConditionStatus.FALSE,
        reason="C",
        message="",
        now=later,
        generation=2,
    )
    ready = find(conds, "Ready")
    assert ready is not None
    assert ready.last_transition_time == later
    assert len(conds) == 1


def test_other_conditions_are_kept() -> None:
    conds = set_condition(
        [], type="A", status=ConditionStatus.TRUE, reason="R", message="", now=T0, generation=None
    )
    conds = set_condition(
        conds,
        type="B",
        status=ConditionStatus.FALSE,
        reason="R",
        message="",
        now=T0,
        generation=None,
    )
    assert [c.type for c in conds] == ["A", "B"]
