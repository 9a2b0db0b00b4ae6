"""State-check semantics (engine/checks.py), without a cluster or a clock: when a check
applies, runs of failures, successes and errors, thresholds, degrading during the attacks
and recovering in the cool-down, the samples, and the spec's validation."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shakeout.api.checks import StateCheck
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import (
    MAX_CHECK_SAMPLES,
    CheckOutcome,
    CheckSample,
    ExperimentRunStatus,
    Phase,
)
from shakeout.engine.checks import (
    NOT_EVALUATED_ADVICE,
    REFUTED_ADVICE,
    Finding,
    Probe,
    applies,
    assess,
    record_check,
    thinned,
)
from shakeout.engine.runs import initial_status
from tests.unit.test_catalogue import cel_holds, crd_rules

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PASS = Probe.judged(True, "3/3 ready", 3, "ready replicas")
FAIL = Probe.judged(False, "1/3 ready", 1, "ready replicas")
ERROR = Probe.error("refused: httpGet.headers[0]: Secret token key t: no such Secret")


def experiment(*checks: dict[str, Any], cool_down: int = 10) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": "kill", "type": "PodDelete"}],
            "stateChecks": [
                {"name": f"c{i}", "type": "PodsReady", "intervalSeconds": 1, **c}
                for i, c in enumerate(checks)
            ],
            "coolDownSeconds": cool_down,
        }
    )


class Run:
    """A run's status fed probe by probe, one second apart."""

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self.status: ExperimentRunStatus = initial_status(spec, T0, 1)
        self.now = T0

    def probe(self, phase: Phase, *probes: Probe, check: int = 0) -> Run:
        for probe in probes:
            self.now += timedelta(seconds=1)
            self.status = record_check(
                self.status, self.spec.state_checks[check], probe, self.now, phase
            )
        return self

    def verdict(self, phase: Phase) -> tuple[str, Finding] | None:
        found = assess(self.status, self.spec, phase).verdict
        return (found.name, found.finding) if found else None

    def tally(self, check: int = 0) -> Any:
        return self.status.state_checks[check]


# -- defaults: today's behaviour -------------------------------------------------------------


def test_by_default_one_success_prepares_and_one_failure_after_it_fails_the_run() -> None:
    run = Run(experiment({}))
    assert not assess(run.status, run.spec, Phase.CREATED).prepared
    run.probe(Phase.CREATED, FAIL, FAIL)
    assert run.verdict(Phase.CREATED) is None, "before PREPARED failures are waited out"
    run.probe(Phase.CREATED, PASS)
    assert assess(run.status, run.spec, Phase.CREATED).prepared
    run.probe(Phase.ATTACKS_STARTED, FAIL)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c0", Finding.REFUTED)
    message = assess(run.status, run.spec, Phase.ATTACKS_STARTED).verdict.message  # type: ignore[union-attr]
    assert message == f"state check c0 failed: 1/3 ready; {REFUTED_ADVICE}"


def test_a_failure_before_the_attacks_says_nothing_was_attacked() -> None:
    run = Run(experiment({})).probe(Phase.CREATED, PASS).probe(Phase.PREPARED, FAIL)
    verdict = assess(run.status, run.spec, Phase.PREPARED).verdict
    assert verdict is not None
    assert verdict.finding == Finding.REFUTED
    assert "before any attack (nothing was attacked)" in verdict.message


# -- thresholds and runs of outcomes ---------------------------------------------------------


def test_failure_threshold_counts_failures_in_a_row() -> None:
    run = Run(experiment({"failureThreshold": 3})).probe(Phase.CREATED, PASS)
    run.probe(Phase.ATTACKS_STARTED, FAIL, FAIL)
    assert run.verdict(Phase.ATTACKS_STARTED) is None
    run.probe(Phase.ATTACKS_STARTED, PASS, FAIL, FAIL)
    assert run.verdict(Phase.ATTACKS_STARTED) is None, "a success ends a run of failures"
    run.probe(Phase.ATTACKS_STARTED, FAIL)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c0", Finding.REFUTED)
    verdict = assess(run.status, run.spec, Phase.ATTACKS_STARTED).verdict
    assert "(3 failures in a row, failureThreshold 3)" in verdict.message  # type: ignore[union-attr]
    tally = run.tally()
    assert (tally.successes, tally.failures, tally.errors) == (2, 5, 0)
    assert (tally.consecutive_failures, tally.consecutive_successes) == (3, 0)


def test_an_error_neither_counts_as_nor_interrupts_a_run_of_failures() -> None:
    run = Run(experiment({"failureThreshold": 3})).probe(Phase.CREATED, PASS)
    run.probe(Phase.ATTACKS_STARTED, FAIL, ERROR, FAIL, ERROR)
    assert run.verdict(Phase.ATTACKS_STARTED) is None
    assert (run.tally().consecutive_failures, run.tally().consecutive_errors) == (2, 1)
    run.probe(Phase.ATTACKS_STARTED, FAIL)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c0", Finding.REFUTED)


def test_errors_in_a_row_leave_the_check_not_evaluated() -> None:
    run = Run(experiment({"failureThreshold": 2})).probe(Phase.CREATED, PASS)
    run.probe(Phase.ATTACKS_STARTED, ERROR, FAIL, ERROR)
    assert run.verdict(Phase.ATTACKS_STARTED) is None, "a failure ends a run of errors"
    run.probe(Phase.ATTACKS_STARTED, PASS, ERROR)
    assert run.verdict(Phase.ATTACKS_STARTED) is None, "a success ends a run of errors"
    run.probe(Phase.ATTACKS_STARTED, ERROR)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c0", Finding.NOT_EVALUATED)
    verdict = assess(run.status, run.spec, Phase.ATTACKS_STARTED).verdict
    assert verdict is not None
    assert verdict.message == (
        f"state check c0 could not be evaluated: {ERROR.message} "
        f"(2 in a row, failureThreshold 2); {NOT_EVALUATED_ADVICE}"
    )
    assert (run.tally().errors, run.tally().failures) == (4, 1)


def test_a_refuted_check_comes_before_one_that_could_not_be_evaluated() -> None:
    run = (
        Run(experiment({}, {}))
        .probe(Phase.CREATED, PASS, check=0)
        .probe(Phase.CREATED, PASS, check=1)
    )
    run.probe(Phase.ATTACKS_STARTED, ERROR, check=0).probe(Phase.ATTACKS_STARTED, FAIL, check=1)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c1", Finding.REFUTED)


def test_success_threshold_prepares_after_successes_in_a_row_and_no_error_since() -> None:
    run = Run(experiment({"successThreshold": 3}))
    run.probe(Phase.CREATED, PASS, PASS, FAIL, PASS, PASS)
    assert not assess(run.status, run.spec, Phase.CREATED).prepared
    run.probe(Phase.CREATED, PASS, ERROR)
    waiting = assess(run.status, run.spec, Phase.CREATED)
    assert not waiting.prepared, "the check could not be evaluated at its last probe"
    assert waiting.waiting_unevaluated
    assert ERROR.message in waiting.waiting_shown()
    run.probe(Phase.CREATED, PASS)
    assert assess(run.status, run.spec, Phase.CREATED).prepared


def test_waiting_on_failures_and_errors_is_not_waiting_on_the_checks_only() -> None:
    run = Run(experiment({}, {})).probe(Phase.CREATED, ERROR, check=0)
    run.probe(Phase.CREATED, FAIL, check=1)
    found = assess(run.status, run.spec, Phase.CREATED)
    assert [w.name for w in found.waiting] == ["c0", "c1"]
    assert not found.waiting_unevaluated


# -- when a check applies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phases", "applying"),
    [
        (["Throughout"], {"CREATED", "PREPARED", "ATTACKS_STARTED", "ATTACKS_STOPPED"}),
        (["BeforeAttacks"], {"CREATED", "PREPARED"}),
        (["DuringAttacks"], {"ATTACKS_STARTED"}),
        (["AfterAttacks"], {"ATTACKS_STOPPED"}),
        (["BeforeAttacks", "AfterAttacks"], {"CREATED", "PREPARED", "ATTACKS_STOPPED"}),
    ],
)
def test_a_check_applies_in_its_phases_only(phases: list[str], applying: set[str]) -> None:
    check = experiment({"phases": phases}).state_checks[0]
    assert {p for p in Phase if applies(check, p)} == applying


def test_a_check_that_applies_during_the_attacks_only_neither_prepares_nor_is_judged_before() -> (
    None
):
    run = Run(experiment({}, {"phases": ["DuringAttacks"]})).probe(Phase.CREATED, PASS, check=0)
    assert assess(run.status, run.spec, Phase.CREATED).prepared
    run.probe(Phase.ATTACKS_STARTED, FAIL, check=1)
    assert run.verdict(Phase.PREPARED) is None
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c1", Finding.REFUTED)


# -- degrading during the attacks, recovering in the cool-down --------------------------------

DEGRADES = {"mayDegradeDuringAttacks": True}


def test_a_check_allowed_to_degrade_passes_when_it_recovers_in_the_cool_down() -> None:
    run = Run(experiment(DEGRADES)).probe(Phase.CREATED, PASS).probe(Phase.PREPARED, PASS)
    run.probe(Phase.ATTACKS_STARTED, PASS, FAIL, FAIL)
    degraded_at = run.now - timedelta(seconds=1)
    assert run.verdict(Phase.ATTACKS_STARTED) is None
    run.probe(Phase.ATTACKS_STOPPED, FAIL)
    assert run.verdict(Phase.ATTACKS_STOPPED) is None
    assert assess(run.status, run.spec, Phase.ATTACKS_STOPPED).not_recovered is not None
    run.probe(Phase.ATTACKS_STOPPED, PASS)
    found = assess(run.status, run.spec, Phase.ATTACKS_STOPPED)
    assert (found.verdict, found.not_recovered) == (None, None)
    assert (run.tally().degraded_at, run.tally().recovered_at) == (degraded_at, run.now)
    # Recovered, it is judged like any other check again.
    run.probe(Phase.ATTACKS_STOPPED, FAIL)
    assert run.verdict(Phase.ATTACKS_STOPPED) == ("c0", Finding.REFUTED)


def test_a_check_allowed_to_degrade_fails_the_run_when_it_does_not_recover() -> None:
    run = Run(experiment({**DEGRADES, "successThreshold": 2}, cool_down=7))
    run.probe(Phase.CREATED, PASS, PASS).probe(Phase.ATTACKS_STARTED, FAIL)
    run.probe(Phase.ATTACKS_STOPPED, FAIL, PASS, FAIL, PASS)
    found = assess(run.status, run.spec, Phase.ATTACKS_STOPPED)
    assert found.verdict is None
    assert found.not_recovered is not None
    assert found.not_recovered.finding == Finding.NOT_RECOVERED
    assert found.not_recovered.message.startswith(
        "state check c0 did not recover within coolDownSeconds (7s): it degraded during the "
        "attacks (first failure at 00:00:03Z) and has not passed 2 times in a row "
        "(successThreshold) since; last: 3/3 ready; "
    )
    assert run.tally().recovered_at is None


def test_a_degradation_first_seen_in_the_cool_down_is_allowed_too() -> None:
    """The attack's effect can lag (a probe every intervalSeconds): until the check held
    again after the attacks, its failures are the attacks'."""
    run = Run(experiment(DEGRADES)).probe(Phase.CREATED, PASS).probe(Phase.ATTACKS_STARTED, PASS)
    run.probe(Phase.ATTACKS_STOPPED, FAIL)
    assert run.verdict(Phase.ATTACKS_STOPPED) is None
    assert run.tally().degraded_at == run.now


def test_a_check_that_never_degraded_holds_at_its_first_probe_of_the_cool_down() -> None:
    run = Run(experiment(DEGRADES)).probe(Phase.CREATED, PASS).probe(Phase.ATTACKS_STARTED, PASS)
    run.probe(Phase.ATTACKS_STOPPED, PASS)
    assert run.tally().recovered_at == run.now
    assert run.tally().degraded_at is None
    assert assess(run.status, run.spec, Phase.ATTACKS_STOPPED).not_recovered is None


def test_a_check_allowed_to_degrade_is_still_judged_before_the_attacks_and_on_errors() -> None:
    run = Run(experiment({**DEGRADES, "failureThreshold": 2})).probe(Phase.CREATED, PASS)
    run.probe(Phase.PREPARED, FAIL, FAIL)
    assert run.verdict(Phase.PREPARED) == ("c0", Finding.REFUTED)
    run = Run(experiment(DEGRADES)).probe(Phase.CREATED, PASS)
    run.probe(Phase.ATTACKS_STARTED, FAIL, ERROR)
    assert run.verdict(Phase.ATTACKS_STARTED) == ("c0", Finding.NOT_EVALUATED)


# -- samples ----------------------------------------------------------------------------------


def test_every_probe_is_sampled_with_its_outcome_value_and_unit() -> None:
    run = Run(experiment({})).probe(Phase.CREATED, PASS, FAIL, ERROR)
    tally = run.tally()
    assert tally.unit == "ready replicas"
    assert [(s.outcome, s.value) for s in tally.samples] == [
        (CheckOutcome.PASS, 3),
        (CheckOutcome.FAIL, 1),
        (CheckOutcome.ERROR, None),
    ]
    assert [s.at for s in tally.samples] == [T0 + timedelta(seconds=i) for i in (1, 2, 3)]


def samples(outcomes: Iterable[CheckOutcome]) -> list[CheckSample]:
    return [
        CheckSample(at=T0 + timedelta(seconds=i), outcome=o, value=float(i))
        for i, o in enumerate(outcomes)
    ]


def test_samples_are_thinned_evenly_keeping_the_first_and_the_last() -> None:
    kept: list[CheckSample] = []
    for sample in samples([CheckOutcome.PASS] * 1000):
        kept = thinned([*kept, sample])
        assert len(kept) <= MAX_CHECK_SAMPLES
    assert len(kept) == MAX_CHECK_SAMPLES
    assert (kept[0].value, kept[-1].value) == (0, 999)
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(kept)]
    # Evenly: no gap more than about twice another (1000 probes over 60 samples: ~17 s).
    assert max(gaps) <= 2.5 * min(gaps), gaps


def test_thinning_keeps_the_changes_of_outcome() -> None:
    outcomes = [CheckOutcome.PASS] * 500 + [CheckOutcome.FAIL] * 3 + [CheckOutcome.PASS] * 500
    kept: list[CheckSample] = []
    for sample in samples(outcomes):
        kept = thinned([*kept, sample])
    failed = [s.value for s in kept if s.outcome == CheckOutcome.FAIL]
    assert failed, "the degradation vanished from the series"
    # Where it began and where it ended.
    assert 500 in failed, failed
    assert 502 in failed, failed


# -- the spec -------------------------------------------------------------------------------


def check(**fields: Any) -> StateCheck:
    return StateCheck.model_validate({"name": "c", "type": "PodsReady", **fields})


def test_defaults_apply_throughout_with_thresholds_of_one() -> None:
    got = check()
    assert (got.phases, got.failure_threshold, got.success_threshold) == (["Throughout"], 1, 1)
    assert got.may_degrade_during_attacks is False
    assert got.to_k8s()["phases"] == ["Throughout"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phases": ["Throughout", "DuringAttacks"]}, "phases: Throughout covers every phase"),
        ({"phases": ["DuringAttacks", "DuringAttacks"]}, "phases: each phase once"),
        ({"phases": []}, "at least 1 item"),
        ({"phases": ["Sometimes"]}, "Input should be 'BeforeAttacks'"),
        ({"failureThreshold": 0}, "greater than or equal to 1"),
        ({"successThreshold": 101}, "less than or equal to 100"),
        (
            {"mayDegradeDuringAttacks": True, "phases": ["DuringAttacks"]},
            "mayDegradeDuringAttacks: the check must apply during and after the attacks",
        ),
        (
            {"mayDegradeDuringAttacks": True, "phases": ["BeforeAttacks", "AfterAttacks"]},
            "mayDegradeDuringAttacks: the check must apply during and after the attacks",
        ),
    ],
)
def test_bad_check_semantics_are_refused_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        check(**fields)


def test_a_check_allowed_to_degrade_needs_a_cool_down_of_at_least_its_interval() -> None:
    with pytest.raises(ValidationError, match="coolDownSeconds: a state check with mayDegrade"):
        experiment({**DEGRADES, "intervalSeconds": 5}, cool_down=4)
    assert experiment({**DEGRADES, "intervalSeconds": 5}, cool_down=5).state_checks


@pytest.mark.parametrize(
    "phases",
    [
        None,
        ["Throughout"],
        ["DuringAttacks"],
        ["AfterAttacks"],
        ["DuringAttacks", "AfterAttacks"],
        ["BeforeAttacks", "DuringAttacks", "AfterAttacks"],
        ["BeforeAttacks", "AfterAttacks"],
    ],
)
def test_the_crd_and_the_model_agree_on_what_may_degrade(phases: list[str] | None) -> None:
    fields = {"mayDegradeDuringAttacks": True, **({"phases": phases} if phases else {})}
    (rule,) = [
        r
        for r in crd_rules("spec", "stateChecks", "[]")
        if r.get("fieldPath") == ".mayDegradeDuringAttacks"
    ]
    try:
        check(**fields)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    assert cel_holds(rule["rule"], {"type": "PodsReady", **fields}) is model_accepts
