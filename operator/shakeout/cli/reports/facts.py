"""What every report format says about a run, computed once from the run object: the
headline, the verdicts of the run, of each check and of each attack, the attack window and
each check's series. Pure: the run in, frozen values out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shakeout.api.run import (
    TERMINAL_PHASES,
    AttackResult,
    AttackState,
    CheckOutcome,
    CheckSample,
    ExperimentRun,
    Phase,
    StateCheckTally,
)
from shakeout.cli.report import DRY_RUN_HEADLINE

# Reasons of a run that a state check ended. StateCheckNotEvaluated ("could not be
# evaluated", issue 15 item 2) is matched by name: the check semantics add it.
CHECK_REFUTED = "StateCheckFailed"
CHECK_NOT_EVALUATED = "StateCheckNotEvaluated"


class Verdict(StrEnum):
    """One test case's outcome, in JUnit's words."""

    PASSED = "passed"
    FAILED = "failed"  # the hypothesis was refuted, or the run did not complete
    ERROR = "error"  # could not be evaluated, or the run is not over
    SKIPPED = "skipped"  # nothing to judge: a dry run's attack, an attack never started


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str  # why, one line; empty when passed


@dataclass(frozen=True)
class Window:
    """When the attacks were under way (a dry run: when they would have been)."""

    start: datetime
    end: datetime | None  # None: still under way when the run was read

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class CheckFacts:
    tally: StateCheckTally
    type: str  # from the run's snapshot of the Experiment; "" when not in it
    samples: tuple[CheckSample, ...]  # in time order
    judgement: Judgement

    @property
    def name(self) -> str:
        return self.tally.name

    def count(self, outcome: CheckOutcome) -> int:
        return sum(1 for s in self.samples if s.outcome == outcome)

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.samples if s.value is not None]


@dataclass(frozen=True)
class AttackFacts:
    result: AttackResult
    judgement: Judgement

    @property
    def started(self) -> datetime | None:
        """When the attack started (a dry run: would have); None if it never did."""
        return self.result.applied_at

    @property
    def ended(self) -> datetime | None:
        """When it ended: rolled back, closed, or a dry run's window closed."""
        return self.result.ended_at or self.result.rolled_back_at


@dataclass(frozen=True)
class RunFacts:
    """One run as the reports see it."""

    run: ExperimentRun
    namespace: str
    name: str
    experiment: str
    dry_run: bool
    phase: str  # PENDING until the operator picked the run up
    headline: str
    judgement: Judgement
    window: Window | None
    start: datetime | None  # the chart's time axis: first known time of the run
    end: datetime | None  # ... and the last
    checks: tuple[CheckFacts, ...]
    attacks: tuple[AttackFacts, ...]

    @property
    def duration_seconds(self) -> float | None:
        status = self.run.status
        if status is None or status.started_at is None or status.finished_at is None:
            return None
        return (status.finished_at - status.started_at).total_seconds()

    def attack_offset(self, attack: AttackFacts) -> float | None:
        """Seconds from ATTACKS_STARTED to the attack's start (its step's offset)."""
        begun = self.phase_time(Phase.ATTACKS_STARTED)
        if begun is None or attack.started is None:
            return None
        return (attack.started - begun).total_seconds()

    def attack_steps(self) -> list[AttackFacts]:
        """The attacks that started, in the order they started (the report's timeline)."""
        started = [a for a in self.attacks if a.started is not None]
        return sorted(started, key=lambda a: (a.started, a.result.name))

    def phase_time(self, phase: Phase) -> datetime | None:
        status = self.run.status
        for entry in status.timeline if status else []:
            if entry.phase == phase:
                return entry.time
        return None


def shown_time(value: datetime | None, timespec: str = "seconds") -> str:
    """A time as the reports show it: UTC, ISO 8601 with a Z, to the second for people
    (the status keeps the precise time)."""
    if value is None:
        return "-"
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return utc.isoformat(timespec=timespec).replace("+00:00", "Z")


def facts(obj: dict[str, Any]) -> RunFacts:
    """The facts of a run object as the API server returns it (camelCase)."""
    raw_status = dict(obj.get("status") or {})
    # The Experiment's snapshot is read for its checks' types only, and left out of the
    # model: a snapshot written by a newer operator (a new check type) must not make an
    # older plugin unable to report.
    snapshot = raw_status.pop("experiment", None) or {}
    types = {
        str(c.get("name")): str(c.get("type") or "")
        for c in snapshot.get("stateChecks") or []
        if isinstance(c, dict)
    }
    run = ExperimentRun.model_validate({**obj, "status": raw_status or None})
    status = run.status
    dry_run = bool(run.spec.dry_run or (status is not None and status.dry_run))
    phase = str(status.phase) if status is not None and status.phase else "PENDING"
    namespace = run.metadata.namespace or ""
    name = run.metadata.name or ""
    judgement = _run_judgement(run, phase)
    base = RunFacts(
        run=run,
        namespace=namespace,
        name=name,
        experiment=run.spec.experiment_ref.name,
        dry_run=dry_run,
        phase=phase,
        headline="",
        judgement=judgement,
        window=None,
        start=None,
        end=None,
        checks=(),
        attacks=(),
    )
    window = _attack_window(base)
    checks = tuple(
        _check(base, tally, types.get(tally.name, ""))
        for tally in (status.state_checks if status else [])
    )
    attacks = tuple(
        AttackFacts(a, _attack_judgement(a, dry_run)) for a in (status.attacks if status else [])
    )
    start, end = _span(base, checks, window)
    headline = (
        DRY_RUN_HEADLINE
        if dry_run
        else f"{_headline_word(judgement, phase)}: run {namespace}/{name} of {base.experiment}"
        f" is {phase}" + (f" ({status.reason})" if status is not None and status.reason else "")
    )
    return replace(
        base,
        headline=headline,
        window=window,
        start=start,
        end=end,
        checks=checks,
        attacks=attacks,
    )


def _headline_word(judgement: Judgement, phase: str) -> str:
    if judgement.verdict == Verdict.PASSED:
        return "PASSED"
    if judgement.verdict == Verdict.FAILED:
        return "FAILED"
    return "NOT EVALUATED" if phase in TERMINAL_PHASES else "NOT FINISHED"


def _run_judgement(run: ExperimentRun, phase: str) -> Judgement:
    """A run passes only when COMPLETED: a canceled run proved nothing, and a pipeline
    that gates on the report must not pass it. A run that ended because a check could not
    be evaluated is an error, not a failure: nothing says the system did not hold."""
    status = run.status
    reason = (status.reason if status else None) or ""
    message = (status.message if status else None) or ""
    detail = (f"{phase} ({reason}): {message}" if reason else f"{phase}: {message}").rstrip(": ")
    if phase == Phase.COMPLETED:
        return Judgement(Verdict.PASSED, "")
    if phase in TERMINAL_PHASES and reason == CHECK_NOT_EVALUATED:
        return Judgement(Verdict.ERROR, detail)
    if phase in TERMINAL_PHASES:
        return Judgement(Verdict.FAILED, detail)
    return Judgement(Verdict.ERROR, f"the run is not over: {phase}")


def _culprits(run: ExperimentRun) -> set[str]:
    """The checks that ended the run, if checks did: the one the executor's message names
    (`state check NAME ...`); else those a message of several names (`state checks could
    not be evaluated: A (...), B (...)`); else, should a message say it otherwise, the
    check that failed (or could not be evaluated) last."""
    status = run.status
    if status is None or status.reason not in (CHECK_REFUTED, CHECK_NOT_EVALUATED):
        return set()
    message = status.message or ""
    tallies = status.state_checks
    for tally in tallies:
        if message.startswith(f"state check {tally.name} "):
            return {tally.name}
    listed = {t.name for t in tallies if f" {t.name} (" in message}
    if listed:
        return listed
    evaluated = status.reason == CHECK_REFUTED
    bad = [
        t
        for t in tallies
        if (t.failures if evaluated else t.errors) > 0 and t.last_time is not None
    ]
    return {max(bad, key=lambda t: t.last_time or datetime.min).name} if bad else set()


def _check(base: RunFacts, tally: StateCheckTally, check_type: str) -> CheckFacts:
    samples = tuple(sorted(tally.samples, key=lambda s: s.at))
    status = base.run.status
    reason = status.reason if status and tally.name in _culprits(base.run) else None
    last = tally.last_message or ""
    if reason == CHECK_REFUTED:
        judgement = Judgement(Verdict.FAILED, f"the check did not hold: {last}")
    elif reason == CHECK_NOT_EVALUATED:
        judgement = Judgement(Verdict.ERROR, f"the check could not be evaluated: {last}")
    elif tally.successes == 0 and tally.failures == 0 and not samples:
        judgement = Judgement(Verdict.SKIPPED, "the check never ran")
    else:
        # Failures before PREPARED are waited out (docs/lifecycle.md): they fail nothing.
        judgement = Judgement(Verdict.PASSED, "")
    return CheckFacts(tally, check_type, samples, judgement)


def _attack_judgement(attack: AttackResult, dry_run: bool) -> Judgement:
    state = attack.state
    if dry_run or state in (AttackState.SIMULATING, AttackState.SIMULATED):
        plan = attack.message or "simulated"
        # The operator's note of a dry run's attack already says it is one.
        return Judgement(
            Verdict.SKIPPED,
            plan if plan.startswith("dry run") else f"dry run, nothing applied: {plan}",
        )
    if state == AttackState.FAILED:
        return Judgement(Verdict.FAILED, attack.message or "the attack failed")
    if state == AttackState.ROLLING_BACK:
        return Judgement(
            Verdict.ERROR, "the rollback is still pending: " + (attack.message or "retrying")
        )
    if state == AttackState.PENDING:
        return Judgement(Verdict.SKIPPED, "never started: the run ended before the attacks")
    if state == AttackState.SKIPPED:
        return Judgement(Verdict.SKIPPED, attack.message or "skipped")
    if state in (AttackState.APPLYING, AttackState.APPLIED):
        return Judgement(Verdict.ERROR, f"still under way ({state})")
    return Judgement(Verdict.PASSED, "")  # Completed, RolledBack


def _attack_window(base: RunFacts) -> Window | None:
    """From the attacks' start (the phase, else the first attack applied) to their stop
    (the phase, else the last rollback, else the run's end; None while under way)."""
    status = base.run.status
    if status is None:
        return None
    applied = [a.applied_at for a in status.attacks if a.applied_at is not None]
    start = base.phase_time(Phase.ATTACKS_STARTED) or (min(applied) if applied else None)
    if start is None:
        return None
    rolled_back = [a.rolled_back_at for a in status.attacks if a.rolled_back_at is not None]
    end = (
        base.phase_time(Phase.ATTACKS_STOPPED)
        or (max(rolled_back) if rolled_back else None)
        or status.finished_at
    )
    return Window(start, max(end, start) if end is not None else None)


def _span(
    base: RunFacts, checks: tuple[CheckFacts, ...], window: Window | None
) -> tuple[datetime | None, datetime | None]:
    """The first and last time the report knows of: the charts' shared time axis."""
    status = base.run.status
    times: list[datetime] = [s.at for c in checks for s in c.samples]
    if status is not None:
        times += [e.time for e in status.timeline]
        times += [t for t in (status.started_at, status.finished_at) if t is not None]
    if window is not None:
        times += [t for t in (window.start, window.end) if t is not None]
    return (min(times), max(times)) if times else (None, None)
