"""Setting conditions the Kubernetes way (as meta.SetStatusCondition does in Go)."""

from __future__ import annotations

from datetime import datetime

from shakeout.api.common import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    *,
    type: str,  # noqa: A002  (the Kubernetes field name)
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with the condition set.

    lastTransitionTime changes only when the status does: a condition that stays True
    while its message changes keeps the time it became True.
    """
    old = find(conditions, type)
    changed = old is None or old.status != status
    new = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type else c for c in conditions]


def find(conditions: list[Condition], type: str) -> Condition | None:  # noqa: A002
    return next((c for c in conditions if c.type == type), None)
