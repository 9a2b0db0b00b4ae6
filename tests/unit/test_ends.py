"""A run being stopped keeps the end it was stopped into, across an operator restart."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import ExperimentRunStatus, Phase
from shakeout.engine.ends import STOPPING_ENDS, begin_end, pending_end
from shakeout.engine.runs import Reason, Transition, enter, initial_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [{"name": "kill", "type": "PodDelete"}],
    }
)


def started() -> ExperimentRunStatus:
    status = initial_status(SPEC, T0, 1)
    for phase, reason in (
        (Phase.PREPARED, Reason.PREPARED),
        (Phase.ATTACKS_STARTED, Reason.ATTACKS_STARTED),
    ):
        status = enter(status, Transition(phase, reason, "on"), T0, 1)
    return status


@pytest.mark.parametrize(("reason", "phase"), sorted(STOPPING_ENDS.items()))
def test_a_journaled_end_is_finished_after_a_restart(reason: Reason, phase: Phase) -> None:
    status = started()
    end = Transition(phase, reason, "why", rollback=True)
    journaled = begin_end(status, end)
    assert journaled.phase == Phase.ATTACKS_STARTED  # the phase waits for the rollback
    assert pending_end(journaled) == end
    assert pending_end(status) is None  # the input is unchanged


def test_every_end_with_a_rollback_is_journaled_in_its_own_phase() -> None:
    assert STOPPING_ENDS[Reason.CANCELED] == Phase.CANCELED
    assert STOPPING_ENDS[Reason.STOPPED_ALL] == Phase.CANCELED
    assert STOPPING_ENDS[Reason.RUN_DELETED] == Phase.CANCELED
    assert STOPPING_ENDS[Reason.STATE_CHECK_FAILED] == Phase.FAILED
    assert STOPPING_ENDS[Reason.ATTACK_FAILED] == Phase.FAILED


@pytest.mark.parametrize(
    "reason", [Reason.ATTACKS_STARTED, Reason.PREPARATION_TIMED_OUT, Reason.NO_TARGETS]
)
def test_other_reasons_are_not_a_pending_end(reason: Reason) -> None:
    status = started().model_copy(update={"reason": reason})
    assert pending_end(status) is None


def test_a_finished_run_has_no_pending_end() -> None:
    status = enter(
        started(),
        Transition(Phase.FAILED, Reason.STATE_CHECK_FAILED, "x", rollback=True),
        T0,
        1,
    )
    assert pending_end(status) is None


def test_a_long_message_is_cut_to_its_field() -> None:
    end = Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, "x" * 10_000, rollback=True)
    assert len(begin_end(started(), end).message or "") == 4096
