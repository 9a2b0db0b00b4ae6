"""How a run that is being stopped ends, across an operator restart."""

from __future__ import annotations

from shakeout.api.run import ExperimentRunStatus, Phase
from shakeout.engine.runs import MESSAGE_LIMIT, Reason, Transition, is_terminal

# The ends a run can be stopped into (every one of them with a rollback first), and the
# phase each ends in.
STOPPING_ENDS: dict[Reason, Phase] = {
    Reason.RUN_DELETED: Phase.CANCELED,
    Reason.STOPPED_ALL: Phase.CANCELED,
    Reason.CANCELED: Phase.CANCELED,
    Reason.BLACKOUT_BEGAN: Phase.CANCELED,
    Reason.OPERATOR_SHUTDOWN: Phase.FAILED,
    Reason.ROLLBACK_FAILED: Phase.FAILED,
    Reason.ATTACK_FAILED: Phase.FAILED,
    Reason.AGENT_DISCONNECTED: Phase.FAILED,
    Reason.STATE_CHECK_FAILED: Phase.FAILED,
    Reason.STATE_CHECK_NOT_EVALUATED: Phase.FAILED,
}


def begin_end(status: ExperimentRunStatus, transition: Transition) -> ExperimentRunStatus:
    """The status of a run that is being stopped into `transition`'s end, written before
    its attacks are rolled back: the phase stays, the reason and message are the end's,
    so that an operator restarted during the rollback finishes the same end
    (`pending_end`) instead of deciding afresh (a state check that failed may pass now)."""
    new = status.model_copy(deep=True)
    new.reason = transition.reason
    new.message = transition.message[:MESSAGE_LIMIT]
    return new


def pending_end(status: ExperimentRunStatus) -> Transition | None:
    """The end a live run was being stopped into when its operator stopped, if any."""
    if status.phase is None or is_terminal(status.phase) or status.reason is None:
        return None
    try:
        reason = Reason(status.reason)
    except ValueError:
        return None
    phase = STOPPING_ENDS.get(reason)
    if phase is None:
        return None
    return Transition(phase, reason, status.message or "", rollback=True)
