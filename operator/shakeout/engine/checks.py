"""State checks' tallies in a run's status."""

from __future__ import annotations

from datetime import datetime

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import ExperimentRunStatus, StateCheckTally


def record_check(
    status: ExperimentRunStatus, name: str, ok: bool, message: str, now: datetime
) -> ExperimentRunStatus:
    """The status with one probe of a check counted, and what it found."""
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
