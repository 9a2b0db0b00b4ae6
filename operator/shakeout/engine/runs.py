"""The run state machine: its phases, decided from observations.

Pure: the handler gathers what it saw (the clock included), asks `decide`, persists the
status that `enter` returns, and only then acts on the cluster, so that an operator
restarted at any point finds in status what it was about to do. Each attack's own
lifecycle within the phases is in engine.attacks.

    CREATED ──▶ PREPARED ──▶ ATTACKS_STARTED ──▶ ATTACKS_STOPPED ──▶ COMPLETED
       │            │               │                   │
       └────────────┴───────────────┴───────────────────┴──▶ CANCELED | FAILED
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from shakeout.api.common import ConditionStatus
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.labels import ConditionType
from shakeout.api.run import (
    TERMINAL_PHASES,
    AttackState,
    ExperimentRunStatus,
    Phase,
    StateCheckTally,
    Targets,
    TimelineEntry,
    UserInfo,
)
from shakeout.engine import attacks
from shakeout.engine.checks import ALL_FINE, NOT_EVALUATED_ADVICE, CheckAssessment, Finding
from shakeout.engine.conditions import set_condition

ORDER = [
    Phase.CREATED,
    Phase.PREPARED,
    Phase.ATTACKS_STARTED,
    Phase.ATTACKS_STOPPED,
    Phase.COMPLETED,
]
# ExperimentRunStatus.message's maxLength.
MESSAGE_LIMIT = 4096


class Reason(StrEnum):
    """Why a run is where it is: Event reasons and condition reasons (CamelCase)."""

    CREATED = "Created"
    PREPARED = "Prepared"
    ATTACKS_STARTED = "AttacksStarted"
    ATTACKS_STOPPED = "AttacksStopped"
    COMPLETED = "Completed"
    CANCELED = "Canceled"
    STOPPED_ALL = "StoppedAll"
    RUN_DELETED = "RunDeleted"
    # A state check failed failureThreshold times in a row, or did not recover within the
    # cool-down: the hypothesis was refuted.
    STATE_CHECK_FAILED = "StateCheckFailed"
    # A state check could not be evaluated failureThreshold times in a row (unreachable,
    # refused, bad query): the run says nothing about the system.
    STATE_CHECK_NOT_EVALUATED = "StateCheckNotEvaluated"
    ATTACK_FAILED = "AttackFailed"
    # A rollback failed and had to be retried (until it succeeded: see RollbackPending).
    ROLLBACK_FAILED = "RollbackFailed"
    AGENT_DISCONNECTED = "AgentDisconnected"
    AGENTS_NOT_CONNECTED = "AgentsNotConnected"
    ATTACK_UNSUPPORTED = "AttackUnsupported"
    PREPARATION_TIMED_OUT = "PreparationTimedOut"
    EXPERIMENT_NOT_FOUND = "ExperimentNotFound"
    EXPERIMENT_INVALID = "ExperimentInvalid"
    EXPERIMENTING_DISABLED = "ExperimentingDisabled"
    ANOTHER_RUN_ACTIVE = "AnotherRunActive"
    # Another live run holds one of this run's pods, nodes or workloads.
    TARGETS_HELD = "TargetsHeld"
    # Outside every allowedWindow of the Experiment, or inside a blackout window.
    OUTSIDE_WINDOW = "OutsideWindow"
    # A blackout window began while the run was going: canceled with rollback.
    BLACKOUT_BEGAN = "BlackoutBegan"
    NO_TARGETS = "NoTargets"
    NAMESPACE_PROTECTED = "NamespaceProtected"
    OVER_TARGET_CAP = "OverTargetCap"
    # An attack whose effect reaches beyond the namespace, not allowed for it by the switch.
    CLUSTER_SCOPE_NOT_ALLOWED = "ClusterScopeNotAllowed"
    OVER_NODE_CAP = "OverNodeCap"
    # A scale-down that would delete volumes, without the attack accepting it.
    DATA_LOSS_NOT_ACCEPTED = "DataLossNotAccepted"
    RUN_TOO_LONG = "RunTooLong"
    UNAUTHORIZED = "Unauthorized"
    OPERATOR_SHUTDOWN = "OperatorShutdown"
    INVALID_STATUS = "InvalidStatus"


# The condition that says a phase was reached, per phase.
PHASE_CONDITIONS = {
    Phase.PREPARED: ConditionType.PREPARED,
    Phase.ATTACKS_STARTED: ConditionType.ATTACKS_STARTED,
    Phase.ATTACKS_STOPPED: ConditionType.ATTACKS_STOPPED,
}


def is_terminal(phase: Phase | str | None) -> bool:
    return phase in TERMINAL_PHASES


@dataclass(frozen=True)
class Observation:
    """What the handler saw at one instant."""

    now: datetime
    phase: Phase
    phase_entered: datetime
    experiment: ExperimentSpec
    cancel_requested: bool = False
    switch_enabled: bool = True
    # The blackout window of the switch in force now, described (engine.windows.describe).
    blackout: str | None = None
    deleting: bool = False
    shutting_down: bool = False
    # Nodes whose agents take part in the run and hold no live lease.
    agents_missing: tuple[str, ...] = ()
    # What the state checks' tallies say (engine.checks.assess).
    checks: CheckAssessment = ALL_FINE
    attack_failure: str | None = None
    rollback_failure: str | None = None
    attacks_finished: bool = False

    @property
    def agents_connected(self) -> bool:
        return not self.agents_missing

    def missing_agents_shown(self) -> str:
        """The missing agents for a message: the first five nodes, then a count."""
        shown = ", ".join(self.agents_missing[:5])
        more = len(self.agents_missing) - 5
        return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Transition:
    phase: Phase
    reason: Reason
    message: str
    # Roll back every applied reversible attack before the phase is entered.
    rollback: bool = False
    # Apply the attacks once the phase is entered (and persisted).
    apply_attacks: bool = False

    @property
    def warning(self) -> bool:
        return self.phase in (Phase.FAILED, Phase.CANCELED)


def _abort(obs: Observation) -> Transition | None:
    """Ends that take precedence over the schedule of phases, most urgent first."""
    if obs.deleting:
        return Transition(Phase.CANCELED, Reason.RUN_DELETED, "the run was deleted", rollback=True)
    if not obs.switch_enabled:
        return Transition(
            Phase.CANCELED,
            Reason.STOPPED_ALL,
            "experimenting was disabled (Stop All)",
            rollback=True,
        )
    if obs.cancel_requested:
        return Transition(Phase.CANCELED, Reason.CANCELED, "canceled by a user", rollback=True)
    if obs.blackout is not None:
        return Transition(
            Phase.CANCELED,
            Reason.BLACKOUT_BEGAN,
            f"the blackout window {obs.blackout} of ChaosSwitch default began: the run was "
            "canceled and its attacks rolled back",
            rollback=True,
        )
    if obs.shutting_down:
        return Transition(
            Phase.FAILED,
            Reason.OPERATOR_SHUTDOWN,
            "the operator shut down during the run; attacks were rolled back",
            rollback=True,
        )
    if obs.rollback_failure:
        return Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, obs.rollback_failure, rollback=True)
    if obs.attack_failure:
        return Transition(Phase.FAILED, Reason.ATTACK_FAILED, obs.attack_failure, rollback=True)
    if not obs.agents_connected and obs.phase != Phase.CREATED:
        return Transition(
            Phase.FAILED,
            Reason.AGENT_DISCONNECTED,
            f"the node agent of {obs.missing_agents_shown()} lost its lease during the run; "
            "it rolls back its own attacks, the operator rolled back the rest",
            rollback=True,
        )
    if (verdict := obs.checks.verdict) is not None and obs.phase != Phase.CREATED:
        return Transition(
            Phase.FAILED, _CHECK_REASONS[verdict.finding], verdict.message, rollback=True
        )
    return None


_CHECK_REASONS = {
    Finding.REFUTED: Reason.STATE_CHECK_FAILED,
    Finding.NOT_RECOVERED: Reason.STATE_CHECK_FAILED,
    Finding.NOT_EVALUATED: Reason.STATE_CHECK_NOT_EVALUATED,
}


def decide(obs: Observation) -> Transition | None:
    """The next transition of a run, or None to stay in the phase."""
    if is_terminal(obs.phase):
        return None
    if (abort := _abort(obs)) is not None:
        return abort
    spent = obs.now - obs.phase_entered
    exp = obs.experiment
    if obs.phase == Phase.CREATED:
        if obs.agents_connected and obs.checks.prepared:
            return Transition(
                Phase.PREPARED,
                Reason.PREPARED,
                f"agents connected and state checks succeeded; warm-up {exp.warm_up_seconds}s",
            )
        if not obs.agents_connected and spent >= timedelta(seconds=exp.agent_timeout_seconds):
            return Transition(
                Phase.FAILED,
                Reason.AGENTS_NOT_CONNECTED,
                f"the node agents of {obs.missing_agents_shown()} did not connect within "
                f"{exp.agent_timeout_seconds}s (agentTimeoutSeconds)",
            )
        if spent >= timedelta(seconds=exp.preparation_timeout_seconds):
            return _not_prepared(obs)
        return None
    if obs.phase == Phase.PREPARED:
        if spent >= timedelta(seconds=exp.warm_up_seconds):
            return Transition(
                Phase.ATTACKS_STARTED,
                Reason.ATTACKS_STARTED,
                f"warm-up over; starting {len(exp.attacks)} attack(s)",
                apply_attacks=True,
            )
        return None
    if obs.phase == Phase.ATTACKS_STARTED:
        if obs.attacks_finished:
            return Transition(
                Phase.ATTACKS_STOPPED,
                Reason.ATTACKS_STOPPED,
                f"attacks stopped and rolled back; cool-down {exp.cool_down_seconds}s",
            )
        return None
    if obs.phase == Phase.ATTACKS_STOPPED and spent >= timedelta(seconds=exp.cool_down_seconds):
        if (late := obs.checks.not_recovered) is not None:
            return Transition(
                Phase.FAILED, _CHECK_REASONS[late.finding], late.message, rollback=True
            )
        return Transition(
            Phase.COMPLETED,
            Reason.COMPLETED,
            "all attacks executed, cool-down over, no state check failed",
        )
    return None


def _not_prepared(obs: Observation) -> Transition:
    """The end of a run that did not prepare in time. When every check it waited for could
    not be evaluated, it waited on the checks, not on the system: the reason says so."""
    after = f"not prepared after {obs.experiment.preparation_timeout_seconds}s"
    if not obs.agents_connected:
        return Transition(Phase.FAILED, Reason.PREPARATION_TIMED_OUT, f"{after}: waited for agents")
    checks = obs.checks
    if checks.waiting_unevaluated:
        return Transition(
            Phase.FAILED,
            Reason.STATE_CHECK_NOT_EVALUATED,
            f"{after}: state checks could not be evaluated: {checks.waiting_shown()}; "
            f"{NOT_EVALUATED_ADVICE}",
        )
    return Transition(
        Phase.FAILED,
        Reason.PREPARATION_TIMED_OUT,
        f"{after}: waited for state checks to hold (successThreshold successes in a row): "
        f"{checks.waiting_shown()}",
    )


def enter(
    status: ExperimentRunStatus,
    transition: Transition,
    now: datetime,
    generation: int | None,
    canceled_by: UserInfo | None = None,
) -> ExperimentRunStatus:
    """The status after a transition: phase, timeline, conditions, reason; `canceled_by`
    is recorded when a user's cancel ends the run (Reason.CANCELED), and only then.

    Refuses to move backwards or out of a terminal phase: a phase never goes back.
    """
    current = status.phase
    if is_terminal(current):
        raise ValueError(f"run is {current}: a terminal phase is final")
    target = transition.phase
    backwards = (
        not is_terminal(target)
        and current is not None
        and ORDER.index(Phase(target)) <= ORDER.index(Phase(current))
    )
    if backwards:
        raise ValueError(f"phase {target} would not move forward from {current}")
    new = status.model_copy(deep=True)
    new.phase = target
    new.reason = transition.reason
    new.message = transition.message[:MESSAGE_LIMIT]
    if transition.reason == Reason.CANCELED and canceled_by is not None:
        new.canceled_by = canceled_by.model_copy(deep=True)
    new.observed_generation = generation
    new.timeline = [*new.timeline, TimelineEntry(phase=target, time=now)]
    if target == Phase.COMPLETED:
        summary = ConditionStatus.TRUE
    elif is_terminal(target):
        summary = ConditionStatus.FALSE
    else:
        summary = ConditionStatus.UNKNOWN
    # kstatus (Flux, kpt, cli-utils) reads Reconciling and Stalled: a live run is
    # InProgress, a COMPLETED or CANCELED one Current, a FAILED one Failed.
    conditions = [
        (ConditionType.SUCCEEDED, summary),
        (ConditionType.RECONCILING, _true_if(not is_terminal(target))),
        (ConditionType.STALLED, _true_if(target == Phase.FAILED)),
    ]
    if (reached := PHASE_CONDITIONS.get(Phase(target))) is not None:
        conditions.insert(0, (reached, ConditionStatus.TRUE))
    for type_, cond_status in conditions:
        new.conditions = set_condition(
            new.conditions,
            type=type_,
            status=cond_status,
            reason=transition.reason,
            message=transition.message,
            now=now,
            generation=generation,
        )
    if is_terminal(target):
        new.finished_at = now
        # Attacks that never started are closed as skipped, a dry run's as simulated: a
        # report has no open ends.
        new.attacks = [
            a.model_copy(update={"state": _CLOSED[a.state]}) if a.state in _CLOSED else a
            for a in new.attacks
        ]
    return new


_CLOSED = {
    AttackState.PENDING: AttackState.SKIPPED,
    AttackState.SIMULATING: AttackState.SIMULATED,
}


def _true_if(condition: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if condition else ConditionStatus.FALSE


def straight_to_attacks(experiment: ExperimentSpec) -> bool:
    """Whether a run goes from its pick-up to its attacks without waiting for anything: no
    state check to pass, no node agent to wait for, no warm-up."""
    return (
        not experiment.state_checks
        and experiment.warm_up_seconds == 0
        and not any(a.node_level for a in experiment.attacks)
    )


def initial_status(
    experiment: ExperimentSpec,
    now: datetime,
    generation: int | None,
    *,
    targets: Targets | None = None,
    agents: Sequence[str] = (),
    experiment_generation: int | None = None,
    started_by: UserInfo | None = None,
    dry_run: bool = False,
) -> ExperimentRunStatus:
    """The status of a run just picked up: CREATED, attacks pending, tallies at zero,
    with the snapshot of the Experiment that the run executes, its targets, its node
    agents and who started it; a dry run says so (status.dryRun and its condition)."""
    status = ExperimentRunStatus(
        dry_run=True if dry_run else None,
        started_at=now,
        attacks=attacks.pending(experiment),
        state_checks=[StateCheckTally(name=c.name) for c in experiment.state_checks],
        experiment=experiment.model_copy(deep=True),
        experiment_generation=experiment_generation,
        targets=targets.model_copy(deep=True) if targets else None,
        agents=sorted(set(agents)),
        started_by=started_by.model_copy(deep=True) if started_by else None,
    )
    created = Transition(Phase.CREATED, Reason.CREATED, "waiting for agents and state checks")
    if dry_run:
        status = mark_dry_run(status, now, generation)
        created = announce_dry_run(created)
    return enter(status, created, now, generation)


# What every message of a dry run starts with: its report says so on its first line.
DRY_RUN_MARK = "dry run, nothing applied: "
DRY_RUN_CONDITION_MESSAGE = (
    "a dry run: every phase, state check and target as in a run, each attack journaled with "
    "what it would do, nothing applied"
)


def announce_dry_run(transition: Transition) -> Transition:
    """A dry run's transition: its message (Event, status, conditions) says that nothing is
    applied; the start of the attacks says what happens instead."""
    message = transition.message
    if message.startswith(DRY_RUN_MARK):
        return transition  # announced already (an end kept across a restart)
    if transition.apply_attacks:
        message = "warm-up over; each attack is journaled with what it would do"
    return replace(transition, message=DRY_RUN_MARK + message)


def mark_dry_run(
    status: ExperimentRunStatus, now: datetime, generation: int | None
) -> ExperimentRunStatus:
    """The status of a dry run: status.dryRun and the condition DryRun, both True."""
    new = status.model_copy(update={"dry_run": True})
    new.conditions = set_condition(
        new.conditions,
        type=ConditionType.DRY_RUN,
        status=ConditionStatus.TRUE,
        reason="DryRun",
        message=DRY_RUN_CONDITION_MESSAGE,
        now=now,
        generation=generation,
    )
    return new


def refuse(
    status: ExperimentRunStatus | None,
    reason: Reason,
    message: str,
    now: datetime,
    generation: int | None,
    *,
    started_by: UserInfo | None = None,
    dry_run: bool = False,
) -> ExperimentRunStatus:
    """A run that may not execute at all: FAILED straight away, nothing attacked; who
    started it is recorded when known, and a dry run says so."""
    base = status or ExperimentRunStatus(started_at=now)
    if started_by is not None:
        base = base.model_copy(update={"started_by": started_by.model_copy(deep=True)})
    created = Transition(Phase.CREATED, Reason.CREATED, "picked up")
    failed = Transition(Phase.FAILED, reason, message)
    if dry_run:
        base = mark_dry_run(base, now, generation)
        created, failed = announce_dry_run(created), announce_dry_run(failed)
    if base.phase is None:
        base = enter(base, created, now, generation)
    return enter(base, failed, now, generation)


def phase_entered(status: ExperimentRunStatus) -> datetime | None:
    """When the current phase was entered, from the timeline."""
    for entry in reversed(status.timeline):
        if entry.phase == status.phase:
            return entry.time
    return None
