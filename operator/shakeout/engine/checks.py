"""State checks: what one probe found, the tallies in a run's status, and what they mean
for the run (docs/lifecycle.md, "When a check applies, holds and fails").

* A check applies in the phases its `phases` name (BeforeAttacks: CREATED and PREPARED;
  DuringAttacks: ATTACKS_STARTED; AfterAttacks: ATTACKS_STOPPED; or Throughout); outside
  them it is neither run nor judged.
* Runs of outcomes: a Pass ends a run of failures, a Fail a run of successes. An Error
  (the check could not be evaluated) says nothing about the system: it neither counts
  towards nor interrupts either run, and has a run of its own that any Pass or Fail ends.
* A check holds after `successThreshold` successes in a row with no Error since. The run
  is PREPARED when every check that applies before the attacks holds.
* From PREPARED on, `failureThreshold` failures in a row refute the hypothesis
  (StateCheckFailed) and `failureThreshold` Errors in a row leave it unevaluated
  (StateCheckNotEvaluated). Before PREPARED both are waited out (the preparation timeout
  bounds the wait).
* A check with `mayDegradeDuringAttacks` is not judged on its failures from the start of
  the attacks until it holds again, at a probe in the cool-down (`recoveredAt`); from
  then on it is judged like any other. When the cool-down ends, one that failed in that
  window (`degradedAt`) and has not held again did not recover: StateCheckFailed.

Pure: the executor probes, records each probe with `record_check` and asks `assess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shakeout.api.checks import CheckPhase, StateCheck
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import (
    MAX_CHECK_SAMPLES,
    CheckOutcome,
    CheckSample,
    ExperimentRunStatus,
    Phase,
    StateCheckTally,
)


@dataclass(frozen=True)
class Probe:
    """One probe of a state check: whether the check held (Pass), did not (Fail: the
    system did not behave as the hypothesis says) or could not be evaluated (Error: a
    refused target, a missing Secret, an unreachable server), what it found, and the
    number it compared, if any, in `unit`."""

    outcome: CheckOutcome
    message: str
    value: float | None = None
    unit: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == CheckOutcome.PASS

    @classmethod
    def judged(
        cls, ok: bool, message: str, value: float | None = None, unit: str | None = None
    ) -> Probe:
        """Pass or Fail."""
        return cls(CheckOutcome.PASS if ok else CheckOutcome.FAIL, message, value, unit)

    @classmethod
    def error(cls, message: str) -> Probe:
        """Could not be evaluated."""
        return cls(CheckOutcome.ERROR, message)


# The run phases each CheckPhase covers (Throughout: all of them).
_PHASES_OF: dict[str, frozenset[Phase]] = {
    CheckPhase.BEFORE_ATTACKS: frozenset({Phase.CREATED, Phase.PREPARED}),
    CheckPhase.DURING_ATTACKS: frozenset({Phase.ATTACKS_STARTED}),
    CheckPhase.AFTER_ATTACKS: frozenset({Phase.ATTACKS_STOPPED}),
    CheckPhase.THROUGHOUT: frozenset(
        {Phase.CREATED, Phase.PREPARED, Phase.ATTACKS_STARTED, Phase.ATTACKS_STOPPED}
    ),
}

# What each end tells the team to do next: the run's message, Event and condition carry it.
REFUTED_ADVICE = (
    "the hypothesis was refuted: the system did not hold; see what the check saw "
    "(status.stateChecks) and fix the system, not the check"
)
REFUTED_BEFORE_ATTACKS_ADVICE = (
    "the system did not hold its steady state before any attack (nothing was attacked); "
    "see what the check saw (status.stateChecks)"
)
NOT_EVALUATED_ADVICE = (
    "the run says nothing about the system: fix the check or what it asks (its target, its "
    "server, its Secret, its query) and run again"
)
NOT_RECOVERED_ADVICE = (
    "the hypothesis was refuted: the system did not recover from the attacks in time; see "
    "what the check saw (status.stateChecks)"
)


class Finding(StrEnum):
    """What a check's probes say about the run."""

    # Failures in a row: the system did not hold (reason StateCheckFailed).
    REFUTED = "Refuted"
    # A check allowed to degrade did not hold again before the cool-down ended
    # (reason StateCheckFailed).
    NOT_RECOVERED = "NotRecovered"
    # Errors in a row: the check could not be evaluated (reason StateCheckNotEvaluated).
    NOT_EVALUATED = "NotEvaluated"


@dataclass(frozen=True)
class CheckVerdict:
    """A check whose probes end the run, and the message the run ends with."""

    name: str
    finding: Finding
    message: str


@dataclass(frozen=True)
class WaitingCheck:
    """A check that applies before the attacks and does not hold yet."""

    name: str
    last_message: str | None
    # Its last probe could not be evaluated.
    unevaluated: bool


@dataclass(frozen=True)
class CheckAssessment:
    """What the state checks say about the run at one instant (all fine by default)."""

    # A check that ends the run now (never before PREPARED).
    verdict: CheckVerdict | None = None
    # The checks that apply before the attacks and do not hold yet: PREPARED waits.
    waiting: tuple[WaitingCheck, ...] = ()
    # A check that fails the run if the cool-down ends now (mayDegradeDuringAttacks).
    not_recovered: CheckVerdict | None = None

    @property
    def prepared(self) -> bool:
        return not self.waiting

    @property
    def waiting_unevaluated(self) -> bool:
        """Every check the run waits for could not be evaluated at its last probe: the run
        waits on the checks, not on the system."""
        return bool(self.waiting) and all(w.unevaluated for w in self.waiting)

    def waiting_shown(self) -> str:
        """The checks waited for, for a message: the first three with what they last found."""
        shown = [
            f"{w.name} ({w.last_message})" if w.last_message else f"{w.name} (not probed yet)"
            for w in self.waiting[:3]
        ]
        more = len(self.waiting) - 3
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


# No check ends the run, none is waited for.
ALL_FINE = CheckAssessment()


def applies(check: StateCheck, phase: Phase | str | None) -> bool:
    """Whether the check is run and judged in the run's phase."""
    return any(phase in _PHASES_OF[p] for p in check.phases)


def _holds(check: StateCheck, tally: StateCheckTally) -> bool:
    return tally.consecutive_successes >= check.success_threshold and not tally.consecutive_errors


def _exempt(check: StateCheck, tally: StateCheckTally, phase: Phase | str) -> bool:
    """A check allowed to degrade is not judged on its failures from the start of the
    attacks until it recovered in the cool-down."""
    if not check.may_degrade_during_attacks:
        return False
    return phase == Phase.ATTACKS_STARTED or (
        phase == Phase.ATTACKS_STOPPED and tally.recovered_at is None
    )


def record_check(
    status: ExperimentRunStatus, check: StateCheck, probe: Probe, now: datetime, phase: Phase
) -> ExperimentRunStatus:
    """The status with one probe of `check`, taken in `phase`, counted and sampled."""
    new = status.model_copy(deep=True)
    tallies = {t.name: t for t in new.state_checks}
    tally = tallies.get(check.name) or StateCheckTally(name=check.name)
    if probe.outcome == CheckOutcome.PASS:
        tally.successes += 1
        tally.consecutive_successes += 1
        tally.consecutive_failures = tally.consecutive_errors = 0
    elif probe.outcome == CheckOutcome.FAIL:
        tally.failures += 1
        tally.consecutive_failures += 1
        tally.consecutive_successes = tally.consecutive_errors = 0
    else:
        tally.errors += 1
        tally.consecutive_errors += 1
    if check.may_degrade_during_attacks and tally.recovered_at is None:
        if phase == Phase.ATTACKS_STOPPED and _holds(check, tally):
            tally.recovered_at = now
        elif _exempt(check, tally, phase) and probe.outcome == CheckOutcome.FAIL:
            tally.degraded_at = tally.degraded_at or now
    tally.last_message = probe.message[:1024]
    tally.last_time = now
    if probe.unit:
        tally.unit = probe.unit[:32]
    sample = CheckSample(at=now, outcome=probe.outcome, value=probe.value)
    tally.samples = thinned([*tally.samples, sample])
    tallies[check.name] = tally
    new.state_checks = list(tallies.values())
    return new


def thinned(samples: Sequence[CheckSample], limit: int = MAX_CHECK_SAMPLES) -> list[CheckSample]:
    """At most `limit` samples, the first and the last always kept: while there are too
    many, the inner sample whose neighbours are closest in time goes, so that the series
    stays as evenly spread over the run as it can be. A sample where the outcome changes
    is kept as long as another can go: the chart shows every degradation."""
    kept = list(samples)
    while len(kept) > max(limit, 2):
        inner = range(1, len(kept) - 1)
        steady = [i for i in inner if kept[i - 1].outcome == kept[i].outcome == kept[i + 1].outcome]
        candidates = steady or list(inner)
        drop = min(candidates, key=lambda i: (kept[i + 1].at - kept[i - 1].at, i))
        del kept[drop]
    return kept


def _tally(status: ExperimentRunStatus, name: str) -> StateCheckTally:
    return next((t for t in status.state_checks if t.name == name), StateCheckTally(name=name))


def _refuted(check: StateCheck, tally: StateCheckTally, phase: Phase | str) -> CheckVerdict:
    advice = REFUTED_BEFORE_ATTACKS_ADVICE if phase == Phase.PREPARED else REFUTED_ADVICE
    count = tally.consecutive_failures
    row = f" ({count} failures in a row, failureThreshold {check.failure_threshold})"
    return CheckVerdict(
        check.name,
        Finding.REFUTED,
        f"state check {check.name} failed: {tally.last_message}"
        + (row if count > 1 else "")
        + f"; {advice}",
    )


def _not_evaluated(check: StateCheck, tally: StateCheckTally) -> CheckVerdict:
    count = tally.consecutive_errors
    row = f" ({count} in a row, failureThreshold {check.failure_threshold})"
    return CheckVerdict(
        check.name,
        Finding.NOT_EVALUATED,
        f"state check {check.name} could not be evaluated: {tally.last_message}"
        + (row if count > 1 else "")
        + f"; {NOT_EVALUATED_ADVICE}",
    )


def _not_recovered(
    check: StateCheck, tally: StateCheckTally, cool_down_seconds: int
) -> CheckVerdict:
    assert tally.degraded_at is not None
    since = tally.degraded_at.strftime("%H:%M:%SZ")
    holds = (
        "passed again"
        if check.success_threshold == 1
        else f"passed {check.success_threshold} times in a row (successThreshold)"
    )
    return CheckVerdict(
        check.name,
        Finding.NOT_RECOVERED,
        f"state check {check.name} did not recover within coolDownSeconds "
        f"({cool_down_seconds}s): it degraded during the attacks (first failure at {since}) "
        f"and has not {holds} since; last: {tally.last_message}; {NOT_RECOVERED_ADVICE}",
    )


def assess(
    status: ExperimentRunStatus, experiment: ExperimentSpec, phase: Phase | str
) -> CheckAssessment:
    """What the checks of `experiment`, as tallied in `status`, say in `phase`. A check
    that was refuted comes before one that could not be evaluated: what the system did is
    the stronger finding."""
    refuted: CheckVerdict | None = None
    unevaluated: CheckVerdict | None = None
    waiting: list[WaitingCheck] = []
    not_recovered: CheckVerdict | None = None
    judged = phase in (Phase.PREPARED, Phase.ATTACKS_STARTED, Phase.ATTACKS_STOPPED)
    for check in experiment.state_checks:
        tally = _tally(status, check.name)
        degraded = tally.degraded_at is not None and tally.recovered_at is None
        if check.may_degrade_during_attacks and degraded and not_recovered is None:
            not_recovered = _not_recovered(check, tally, experiment.cool_down_seconds)
        if not applies(check, phase):
            continue
        if phase == Phase.CREATED and not _holds(check, tally):
            waiting.append(
                WaitingCheck(check.name, tally.last_message, tally.consecutive_errors > 0)
            )
        if not judged:
            continue
        if (
            refuted is None
            and tally.consecutive_failures >= check.failure_threshold
            and not _exempt(check, tally, phase)
        ):
            refuted = _refuted(check, tally, phase)
        if unevaluated is None and tally.consecutive_errors >= check.failure_threshold:
            unevaluated = _not_evaluated(check, tally)
    return CheckAssessment(
        verdict=refuted or unevaluated,
        waiting=tuple(waiting),
        not_recovered=not_recovered,
    )
