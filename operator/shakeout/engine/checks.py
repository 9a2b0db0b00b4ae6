"""State checks: what one probe found, and the tallies in a run's status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import CheckOutcome, ExperimentRunStatus, StateCheckTally


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


def record_check(
    status: ExperimentRunStatus, name: str, probe: Probe, now: datetime
) -> ExperimentRunStatus:
    """The status with one probe of a check counted, and what it found."""
    ok, message = probe.ok, probe.message
    new = status.model_copy(deep=True)
    tallies = {t.name: t for t in new.state_checks}
    tally = tallies.get(name) or StateCheckTally(name=name)
    if ok:
        tally.successes += 1
    else:
        tally.failures += 1
    tally.last_message = message[:1024]
    tally.last_time = now
    tallies[name] = tally
    new.state_checks = list(tallies.values())
    return new


def succeeded_once(status: ExperimentRunStatus, experiment: ExperimentSpec) -> bool:
    """Whether every check of the experiment has reported a success (a run is PREPARED
    only then)."""
    successes = {t.name: t.successes for t in status.state_checks}
    return all(successes.get(c.name, 0) > 0 for c in experiment.state_checks)
