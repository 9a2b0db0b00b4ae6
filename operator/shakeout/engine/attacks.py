"""The lifecycle of a run's attacks, decided without I/O.

    PENDING ──▶ APPLYING ──▶ APPLIED ──▶ ROLLING_BACK ──▶ ROLLED_BACK   (reversible)
       │           │  │         │              │
       │           │  │         └──────────────┼──────▶ COMPLETED       (irreversible)
       │           │  └──▶ FAILED (apply)      └──▶ FAILED (rollback)
       ├──▶ SKIPPED (stopped before it started)
       └──▶ SIMULATING ──▶ SIMULATED                                   (a dry run)

A dry run's attack goes from PENDING to SIMULATING (`begin_simulation`: journaled with what
it would do, never applied) and, when its duration is over or the run stops, to SIMULATED.
Neither is an open state: nothing ever applies, re-applies or rolls back such an attack,
whatever restarts in between (`resume` and `stop_actions` leave the cluster alone for
them), so a dry run cannot touch the cluster even with a flag lost or changed.

A stop takes an APPLYING attack where it takes an APPLIED one; a restart takes a
ROLLING_BACK attack back to APPLIED, to be rolled back again (see `resume`).

Every function returns a new status and never changes the one it is given. A `begin_*`
status is written before the cluster is touched and a `record_*` status after: the
status is the journal that an operator restarted at any point resumes from (`resume`).
Durations come from the run's own snapshot of its Experiment, `status.experiment`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shakeout.api.common import ConditionStatus
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.labels import ConditionType
from shakeout.api.run import (
    MAX_ATTACK_TARGET_NAMES,
    AttackResult,
    AttackState,
    ExperimentRunStatus,
    Targets,
)
from shakeout.engine.conditions import find, set_condition

# Attacks that may still act on the cluster, or may be about to: a stop handles each one.
OPEN_STATES: frozenset[AttackState] = frozenset(
    {AttackState.PENDING, AttackState.APPLYING, AttackState.APPLIED, AttackState.ROLLING_BACK}
)
# Attacks whose window is open: due to stop when their duration is over.
_RUNNING: frozenset[AttackState] = frozenset({AttackState.APPLIED, AttackState.SIMULATING})
# A rollback is tried this many times in quick succession; if it still fails, it is
# pending (a condition says so) and retried every ROLLBACK_MAX_DELAY seconds at most,
# until it succeeds: a fault is never left in place because its rollback failed.
ROLLBACK_QUICK_ATTEMPTS = 5
ROLLBACK_MAX_DELAY = 30.0
# AttackResult.message's maxLength.
MESSAGE_LIMIT = 1024
# Fields that only the lifecycle sets: rollback data may set any other field of a result.
_LIFECYCLE_FIELDS = frozenset(
    {
        "name",
        "type",
        "reversible",
        "state",
        "targets",
        "applied_at",
        "rolled_back_at",
        "ended_at",
        "target_names",
        "message",
    }
)


class StopKind(StrEnum):
    """How an attack is stopped."""

    SKIP = "Skip"  # never started: nothing to undo
    CLOSE = "Close"  # irreversible: closed as Completed, there is nothing to undo
    ROLL_BACK = "RollBack"  # reversible: rolled back
    END_SIMULATION = "EndSimulation"  # a dry run's attack: its window closed, nothing to undo


@dataclass(frozen=True)
class StopAction:
    name: str
    kind: StopKind


@dataclass(frozen=True)
class ApplyOutcome:
    """What applying one attack did: how many targets it acted on, or why it failed."""

    name: str
    targets: int = 0
    error: str | None = None


def pending(experiment: ExperimentSpec) -> list[AttackResult]:
    """The results of a run just picked up: every attack of the Experiment PENDING."""
    return [
        AttackResult(name=a.name, type=a.type, reversible=a.reversible, state=AttackState.PENDING)
        for a in experiment.attacks
    ]


def begin_apply(
    status: ExperimentRunStatus,
    rollback_data: Mapping[str, Mapping[str, object]],
    targets: Targets | None,
    agents: Sequence[str],
    *,
    names: Collection[str] | None = None,
    attack_targets: Mapping[str, Sequence[str]] | None = None,
) -> ExperimentRunStatus:
    """The journal written before any attack is applied: every attack APPLYING with its
    rollback data (say, `previous_replicas`), the targets (None: as they are), and the
    run's node agents joined by `agents`.

    names: the attacks of one step (engine/steps.py), each of them still PENDING; None:
    every attack, and a status with any attack past PENDING is refused (attacks are
    applied once). attack_targets: each attack's own target pod names (the first
    MAX_ATTACK_TARGET_NAMES are kept, sorted).
    """
    if names is None:
        started = [r.name for r in status.attacks if r.state != AttackState.PENDING]
        if started:
            raise ValueError(f"attacks are applied once: {', '.join(started)} already started")
        names = [r.name for r in status.attacks]
    chosen = set(names)
    new = status.model_copy(deep=True)
    missing = chosen - {r.name for r in new.attacks}
    if missing:
        raise ValueError(f"the run has no attack {', '.join(sorted(missing))}")
    started = [r.name for r in new.attacks if r.name in chosen and r.state != AttackState.PENDING]
    if started:
        raise ValueError(f"attacks are applied once: {', '.join(started)} already started")
    unknown = set(rollback_data) - chosen
    if unknown:
        raise ValueError(f"rollback data for unknown attacks: {', '.join(sorted(unknown))}")
    own = attack_targets or {}
    for i, result in enumerate(new.attacks):
        if result.name not in chosen:
            continue
        data = dict(rollback_data.get(result.name, {}))
        bad = (set(data) & _LIFECYCLE_FIELDS) | (set(data) - set(AttackResult.model_fields))
        if bad:
            raise ValueError(f"not rollback data of {result.name}: {', '.join(sorted(bad))}")
        names_kept = sorted(own.get(result.name, ()))[:MAX_ATTACK_TARGET_NAMES]
        new.attacks[i] = AttackResult.model_validate(
            {
                **result.model_dump(),
                **data,
                "state": AttackState.APPLYING,
                "target_names": names_kept,
            }
        )
    if targets is not None:
        new.targets = targets.model_copy(deep=True)
    new.agents = sorted({*new.agents, *agents})
    return new


def begin_simulation(
    status: ExperimentRunStatus,
    rollback_data: Mapping[str, Mapping[str, object]],
    plans: Mapping[str, str],
    targets: Targets | None,
    agents: Sequence[str],
    *,
    now: datetime,
    names: Collection[str] | None = None,
    attack_targets: Mapping[str, Sequence[str]] | None = None,
) -> ExperimentRunStatus:
    """A dry run's journal at the start of its attacks: every attack SIMULATING from `now`
    (its window lasts its duration), with the rollback data a real run would journal
    (say, the nodes a cordon would take) and its plan, what it would do, as its message.
    Nothing is applied, now or after a restart: SIMULATING is not an open state.
    names, attack_targets: as for `begin_apply` (one step of the attacks)."""
    new = begin_apply(
        status, rollback_data, targets, agents, names=names, attack_targets=attack_targets
    )
    for i, result in enumerate(new.attacks):
        if result.state != AttackState.APPLYING:
            continue
        new.attacks[i] = result.model_copy(
            update={
                "state": AttackState.SIMULATING,
                "applied_at": now,
                "message": plans.get(result.name, "dry run: nothing applied")[:MESSAGE_LIMIT],
            }
        )
    return new


def record_applied(
    status: ExperimentRunStatus, outcomes: Sequence[ApplyOutcome], now: datetime
) -> tuple[ExperimentRunStatus, str | None]:
    """Each APPLYING attack of `outcomes` APPLIED (applied at `now` unless it already
    has a time, with its count of targets), or FAILED with the error. Also returns the
    first failure, as the run's failure message."""
    new = status.model_copy(deep=True)
    first = None
    for outcome in outcomes:
        i = _index(new, outcome.name, {AttackState.APPLYING})
        result = new.attacks[i]
        if outcome.error is None:
            changes: dict[str, object] = {
                "state": AttackState.APPLIED,
                "applied_at": result.applied_at or now,
                "targets": outcome.targets,
            }
        else:
            message = outcome.error[:MESSAGE_LIMIT]
            changes = {"state": AttackState.FAILED, "message": message}
            first = first or f"attack {outcome.name} failed: {message}"
        new.attacks[i] = result.model_copy(update=changes)
    return new, first


def failed_not_undone(result: AttackResult) -> bool:
    """A reversible attack that FAILED and was never rolled back: its apply failed, and it
    may have acted on some targets before the error (a write whose answer was lost,
    targets done before another was refused), so a stop rolls it back like an applied
    one (idempotent: it undoes nothing that was never applied)."""
    return (
        result.state == AttackState.FAILED and result.reversible and result.rolled_back_at is None
    )


def _stoppable(result: AttackResult) -> bool:
    return (
        result.state in OPEN_STATES
        or result.state == AttackState.SIMULATING
        or failed_not_undone(result)
    )


def _stop_kind(result: AttackResult) -> StopKind:
    if result.state == AttackState.PENDING:
        return StopKind.SKIP
    if result.state == AttackState.SIMULATING:
        return StopKind.END_SIMULATION
    return StopKind.ROLL_BACK if result.reversible else StopKind.CLOSE


def stop_actions(status: ExperimentRunStatus) -> list[StopAction]:
    """What stopping the run (cancel, Stop All, a failure, deletion, shutdown) does to
    each attack that may still act: a PENDING one is skipped, an irreversible one closed,
    a reversible one rolled back (an APPLYING, ROLLING_BACK or failed_not_undone one too: a
    rollback is idempotent and undoes nothing that was never applied), a dry run's
    SIMULATING one closed without touching anything."""
    return [StopAction(r.name, _stop_kind(r)) for r in status.attacks if _stoppable(r)]


def _experiment(status: ExperimentRunStatus) -> ExperimentSpec:
    if status.experiment is None:
        raise ValueError("the run has no snapshot of its Experiment (status.experiment)")
    return status.experiment


def _ends(status: ExperimentRunStatus) -> dict[str, datetime | None]:
    """When each APPLIED (or a dry run's SIMULATING) attack is due to stop: its duration
    after it was applied. One with no time of application is due at once (a fault never
    outlives its clock)."""
    durations = {a.name: a.duration_seconds for a in _experiment(status).attacks}
    return {
        r.name: r.applied_at + timedelta(seconds=durations.get(r.name, 0)) if r.applied_at else None
        for r in status.attacks
        if r.state in _RUNNING
    }


def due_actions(status: ExperimentRunStatus, now: datetime) -> list[StopAction]:
    """The APPLIED attacks whose duration is over: irreversible ones are closed,
    reversible ones rolled back; a dry run's SIMULATING ones closed as SIMULATED."""
    due = {name for name, end in _ends(status).items() if end is None or end <= now}
    return [StopAction(r.name, _stop_kind(r)) for r in status.attacks if r.name in due]


def next_due(status: ExperimentRunStatus, now: datetime) -> datetime | None:
    """When the next APPLIED attack is due to stop, after `now`; None if none is."""
    return min((end for end in _ends(status).values() if end and end > now), default=None)


def attacks_finished(status: ExperimentRunStatus) -> bool:
    """Whether the run may move on from its attacks: none is open (none still PENDING or
    APPLYING, none APPLIED or ROLLING_BACK, no dry run's SIMULATING one) and none FAILED
    (a failed attack fails the run instead: see `failure`)."""
    return all(
        r.state not in OPEN_STATES and r.state not in (AttackState.FAILED, AttackState.SIMULATING)
        for r in status.attacks
    )


def acted(status: ExperimentRunStatus) -> list[AttackResult]:
    """The attacks that may have touched the cluster: every one but those never started
    (PENDING, SKIPPED) and a dry run's (SIMULATING, SIMULATED). What a run cleans up after
    its end is theirs alone."""
    return [r for r in status.attacks if r.state not in _NEVER_ACTED]


_NEVER_ACTED: frozenset[AttackState] = frozenset(
    {AttackState.PENDING, AttackState.SKIPPED, AttackState.SIMULATING, AttackState.SIMULATED}
)


def failure(status: ExperimentRunStatus) -> str | None:
    """The run's failure as its attacks record it: the first FAILED attack (in applying
    it or in rolling it back), or None. A restarted operator reads it here."""
    failed = next((r for r in status.attacks if r.state == AttackState.FAILED), None)
    return None if failed is None else f"attack {failed.name} failed: {failed.message or ''}"


_STOPPED = {
    StopKind.SKIP: AttackState.SKIPPED,
    StopKind.CLOSE: AttackState.COMPLETED,
    StopKind.ROLL_BACK: AttackState.ROLLING_BACK,
    StopKind.END_SIMULATION: AttackState.SIMULATED,
}


def begin_stop(
    status: ExperimentRunStatus, action: StopAction, now: datetime | None = None
) -> ExperimentRunStatus:
    """The attack stopped as `action` says: SKIPPED, COMPLETED, or ROLLING_BACK (written
    before the rollback is requested). A closed or simulated attack has ended at `now`
    (the attacks `after` it start from then); a rolled back one ends in `record_rollback`.

    The action must be the one that `stop_actions` or
    `due_actions` gives for the attack: an irreversible attack is never rolled back and
    an attack that may have acted is never skipped."""
    i = _index(status, action.name, OPEN_STATES | {AttackState.FAILED, AttackState.SIMULATING})
    if not _stoppable(status.attacks[i]):
        raise ValueError(f"attack {action.name} is {status.attacks[i].state}: nothing to stop")
    expected = _stop_kind(status.attacks[i])
    if action.kind != expected:
        raise ValueError(f"attack {action.name} is stopped by {expected}, not {action.kind}")
    if now is not None and action.kind in (StopKind.CLOSE, StopKind.END_SIMULATION):
        return _update(status, i, state=_STOPPED[action.kind], ended_at=now)
    return _update(status, i, state=_STOPPED[action.kind])


def record_rollback(
    status: ExperimentRunStatus, name: str, now: datetime, note: str | None = None
) -> ExperimentRunStatus:
    """A ROLLING_BACK attack ROLLED_BACK at `now`; the note (say, from a node agent)
    replaces the attack's message when there is one. When no rollback is pending any
    more, the RollbackPending condition says so."""
    i = _index(status, name, {AttackState.ROLLING_BACK})
    message = note[:MESSAGE_LIMIT] if note else status.attacks[i].message
    new = _update(
        status,
        i,
        state=AttackState.ROLLED_BACK,
        rolled_back_at=now,
        ended_at=now,
        message=message,
    )
    pending = find(new.conditions, ConditionType.ROLLBACK_PENDING)
    still = [r.name for r in new.attacks if r.state == AttackState.ROLLING_BACK]
    if pending is not None and pending.status == ConditionStatus.TRUE and not still:
        new.conditions = set_condition(
            new.conditions,
            type=ConditionType.ROLLBACK_PENDING,
            status=ConditionStatus.FALSE,
            reason="RolledBack",
            # What had failed stays in the report: the run fails for it (retried_rollbacks).
            message=f"every rollback succeeded in the end; before that, {pending.message}",
            now=now,
            generation=new.observed_generation,
        )
    return new


def rollback_pending(
    status: ExperimentRunStatus, name: str, error: str, attempts: int, now: datetime
) -> ExperimentRunStatus:
    """A ROLLING_BACK attack whose rollback keeps failing: it stays ROLLING_BACK (its
    fault may still be in place, and the rollback is retried until it succeeds), its
    message and the RollbackPending condition say why."""
    i = _index(status, name, {AttackState.ROLLING_BACK})
    message = f"rollback failed {attempts} time(s), retrying: {error}"[:MESSAGE_LIMIT]
    new = _update(status, i, message=message)
    new.conditions = set_condition(
        new.conditions,
        type=ConditionType.ROLLBACK_PENDING,
        status=ConditionStatus.TRUE,
        reason="RollbackRetrying",
        message=f"attack {name}: {message}",
        now=now,
        generation=new.observed_generation,
    )
    return new


def rollback_delay(attempt: int) -> float:
    """How long to wait after failed rollback attempt `attempt` (counted from 0) before
    the next: 0.2 s doubling, at most ROLLBACK_MAX_DELAY. There is no last attempt."""
    if attempt < 0:
        raise ValueError(f"attempt {attempt} < 0")
    return min(ROLLBACK_MAX_DELAY, 0.2 * float(2 ** min(attempt, 16)))


def retried_rollbacks(status: ExperimentRunStatus) -> str | None:
    """Why the run fails although every rollback succeeded in the end: the attacks whose
    rollback had to be retried (the RollbackPending condition was set), or None."""
    pending = find(status.conditions, ConditionType.ROLLBACK_PENDING)
    if pending is None:
        return None
    return f"a rollback failed and was retried until it succeeded: {pending.message}"


def resume(status: ExperimentRunStatus, now: datetime) -> tuple[ExperimentRunStatus, list[str]]:
    """The status after an operator restart, and the attacks to apply again.

    - APPLYING and reversible: applied again (applying a reversible attack twice is
      idempotent); it stays APPLYING until `record_applied` records the new outcome,
      so that a restart meanwhile applies it again. A run being stopped needs no
      second apply: `stop_actions` rolls it back as it is.
    - APPLYING and irreversible: APPLIED without applying it again (applied at `now`
      unless it has a time). It may have acted already: it is never applied twice.
    - ROLLING_BACK: APPLIED again, so that it is rolled back again (idempotent).
    - A dry run's SIMULATING or SIMULATED attack: as it is. It was never applied and is
      never applied now.
    """
    new = status.model_copy(deep=True)
    again = []
    for i, result in enumerate(new.attacks):
        if result.state == AttackState.APPLYING and result.reversible:
            again.append(result.name)
        elif result.state == AttackState.APPLYING:
            new.attacks[i] = result.model_copy(
                update={
                    "state": AttackState.APPLIED,
                    "applied_at": result.applied_at or now,
                    "message": result.message
                    or "the operator restarted while applying it; it was not applied again",
                }
            )
        elif result.state == AttackState.ROLLING_BACK:
            new.attacks[i] = result.model_copy(update={"state": AttackState.APPLIED})
    return new, again


def _index(status: ExperimentRunStatus, name: str, states: Collection[str]) -> int:
    """Where the attack is in status; it must be in one of `states`."""
    for i, result in enumerate(status.attacks):
        if result.name == name:
            if result.state not in states:
                raise ValueError(f"attack {name} is {result.state}, not {'/'.join(sorted(states))}")
            return i
    raise ValueError(f"the run has no attack {name}")


def _update(status: ExperimentRunStatus, i: int, **changes: object) -> ExperimentRunStatus:
    new = status.model_copy(deep=True)
    new.attacks[i] = new.attacks[i].model_copy(update=changes)
    return new
