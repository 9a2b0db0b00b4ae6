"""The attack lifecycle, table-driven, without a cluster or a clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import AttackState, ExperimentRunStatus, Phase, Targets, UserInfo
from shakeout.engine.attacks import (
    OPEN_STATES,
    ROLLBACK_MAX_DELAY,
    ROLLBACK_QUICK_ATTEMPTS,
    ApplyOutcome,
    StopAction,
    StopKind,
    attacks_finished,
    begin_apply,
    begin_stop,
    due_actions,
    failure,
    next_due,
    record_applied,
    record_rollback,
    resume,
    retried_rollbacks,
    rollback_delay,
    rollback_pending,
    stop_actions,
)
from shakeout.engine.runs import Reason, Transition, enter, initial_status, refuse

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ExperimentSpec.model_validate(
    {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": [
            # Irreversible: closed when stopped, never rolled back.
            {"name": "kill", "type": "PodDelete", "durationSeconds": 10},
            # Reversible: rolled back when stopped.
            {
                "name": "scale",
                "type": "ScaleWorkload",
                "durationSeconds": 30,
                "scaleWorkload": {"workload": {"kind": "Deployment", "name": "w"}, "replicas": 0},
            },
        ],
    }
)
TARGETS = Targets(matched=3, selected=2, names=["web-1", "web-2"])
ALICE = UserInfo(username="alice", groups=["team-a"])
REVERSIBLE = {"kill": False, "scale": True}


def fresh() -> ExperimentRunStatus:
    return initial_status(SPEC, T0, 1)


def with_states(applied_at: datetime | None = T0, **states: AttackState) -> ExperimentRunStatus:
    """A status whose attacks are in the given states (past PENDING: applied at T0)."""
    status = fresh()
    status.attacks = [
        a.model_copy(
            update={
                "state": states[a.name],
                "applied_at": applied_at if states[a.name] != AttackState.PENDING else None,
            }
        )
        if a.name in states
        else a
        for a in status.attacks
    ]
    return status


def state_of(status: ExperimentRunStatus, name: str) -> str:
    return next(a.state for a in status.attacks if a.name == name)


def journaled() -> ExperimentRunStatus:
    return begin_apply(fresh(), {"scale": {"previous_replicas": 3}}, TARGETS, ["n2", "n1"])


# -- applying --------------------------------------------------------------------


def test_the_journal_is_every_attack_applying_with_its_rollback_data() -> None:
    status = fresh().model_copy(update={"agents": ["n1", "n3"]})
    new = begin_apply(status, {"scale": {"previous_replicas": 3}}, TARGETS, ["n2", "n1"])
    assert [a.state for a in new.attacks] == [AttackState.APPLYING] * 2
    assert [a.previous_replicas for a in new.attacks] == [None, 3]
    assert [a.applied_at for a in new.attacks] == [None, None]  # not applied yet
    assert new.targets == TARGETS
    assert new.agents == ["n1", "n2", "n3"]  # the union, sorted
    # Applying does nothing to the rest of the journal.
    assert new.phase == status.phase
    assert new.experiment == SPEC


@pytest.mark.parametrize(
    ("rollback_data", "problem"),
    [
        ({"ghost": {}}, "unknown attacks: ghost"),
        ({"scale": {"state": "Applied"}}, "not rollback data of scale: state"),
        ({"scale": {"applied_at": T0}}, "not rollback data of scale: applied_at"),
        ({"scale": {"replicas_before": 3}}, "not rollback data of scale: replicas_before"),
        ({"scale": {"previous_replicas": "three"}}, "previous_replicas"),
    ],
)
def test_the_journal_holds_only_rollback_data(
    rollback_data: dict[str, dict[str, object]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        begin_apply(fresh(), rollback_data, TARGETS, [])


def test_attacks_are_applied_once() -> None:
    with pytest.raises(ValueError, match="applied once: kill, scale already started"):
        begin_apply(journaled(), {}, TARGETS, [])


@pytest.mark.parametrize(
    ("outcomes", "states", "first_failure"),
    [
        (
            [ApplyOutcome("kill", targets=2), ApplyOutcome("scale", targets=1)],
            {"kill": AttackState.APPLIED, "scale": AttackState.APPLIED},
            None,
        ),
        (
            [ApplyOutcome("kill", targets=2), ApplyOutcome("scale", error="forbidden")],
            {"kill": AttackState.APPLIED, "scale": AttackState.FAILED},
            "attack scale failed: forbidden",
        ),
        (
            [ApplyOutcome("kill", error="timeout"), ApplyOutcome("scale", error="forbidden")],
            {"kill": AttackState.FAILED, "scale": AttackState.FAILED},
            "attack kill failed: timeout",  # the first, in the order given
        ),
        (  # part of the attacks (a resume re-applies only reversible ones)
            [ApplyOutcome("scale", targets=1)],
            {"kill": AttackState.APPLYING, "scale": AttackState.APPLIED},
            None,
        ),
    ],
)
def test_apply_outcomes(
    outcomes: list[ApplyOutcome], states: dict[str, str], first_failure: str | None
) -> None:
    now = T0 + timedelta(seconds=1)
    status, problem = record_applied(journaled(), outcomes, now)
    assert {a.name: a.state for a in status.attacks} == states
    assert problem == first_failure
    for outcome in outcomes:
        result = next(a for a in status.attacks if a.name == outcome.name)
        if outcome.error is None:
            assert (result.applied_at, result.targets) == (now, outcome.targets)
        else:
            assert (result.applied_at, result.message) == (None, outcome.error)


def test_an_apply_error_is_cut_to_the_size_of_a_message() -> None:
    status, problem = record_applied(journaled(), [ApplyOutcome("kill", error="x" * 5000)], T0)
    assert status.attacks[0].message == "x" * 1024
    assert problem == "attack kill failed: " + "x" * 1024


@pytest.mark.parametrize("state", [s for s in AttackState if s != AttackState.APPLYING])
def test_only_an_applying_attack_records_an_outcome(state: AttackState) -> None:
    with pytest.raises(ValueError, match=f"attack kill is {state}, not Applying"):
        record_applied(with_states(kill=state), [ApplyOutcome("kill")], T0)


def test_an_outcome_of_an_unknown_attack_is_refused() -> None:
    with pytest.raises(ValueError, match="no attack ghost"):
        record_applied(journaled(), [ApplyOutcome("ghost")], T0)


# -- stopping --------------------------------------------------------------------


# What a stop does to an attack, by its state, when reversible and when not.
STOPS: list[tuple[AttackState, StopKind | None, StopKind | None]] = [
    (AttackState.PENDING, StopKind.SKIP, StopKind.SKIP),
    (AttackState.APPLYING, StopKind.ROLL_BACK, StopKind.CLOSE),
    (AttackState.APPLIED, StopKind.ROLL_BACK, StopKind.CLOSE),
    (AttackState.ROLLING_BACK, StopKind.ROLL_BACK, StopKind.CLOSE),
    (AttackState.ROLLED_BACK, None, None),
    (AttackState.COMPLETED, None, None),
    # A reversible attack whose apply failed may have acted on some targets: rolled back.
    (AttackState.FAILED, StopKind.ROLL_BACK, None),
    (AttackState.SKIPPED, None, None),
    # A dry run's attack: closed when its window ends, never rolled back (nothing applied).
    (AttackState.SIMULATING, StopKind.END_SIMULATION, StopKind.END_SIMULATION),
    (AttackState.SIMULATED, None, None),
]


def test_the_stop_table_covers_every_state() -> None:
    assert {row[0] for row in STOPS} == set(AttackState)
    assert {row[0] for row in STOPS if row[1] is not None} == OPEN_STATES | {
        AttackState.FAILED,
        AttackState.SIMULATING,
    }


def test_a_failed_attack_already_rolled_back_is_not_stopped_again() -> None:
    status = with_states(scale=AttackState.FAILED)
    status.attacks[1].rolled_back_at = T0
    assert [a.name for a in stop_actions(status)] == ["kill"]  # kill is still pending
    with pytest.raises(ValueError, match="nothing to stop"):
        begin_stop(status, StopAction("scale", StopKind.ROLL_BACK))


@pytest.mark.parametrize(("state", "reversible", "irreversible"), STOPS)
def test_stop_actions(
    state: AttackState, reversible: StopKind | None, irreversible: StopKind | None
) -> None:
    status = with_states(kill=state, scale=state)
    expected = [
        StopAction(name, kind)
        for name, kind in (("kill", irreversible), ("scale", reversible))
        if kind is not None
    ]
    assert stop_actions(status) == expected


# After begin_stop: the state each kind of stop leaves.
STOPPED = {
    StopKind.SKIP: AttackState.SKIPPED,
    StopKind.CLOSE: AttackState.COMPLETED,
    StopKind.ROLL_BACK: AttackState.ROLLING_BACK,
    StopKind.END_SIMULATION: AttackState.SIMULATED,
}


@pytest.mark.parametrize(("state", "reversible", "irreversible"), STOPS)
@pytest.mark.parametrize("kind", list(StopKind))
def test_begin_stop_takes_only_the_stop_of_the_table(
    state: AttackState,
    reversible: StopKind | None,
    irreversible: StopKind | None,
    kind: StopKind,
) -> None:
    status = with_states(kill=state, scale=state)
    for name, allowed in (("kill", irreversible), ("scale", reversible)):
        if kind == allowed:
            assert state_of(begin_stop(status, StopAction(name, kind)), name) == STOPPED[kind]
        else:
            # An irreversible attack is never rolled back, one that may have acted is never
            # skipped, and a closed one is never stopped again.
            with pytest.raises(ValueError, match=f"attack {name} is"):
                begin_stop(status, StopAction(name, kind))


def test_a_rollback_is_recorded_with_its_time_and_note() -> None:
    status = with_states(scale=AttackState.ROLLING_BACK)
    status.attacks[1].message = "scaled to 0"
    later = T0 + timedelta(seconds=30)
    done = record_rollback(status, "scale", later, None)
    assert (done.attacks[1].state, done.attacks[1].rolled_back_at) == (
        AttackState.ROLLED_BACK,
        later,
    )
    assert done.attacks[1].message == "scaled to 0"  # no note: the message stays
    noted = record_rollback(status, "scale", later, "2 of 2 nodes restored")
    assert noted.attacks[1].message == "2 of 2 nodes restored"


def test_a_rollback_that_keeps_failing_is_pending_not_given_up() -> None:
    status = with_states(scale=AttackState.ROLLING_BACK)
    pending = rollback_pending(status, "scale", "conflict " + "y" * 2000, 5, T0)
    # Still RollingBack: its fault may be in place, and the rollback is retried.
    assert pending.attacks[1].state == AttackState.ROLLING_BACK
    assert pending.attacks[1].message.startswith("rollback failed 5 time(s), retrying: conflict")
    assert len(pending.attacks[1].message) == 1024
    condition = next(c for c in pending.conditions if c.type == "RollbackPending")
    assert (condition.status, condition.reason) == ("True", "RollbackRetrying")
    assert "attack scale" in condition.message
    assert retried_rollbacks(pending) is not None
    # It succeeds in the end: the condition says no rollback is pending any more.
    done = record_rollback(pending, "scale", T0 + timedelta(seconds=90), None)
    condition = next(c for c in done.conditions if c.type == "RollbackPending")
    assert (condition.status, condition.reason) == ("False", "RolledBack")
    assert retried_rollbacks(done) is not None  # the run still says a retry was needed


def test_the_pending_condition_stays_while_another_rollback_is_pending() -> None:
    status = with_states(scale=AttackState.ROLLING_BACK, kill=AttackState.ROLLING_BACK)
    status = rollback_pending(status, "scale", "refused", 5, T0)
    one_done = record_rollback(status, "kill", T0, None)
    condition = next(c for c in one_done.conditions if c.type == "RollbackPending")
    assert condition.status == "True"


def test_a_run_whose_rollbacks_never_failed_has_no_retry_to_report() -> None:
    status = with_states(scale=AttackState.ROLLING_BACK)
    assert retried_rollbacks(record_rollback(status, "scale", T0, None)) is None


@pytest.mark.parametrize("state", [s for s in AttackState if s != AttackState.ROLLING_BACK])
def test_only_a_rolling_back_attack_records_a_rollback(state: AttackState) -> None:
    status = with_states(scale=state)
    with pytest.raises(ValueError, match="not RollingBack"):
        record_rollback(status, "scale", T0, None)
    with pytest.raises(ValueError, match="not RollingBack"):
        rollback_pending(status, "scale", "boom", 5, T0)


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6), (4, 3.2), (7, 25.6), (8, 30.0), (500, 30.0)],
)
def test_rollback_retries_back_off_to_a_ceiling_and_never_give_up(
    attempt: int, delay: float
) -> None:
    assert rollback_delay(attempt) == pytest.approx(delay)
    assert ROLLBACK_MAX_DELAY == 30.0
    assert ROLLBACK_QUICK_ATTEMPTS == 5
    with pytest.raises(ValueError, match="< 0"):
        rollback_delay(-1)


# -- durations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "due", "upcoming"),
    [
        (9, [], 10),
        (10, [StopAction("kill", StopKind.CLOSE)], 30),
        (29, [StopAction("kill", StopKind.CLOSE)], 30),
        (30, [StopAction("kill", StopKind.CLOSE), StopAction("scale", StopKind.ROLL_BACK)], None),
    ],
)
def test_attacks_are_due_after_their_duration(
    after: int, due: list[StopAction], upcoming: int | None
) -> None:
    status = with_states(kill=AttackState.APPLIED, scale=AttackState.APPLIED)
    now = T0 + timedelta(seconds=after)
    assert due_actions(status, now) == due
    assert next_due(status, now) == (
        T0 + timedelta(seconds=upcoming) if upcoming is not None else None
    )


@pytest.mark.parametrize(
    "state", [s for s in AttackState if s not in (AttackState.APPLIED, AttackState.SIMULATING)]
)
def test_only_applied_attacks_fall_due(state: AttackState) -> None:
    status = with_states(kill=state, scale=state)
    assert due_actions(status, T0 + timedelta(days=1)) == []
    assert next_due(status, T0) is None


def test_an_applied_attack_without_a_time_is_due_at_once() -> None:
    status = with_states(applied_at=None, scale=AttackState.APPLIED)
    assert due_actions(status, T0) == [StopAction("scale", StopKind.ROLL_BACK)]


def test_durations_come_from_the_runs_snapshot() -> None:
    status = with_states(kill=AttackState.APPLIED).model_copy(update={"experiment": None})
    with pytest.raises(ValueError, match="no snapshot"):
        due_actions(status, T0)


@pytest.mark.parametrize(
    ("kill", "scale", "finished", "failed"),
    [
        (AttackState.PENDING, AttackState.PENDING, False, None),
        (AttackState.APPLYING, AttackState.APPLIED, False, None),
        (AttackState.COMPLETED, AttackState.APPLIED, False, None),
        (AttackState.COMPLETED, AttackState.ROLLING_BACK, False, None),
        (AttackState.COMPLETED, AttackState.ROLLED_BACK, True, None),
        (AttackState.SKIPPED, AttackState.SKIPPED, True, None),
        # A failed attack fails the run: its attacks never count as finished.
        (AttackState.FAILED, AttackState.ROLLED_BACK, False, "attack kill failed: boom"),
        (AttackState.COMPLETED, AttackState.FAILED, False, "attack scale failed: boom"),
    ],
)
def test_finished_and_failed(
    kill: AttackState, scale: AttackState, finished: bool, failed: str | None
) -> None:
    status = with_states(kill=kill, scale=scale)
    status.attacks = [
        a.model_copy(update={"message": "boom"}) if a.state == AttackState.FAILED else a
        for a in status.attacks
    ]
    assert attacks_finished(status) is finished
    assert failure(status) == failed


# -- after a restart ---------------------------------------------------------------


NOW = T0 + timedelta(seconds=5)


# (state, reversible) -> (state after resume, applied again)
RESUMES = [
    (AttackState.PENDING, True, AttackState.PENDING, False),
    (AttackState.PENDING, False, AttackState.PENDING, False),
    (AttackState.APPLYING, True, AttackState.APPLYING, True),
    # The safety rule: an irreversible attack may have acted; it is never applied twice.
    (AttackState.APPLYING, False, AttackState.APPLIED, False),
    (AttackState.APPLIED, True, AttackState.APPLIED, False),
    (AttackState.APPLIED, False, AttackState.APPLIED, False),
    (AttackState.ROLLING_BACK, True, AttackState.APPLIED, False),
    (AttackState.ROLLED_BACK, True, AttackState.ROLLED_BACK, False),
    (AttackState.COMPLETED, False, AttackState.COMPLETED, False),
    (AttackState.FAILED, True, AttackState.FAILED, False),
    (AttackState.FAILED, False, AttackState.FAILED, False),
    (AttackState.SKIPPED, True, AttackState.SKIPPED, False),
    (AttackState.SKIPPED, False, AttackState.SKIPPED, False),
]


@pytest.mark.parametrize(("state", "reversible", "after", "again"), RESUMES)
def test_resume(state: AttackState, reversible: bool, after: AttackState, again: bool) -> None:
    name = "scale" if reversible else "kill"
    status, reapply = resume(with_states(applied_at=None, **{name: state}), NOW)
    assert state_of(status, name) == after
    assert (name in reapply) is again


def test_an_irreversible_applying_attack_is_never_applied_again() -> None:
    status, reapply = resume(journaled(), NOW)
    assert "kill" not in reapply
    assert reapply == ["scale"]
    kill = status.attacks[0]
    assert (kill.state, kill.applied_at) == (AttackState.APPLIED, NOW)
    assert kill.message == "the operator restarted while applying it; it was not applied again"
    # Nor later: it is applied, so a stop closes it and its duration closes it.
    assert StopAction("kill", StopKind.CLOSE) in stop_actions(status)
    assert due_actions(status, NOW + timedelta(seconds=10)) == [StopAction("kill", StopKind.CLOSE)]
    # A second restart changes nothing about it.
    again, reapply = resume(status, NOW + timedelta(seconds=1))
    assert again.attacks[0] == kill
    assert reapply == ["scale"]


def test_a_reapplied_attack_is_recorded_like_a_first_apply() -> None:
    status, reapply = resume(journaled(), NOW)
    later = NOW + timedelta(seconds=1)
    applied, problem = record_applied(status, [ApplyOutcome(n, targets=1) for n in reapply], later)
    assert problem is None
    assert (applied.attacks[1].state, applied.attacks[1].applied_at) == (
        AttackState.APPLIED,
        later,
    )
    assert applied.attacks[1].previous_replicas == 3  # the journaled rollback value
    failed, problem = record_applied(status, [ApplyOutcome("scale", error="gone")], later)
    assert problem == "attack scale failed: gone"
    assert failure(failed) == "attack scale failed: gone"


def test_an_interrupted_rollback_is_rolled_back_again_on_its_clock() -> None:
    status, reapply = resume(with_states(scale=AttackState.ROLLING_BACK), NOW)
    assert reapply == []
    assert (status.attacks[1].state, status.attacks[1].applied_at) == (AttackState.APPLIED, T0)
    assert stop_actions(status)[-1] == StopAction("scale", StopKind.ROLL_BACK)
    assert due_actions(status, T0 + timedelta(seconds=30))[-1] == StopAction(
        "scale", StopKind.ROLL_BACK
    )


# -- a whole lifecycle, and the input never changes -------------------------------


def test_a_lifecycle_from_journal_to_finished() -> None:
    status = journaled()
    status, problem = record_applied(
        status, [ApplyOutcome("kill", targets=2), ApplyOutcome("scale", targets=1)], T0
    )
    assert problem is None
    assert not attacks_finished(status)
    for action in due_actions(status, T0 + timedelta(seconds=10)):
        status = begin_stop(status, action)
    assert [a.state for a in status.attacks] == [AttackState.COMPLETED, AttackState.APPLIED]
    (action,) = due_actions(status, T0 + timedelta(seconds=30))
    status = begin_stop(status, action)
    assert not attacks_finished(status)  # the rollback is under way
    status = record_rollback(status, "scale", T0 + timedelta(seconds=31), None)
    assert attacks_finished(status)
    assert failure(status) is None
    assert stop_actions(status) == []


CALLS: list[tuple[str, Callable[[ExperimentRunStatus], object]]] = [
    ("begin_apply", lambda s: begin_apply(s, {"scale": {"previous_replicas": 1}}, TARGETS, ["n"])),
    ("record_applied", lambda s: record_applied(s, [ApplyOutcome("kill", error="x")], NOW)),
    ("begin_stop", lambda s: begin_stop(s, StopAction("scale", StopKind.ROLL_BACK))),
    ("record_rollback", lambda s: record_rollback(s, "scale", NOW, "note")),
    ("rollback_pending", lambda s: rollback_pending(s, "scale", "x", 5, NOW)),
    ("resume", lambda s: resume(s, NOW)),
    ("enter", lambda s: enter(s, Transition(Phase.CANCELED, Reason.CANCELED, "c"), NOW, 1, ALICE)),
    ("refuse", lambda s: refuse(s, Reason.NO_TARGETS, "none", NOW, 1, started_by=ALICE)),
]
BEFORE = {
    "begin_apply": fresh,
    "record_applied": journaled,
    "begin_stop": lambda: with_states(scale=AttackState.APPLIED),
    "record_rollback": lambda: with_states(scale=AttackState.ROLLING_BACK),
    "rollback_pending": lambda: with_states(scale=AttackState.ROLLING_BACK),
    "resume": journaled,
    "enter": journaled,
    "refuse": fresh,
}


@pytest.mark.parametrize(("name", "call"), CALLS)
def test_the_input_status_is_never_changed(
    name: str, call: Callable[[ExperimentRunStatus], object]
) -> None:
    status = BEFORE[name]()
    before = status.model_dump()
    result = call(status)
    assert status.model_dump() == before
    new = result[0] if isinstance(result, tuple) else result
    assert isinstance(new, ExperimentRunStatus)
    assert new.model_dump() != before
    assert all(a is not b for a, b in zip(new.attacks, status.attacks, strict=True))


# -- the picked-up status, built whole ---------------------------------------------


def test_the_picked_up_status_is_built_whole() -> None:
    status = initial_status(
        SPEC,
        T0,
        1,
        targets=TARGETS,
        agents=["n2", "n1", "n2"],
        experiment_generation=7,
        started_by=ALICE,
    )
    assert status.phase == Phase.CREATED
    assert (status.experiment, status.experiment_generation) == (SPEC, 7)
    assert status.experiment is not SPEC
    assert (status.targets, status.agents, status.started_by) == (TARGETS, ["n1", "n2"], ALICE)
    assert [a.state for a in status.attacks] == [AttackState.PENDING] * 2
    assert [a.reversible for a in status.attacks] == [REVERSIBLE["kill"], REVERSIBLE["scale"]]


@pytest.mark.parametrize(
    ("transition", "recorded"),
    [
        (Transition(Phase.CANCELED, Reason.CANCELED, "canceled by a user"), ALICE),
        # Stop All and deletion are not a user's cancel of this run.
        (Transition(Phase.CANCELED, Reason.STOPPED_ALL, "Stop All"), None),
        (Transition(Phase.CANCELED, Reason.RUN_DELETED, "deleted"), None),
        (Transition(Phase.FAILED, Reason.ATTACK_FAILED, "boom"), None),
    ],
)
def test_who_canceled_is_recorded_only_for_a_cancel(
    transition: Transition, recorded: UserInfo | None
) -> None:
    assert enter(fresh(), transition, NOW, 1, canceled_by=ALICE).canceled_by == recorded


def test_a_refused_run_records_who_started_it() -> None:
    assert refuse(None, Reason.NO_TARGETS, "none", T0, 1, started_by=ALICE).started_by == ALICE
    assert refuse(None, Reason.NO_TARGETS, "none", T0, 1).started_by is None


def test_a_run_message_fits_its_field() -> None:
    errors = "; ".join(f"rollback of a{i} failed: " + "z" * 1024 for i in range(16))
    status = enter(fresh(), Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, errors), NOW, 1)
    assert status.message == errors[:4096]
    ExperimentRunStatus.model_validate(status.model_dump())  # within maxLength
