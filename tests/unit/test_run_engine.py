"""The run state machine, table-driven, without a cluster or a clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import AttackState, Phase
from shakeout.engine.checks import (
    NOT_EVALUATED_ADVICE,
    CheckAssessment,
    CheckVerdict,
    Finding,
    Probe,
    WaitingCheck,
    assess,
    record_check,
)
from shakeout.engine.runs import (
    Observation,
    Reason,
    decide,
    enter,
    initial_status,
    phase_entered,
    refuse,
    straight_to_attacks,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [
            {"name": "kill", "type": "PodDelete", "durationSeconds": 10},
            {
                "name": "scale",
                "type": "ScaleWorkload",
                "durationSeconds": 30,
                "scaleWorkload": {"workload": {"kind": "Deployment", "name": "w"}, "replicas": 0},
            },
        ],
        "stateChecks": [
            {"name": "up", "type": "PodsReady"},
        ],
        "warmUpSeconds": 5,
        "coolDownSeconds": 5,
        "preparationTimeoutSeconds": 60,
    }
)


# A check that applies before the attacks and does not hold yet.
WAITING = CheckAssessment(waiting=(WaitingCheck("up", "0/3 ready", unevaluated=False),))


UNEVALUATED = CheckAssessment(
    waiting=(WaitingCheck("up", "refused: no such Secret", unevaluated=True),)
)
NOT_RECOVERED = CheckAssessment(
    not_recovered=CheckVerdict("up", Finding.NOT_RECOVERED, "did not recover")
)


def failed(message: str, finding: Finding = Finding.REFUTED) -> CheckAssessment:
    return CheckAssessment(verdict=CheckVerdict("up", finding, message))


def obs(phase: Phase, after: float = 0, **kw: object) -> Observation:
    base = Observation(
        now=T0 + timedelta(seconds=after), phase=phase, phase_entered=T0, experiment=SPEC
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("observation", "phase", "reason"),
    [
        (obs(Phase.CREATED, checks=WAITING), None, None),
        (obs(Phase.CREATED), Phase.PREPARED, Reason.PREPARED),
        (obs(Phase.CREATED, agents_missing=("n1",), after=29), None, None),
        (
            obs(Phase.CREATED, agents_missing=("n1",), after=30),
            Phase.FAILED,
            Reason.AGENTS_NOT_CONNECTED,
        ),
        (obs(Phase.CREATED, checks=WAITING, after=59), None, None),
        (
            obs(Phase.CREATED, checks=WAITING, after=60),
            Phase.FAILED,
            Reason.PREPARATION_TIMED_OUT,
        ),
        # In CREATED a failing check is waited out, not fatal.
        (
            obs(Phase.CREATED, checks=replace(WAITING, verdict=failed("x").verdict)),
            None,
            None,
        ),
        # Waiting only on checks that could not be evaluated: the reason says so.
        (
            obs(Phase.CREATED, checks=UNEVALUATED, after=60),
            Phase.FAILED,
            Reason.STATE_CHECK_NOT_EVALUATED,
        ),
        (
            obs(Phase.CREATED, checks=replace(UNEVALUATED, waiting=WAITING.waiting), after=60),
            Phase.FAILED,
            Reason.PREPARATION_TIMED_OUT,
        ),
        (obs(Phase.PREPARED, after=4), None, None),
        (
            obs(Phase.PREPARED, checks=failed("x", Finding.NOT_EVALUATED)),
            Phase.FAILED,
            Reason.STATE_CHECK_NOT_EVALUATED,
        ),
        (
            obs(Phase.ATTACKS_STARTED, checks=failed("x", Finding.NOT_EVALUATED)),
            Phase.FAILED,
            Reason.STATE_CHECK_NOT_EVALUATED,
        ),
        # A check allowed to degrade has until the end of the cool-down to recover.
        (obs(Phase.ATTACKS_STOPPED, checks=NOT_RECOVERED, after=4), None, None),
        (
            obs(Phase.ATTACKS_STOPPED, checks=NOT_RECOVERED, after=5),
            Phase.FAILED,
            Reason.STATE_CHECK_FAILED,
        ),
        (obs(Phase.PREPARED, after=5), Phase.ATTACKS_STARTED, Reason.ATTACKS_STARTED),
        (
            obs(Phase.PREPARED, checks=failed("0/3 ready")),
            Phase.FAILED,
            Reason.STATE_CHECK_FAILED,
        ),
        (obs(Phase.ATTACKS_STARTED), None, None),
        (
            obs(Phase.ATTACKS_STARTED, attacks_finished=True),
            Phase.ATTACKS_STOPPED,
            Reason.ATTACKS_STOPPED,
        ),
        (obs(Phase.ATTACKS_STARTED, attack_failure="boom"), Phase.FAILED, Reason.ATTACK_FAILED),
        (
            obs(Phase.ATTACKS_STARTED, agents_missing=("n1",)),
            Phase.FAILED,
            Reason.AGENT_DISCONNECTED,
        ),
        (obs(Phase.ATTACKS_STARTED, rollback_failure="x"), Phase.FAILED, Reason.ROLLBACK_FAILED),
        (obs(Phase.ATTACKS_STOPPED, after=4), None, None),
        (obs(Phase.ATTACKS_STOPPED, after=5), Phase.COMPLETED, Reason.COMPLETED),
        (
            obs(Phase.ATTACKS_STOPPED, checks=failed("x")),
            Phase.FAILED,
            Reason.STATE_CHECK_FAILED,
        ),
        (obs(Phase.ATTACKS_STARTED, cancel_requested=True), Phase.CANCELED, Reason.CANCELED),
        (obs(Phase.CREATED, switch_enabled=False), Phase.CANCELED, Reason.STOPPED_ALL),
        (
            obs(Phase.ATTACKS_STARTED, deleting=True, cancel_requested=True),
            Phase.CANCELED,
            Reason.RUN_DELETED,
        ),
        (obs(Phase.ATTACKS_STARTED, shutting_down=True), Phase.FAILED, Reason.OPERATOR_SHUTDOWN),
        (obs(Phase.COMPLETED, cancel_requested=True), None, None),
        (obs(Phase.FAILED, switch_enabled=False), None, None),
    ],
)
def test_decide(observation: Observation, phase: Phase | None, reason: Reason | None) -> None:
    transition = decide(observation)
    if phase is None:
        assert transition is None
        return
    assert transition is not None
    assert (transition.phase, transition.reason) == (phase, reason)
    # Every end that may leave an attack behind rolls back first.
    if phase in (Phase.CANCELED, Phase.FAILED) and observation.phase != Phase.CREATED:
        assert transition.rollback


def test_a_full_run_moves_forward_with_timeline_and_conditions() -> None:
    status = initial_status(SPEC, T0, generation=1)
    assert status.phase == Phase.CREATED
    assert [a.state for a in status.attacks] == [AttackState.PENDING] * 2
    now = T0
    for phase in (Phase.PREPARED, Phase.ATTACKS_STARTED, Phase.ATTACKS_STOPPED, Phase.COMPLETED):
        now += timedelta(seconds=1)
        step = decide(obs(phase=Phase(status.phase), after=1000, attacks_finished=True))
        assert step is not None
        assert step.phase == phase
        status = enter(status, step, now, generation=1)
        assert phase_entered(status) == now
    assert [e.phase for e in status.timeline] == [
        "CREATED",
        "PREPARED",
        "ATTACKS_STARTED",
        "ATTACKS_STOPPED",
        "COMPLETED",
    ]
    conds = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conds["Succeeded"] == ("True", "Completed")
    assert (
        conds["Prepared"][0] == conds["AttacksStarted"][0] == conds["AttacksStopped"][0] == "True"
    )
    assert status.finished_at == now
    # kstatus: Current once done, not Stalled.
    assert conds["Reconciling"][0] == "False"
    assert conds["Stalled"][0] == "False"


def test_kstatus_conditions_say_in_progress_then_failed() -> None:
    status = initial_status(SPEC, T0, generation=1)
    conds = {c.type: c.status for c in status.conditions}
    assert (conds["Reconciling"], conds["Stalled"]) == ("True", "False")
    failed = refuse(status, Reason.STATE_CHECK_FAILED, "down", T0, 1)
    conds = {c.type: c.status for c in failed.conditions}
    assert (conds["Reconciling"], conds["Stalled"]) == ("False", "True")


def test_phases_never_go_back_and_terminal_is_final() -> None:
    status = initial_status(SPEC, T0, generation=1)
    prepared = decide(obs(Phase.CREATED))
    assert prepared is not None
    status = enter(status, prepared, T0, 1)
    with pytest.raises(ValueError, match="would not move forward"):
        enter(status, prepared, T0, 1)
    failed = refuse(status, Reason.NO_TARGETS, "none", T0, 1)
    assert failed.phase == Phase.FAILED
    assert {a.state for a in failed.attacks} == {AttackState.SKIPPED}
    with pytest.raises(ValueError, match="terminal phase is final"):
        enter(failed, prepared, T0, 1)


def test_refused_run_is_failed_with_reason_and_nothing_attacked() -> None:
    status = refuse(None, Reason.ANOTHER_RUN_ACTIVE, "team-a/r1 holds the lock", T0, 1)
    assert (status.phase, status.reason) == (Phase.FAILED, "AnotherRunActive")
    assert "team-a/r1" in (status.message or "")
    assert status.attacks == []
    summary = next(c for c in status.conditions if c.type == "Succeeded")
    assert (summary.status, summary.reason) == ("False", "AnotherRunActive")


def test_check_tallies_and_first_success() -> None:
    check = SPEC.state_checks[0]
    status = initial_status(SPEC, T0, 1)
    assert not assess(status, SPEC, Phase.CREATED).prepared
    status = record_check(status, check, Probe.judged(False, "0/3"), T0, Phase.CREATED)
    assert not assess(status, SPEC, Phase.CREATED).prepared
    status = record_check(status, check, Probe.judged(True, "3/3"), T0, Phase.CREATED)
    assert assess(status, SPEC, Phase.CREATED).prepared
    tally = status.state_checks[0]
    assert (tally.successes, tally.failures, tally.last_message) == (1, 1, "3/3")


@pytest.mark.parametrize(
    ("changes", "straight"),
    [
        ({"stateChecks": [], "warmUpSeconds": 0}, True),
        ({"stateChecks": [], "warmUpSeconds": 1}, False),  # a warm-up to wait
        ({"warmUpSeconds": 0}, False),  # a state check to pass first
        (  # a node agent to wait for
            {
                "stateChecks": [],
                "warmUpSeconds": 0,
                "attacks": [{"name": "cpu", "type": "CpuStress", "durationSeconds": 10}],
            },
            False,
        ),
    ],
)
def test_straight_to_attacks(changes: dict[str, object], straight: bool) -> None:
    spec = ExperimentSpec.model_validate({**SPEC.model_dump(by_alias=True), **changes})
    assert straight_to_attacks(spec) is straight


def test_a_preparation_that_waited_on_checks_that_cannot_be_evaluated_says_so() -> None:
    ended = decide(obs(Phase.CREATED, checks=UNEVALUATED, after=60))
    assert ended is not None
    assert ended.message == (
        "not prepared after 60s: state checks could not be evaluated: "
        f"up (refused: no such Secret); {NOT_EVALUATED_ADVICE}"
    )
    waited = decide(obs(Phase.CREATED, checks=WAITING, after=60))
    assert waited is not None
    assert waited.message == (
        "not prepared after 60s: waited for state checks to hold (successThreshold successes "
        "in a row): up (0/3 ready)"
    )
