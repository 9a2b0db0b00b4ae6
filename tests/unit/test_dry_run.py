"""Dry runs: the engine's rules (engine/dryrun.py, the SIMULATING states of engine/attacks.py)
and the executor driven against the in-memory API server, asserting that nothing the
attacks act on is ever written, whatever happens to the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.labels import ConditionType
from shakeout.api.run import AttackState, ExperimentRunStatus, Phase, Targets
from shakeout.engine import attacks as lifecycle
from shakeout.engine import runs as engine
from shakeout.engine.dryrun import is_dry_run, listed, plan
from shakeout.engine.runs import DRY_RUN_MARK, Reason, Transition, announce_dry_run
from shakeout.kube.resources import CONFIG_MAPS, NETWORK_POLICIES, PODS
from shakeout.options import OPTIONS
from tests.unit.fake_kube import FakeApi, FakeHost
from tests.unit.test_executor import (
    ISOLATE,
    KILL,
    NS,
    PODS_AT_START,
    RUN,
    SCALE,
    UNPLUG,
    Clock,
    attacks_of,
    clock,  # noqa: F401  (a fixture)
    drive,
    events,
    fake,  # noqa: F401  (a fixture)
    hold_lock,
    lock_holder,
    spec,
    status_of,
    target_writes,
    wait_for,
)

Obj = dict[str, Any]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGETS = Targets(matched=3, selected=3, names=PODS_AT_START)
SHORT_ISOLATE: Obj = {**ISOLATE, "durationSeconds": 1}


def snapshot(*attacks: Obj) -> ExperimentSpec:
    return ExperimentSpec.model_validate(spec(*attacks))


def attack(raw: Obj) -> Attack:
    return Attack.model_validate(raw)


def started(experiment: ExperimentSpec, now: datetime = T0) -> ExperimentRunStatus:
    """A dry run's status as its attacks start, before they are journaled."""
    status = engine.initial_status(experiment, now, 1, targets=TARGETS, dry_run=True)
    status = engine.enter(status, Transition(Phase.PREPARED, Reason.PREPARED, "ok"), now, 1)
    go = Transition(Phase.ATTACKS_STARTED, Reason.ATTACKS_STARTED, "go", apply_attacks=True)
    return engine.enter(status, go, now, 1)


def simulating(experiment: ExperimentSpec, now: datetime = T0) -> ExperimentRunStatus:
    data = {"scale": {"previous_replicas": 3}} if experiment.attacks[0].name == "scale" else {}
    plans = {a.name: f"dry run: would {a.type}" for a in experiment.attacks}
    return lifecycle.begin_simulation(started(experiment, now), data, plans, TARGETS, [], now=now)


# -- the engine ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "recorded", "dry"),
    [(False, None, False), (True, None, True), (False, True, True), (True, True, True)],
)
def test_a_run_is_dry_when_its_spec_or_its_journal_says_so(
    requested: bool, recorded: bool | None, dry: bool
) -> None:
    assert is_dry_run(requested, ExperimentRunStatus(dry_run=recorded)) is dry


def test_a_dry_run_says_so_from_its_pick_up() -> None:
    status = engine.initial_status(snapshot(SCALE), T0, 1, dry_run=True)
    assert status.dry_run is True
    assert status.message is not None
    assert status.message.startswith(DRY_RUN_MARK)
    condition = next(c for c in status.conditions if c.type == ConditionType.DRY_RUN)
    assert condition.status == "True"
    # A real run has neither.
    real = engine.initial_status(snapshot(SCALE), T0, 1)
    assert real.dry_run is None
    assert all(c.type != ConditionType.DRY_RUN for c in real.conditions)
    assert not (real.message or "").startswith(DRY_RUN_MARK)


def test_a_dry_run_refused_at_pick_up_says_so() -> None:
    status = engine.refuse(None, Reason.NO_TARGETS, "no pods", T0, 1, dry_run=True)
    assert (status.phase, status.reason, status.dry_run) == (Phase.FAILED, "NoTargets", True)
    assert status.message == DRY_RUN_MARK + "no pods"


def test_announcing_a_dry_run_is_idempotent_and_renames_the_start_of_the_attacks() -> None:
    end = announce_dry_run(Transition(Phase.CANCELED, Reason.CANCELED, "canceled", rollback=True))
    assert end.message == DRY_RUN_MARK + "canceled"
    assert announce_dry_run(end) == end
    go = announce_dry_run(
        Transition(Phase.ATTACKS_STARTED, Reason.ATTACKS_STARTED, "starting 2", apply_attacks=True)
    )
    assert go.message.startswith(DRY_RUN_MARK)
    assert "starting" not in go.message
    assert "journaled with what it would do" in go.message


def test_simulated_attacks_are_journaled_with_their_plan_and_never_open() -> None:
    status = simulating(snapshot(SCALE, KILL))
    scale, kill = status.attacks
    assert (scale.state, kill.state) == (AttackState.SIMULATING, AttackState.SIMULATING)
    assert scale.previous_replicas == 3
    assert scale.applied_at == T0
    assert kill.message == "dry run: would PodDelete"
    assert status.targets == TARGETS
    # Nothing may act: no attack is open, none acted, none is a failure.
    assert not any(a.state in lifecycle.OPEN_STATES for a in status.attacks)
    assert lifecycle.acted(status) == []
    assert lifecycle.failure(status) is None
    # A dry run's attacks are journaled once, like a real run's.
    with pytest.raises(ValueError, match="applied once"):
        lifecycle.begin_simulation(status, {}, {}, TARGETS, [], now=T0)


def test_a_simulated_attack_lasts_its_duration_then_closes_without_a_rollback() -> None:
    status = simulating(snapshot(SCALE, KILL))  # both last 1 s
    assert not lifecycle.attacks_finished(status)
    assert lifecycle.due_actions(status, T0) == []
    assert lifecycle.next_due(status, T0) == T0 + timedelta(seconds=1)
    due = lifecycle.due_actions(status, T0 + timedelta(seconds=1))
    assert due == [
        lifecycle.StopAction("scale", lifecycle.StopKind.END_SIMULATION),
        lifecycle.StopAction("kill", lifecycle.StopKind.END_SIMULATION),
    ]
    for action in due:
        status = lifecycle.begin_stop(status, action)
    assert [a.state for a in status.attacks] == [AttackState.SIMULATED] * 2
    assert lifecycle.attacks_finished(status)
    assert lifecycle.stop_actions(status) == []
    # A rollback is never asked of a dry run's attack.
    with pytest.raises(ValueError, match="stopped by EndSimulation"):
        lifecycle.begin_stop(
            simulating(snapshot(SCALE)),
            lifecycle.StopAction("scale", lifecycle.StopKind.ROLL_BACK),
        )


def test_a_stopped_dry_run_closes_its_attacks_and_a_restart_applies_nothing() -> None:
    status = simulating(snapshot(SCALE, KILL))
    assert {a.kind for a in lifecycle.stop_actions(status)} == {lifecycle.StopKind.END_SIMULATION}
    resumed, again = lifecycle.resume(status, T0 + timedelta(seconds=5))
    assert again == []
    assert resumed.attacks == status.attacks
    # An end that skips the stop steps (a precondition) leaves no open end either.
    failed = engine.enter(status, Transition(Phase.FAILED, Reason.ATTACK_FAILED, "x"), T0, 1)
    assert [a.state for a in failed.attacks] == [AttackState.SIMULATED] * 2


def test_plans_say_what_each_attack_would_do() -> None:
    targets, nodes = ["web-0", "web-1"], ["node-a"]
    scale = plan(attack(SCALE), targets, nodes, {"previous_replicas": 3})
    assert scale == "dry run: would scale Deployment web from 3 to 0 replicas"
    assert plan(attack(KILL), targets, nodes, {}) == (
        "dry run: would delete 2 pod(s): web-0, web-1 (cannot be rolled back)"
    )
    isolate = plan(attack(ISOLATE), targets, nodes, {})
    assert "deny-all NetworkPolicy (direction Both)" in isolate
    assert "endpoints" in plan(attack(UNPLUG), targets, nodes, {})
    cordon = attack({"name": "c", "type": "NodeCordon", "durationSeconds": 1})
    assert plan(cordon, targets, nodes, {"nodes": ["node-a", "node-b"]}) == (
        "dry run: would cordon 2 node(s): node-a, node-b"
    )
    stress = attack({"name": "s", "type": "CpuStress", "durationSeconds": 1})
    assert plan(stress, targets, nodes, {}) == (
        "dry run: would hand CpuStress of 2 pod(s): web-0, web-1 to the node agents of "
        "1 node(s): node-a"
    )


def test_plans_list_at_most_ten_names() -> None:
    names = [f"p{i:02}" for i in range(25)]
    assert listed(names).endswith("p09 and 15 more")


# -- the executor: nothing the attacks act on is written -----------------------------------


@pytest.fixture
def world(request: pytest.FixtureRequest) -> FakeApi:
    """test_executor's cluster: a Deployment web of 3 replicas, its 3 pods, the switch on."""
    return cast(FakeApi, request.getfixturevalue("fake"))


@pytest.fixture
def fast_clock(request: pytest.FixtureRequest) -> Clock:
    """test_executor's clock, SPEED times faster than real time."""
    return cast(Clock, request.getfixturevalue("clock"))


def start_dry(world: FakeApi, experiment: Obj, *, status: Obj | None = None) -> Any:
    from shakeout.execution.executor import RunExecutor
    from shakeout.execution.live_runs import StopSignal

    world.add_experiment(NS, "exp", experiment)
    world.add_run(NS, RUN, "exp", status=status, dry_run=status is None)
    host = FakeHost(world, NS, RUN)
    return RunExecutor(host, StopSignal(), frozenset()), host


def assert_untouched(world: FakeApi) -> None:
    assert target_writes(world) == []
    assert world.replicas(NS, "web") == 3
    assert world.names(PODS, NS) == PODS_AT_START
    assert world.names(NETWORK_POLICIES, NS) == []
    # No rollback record: there is nothing to roll back.
    assert world.find("POST", r"/configmaps$") == []
    assert world.peek(CONFIG_MAPS, OPTIONS.namespace, f"shakeout-run-{RUN}") is None


async def test_a_dry_run_goes_through_every_phase_and_touches_nothing(world: FakeApi) -> None:
    checks = [
        {
            "name": "ready",
            "type": "WorkloadReady",
            "intervalSeconds": 1,
            "workloadReady": {"workload": {"kind": "Deployment", "name": "web"}, "minReady": 1},
        }
    ]
    experiment = spec(SCALE, KILL, SHORT_ISOLATE, UNPLUG, checks=checks)
    executor, host = start_dry(world, experiment)

    await drive(executor)

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    assert [e["phase"] for e in status["timeline"]] == [p.value for p in engine.ORDER]
    assert status["dryRun"] is True
    assert status["message"].startswith(DRY_RUN_MARK)
    assert status["targets"] == {"matched": 3, "selected": 3, "names": PODS_AT_START}
    # The checks ran, as in a run.
    assert status["stateChecks"][0]["successes"] >= 1
    attacks = attacks_of(world)
    assert {a["state"] for a in attacks.values()} == {"Simulated"}
    assert attacks["scale"]["previousReplicas"] == 3
    assert attacks["scale"]["message"] == (
        "dry run: would scale Deployment web from 3 to 0 replicas"
    )
    assert attacks["kill"]["message"].startswith("dry run: would delete 3 pod(s): web-0")
    assert all(a["targets"] == 0 for a in attacks.values())
    assert_untouched(world)
    # The lock was taken and given back, as a run does.
    assert world.find("PATCH", r"/chaosswitches/default/status$")
    assert lock_holder(world) is None
    # Every Event says it is a dry run.
    assert [reason for _, reason in events(host)] == [
        "Created",
        "Prepared",
        "AttacksStarted",
        "AttacksStopped",
        "Completed",
    ]
    assert all(e.message.startswith(DRY_RUN_MARK) for e in host.events)


async def test_a_canceled_dry_run_rolls_back_nothing(world: FakeApi) -> None:
    long_scale = {**SCALE, "durationSeconds": 600}
    executor, host = start_dry(world, spec(long_scale, KILL))
    import asyncio

    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: attacks_of(world).get("scale", {}).get("state") == "Simulating")
    host.cancel()
    executor.signal.wakeup.set()
    await task

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.CANCELED)
    assert status["message"].startswith(DRY_RUN_MARK)
    assert {a["state"] for a in attacks_of(world).values()} == {"Simulated"}
    assert_untouched(world)


@pytest.mark.parametrize("spec_says_dry", [True, False])
async def test_a_restarted_operator_never_applies_a_dry_runs_attacks(
    world: FakeApi, fast_clock: Clock, spec_says_dry: bool
) -> None:
    """The journal says Simulating (written by the operator before it was killed); the
    run's spec says dryRun, or (an object written before the field existed) does not."""
    journal = simulating(snapshot(SCALE, KILL), fast_clock()).to_k8s()
    world.add_experiment(NS, "exp", spec(SCALE, KILL))
    world.add_run(NS, RUN, "exp", status=journal, dry_run=spec_says_dry)
    hold_lock(world)
    from shakeout.execution.executor import RunExecutor
    from shakeout.execution.live_runs import StopSignal

    host = FakeHost(world, NS, RUN)
    await drive(RunExecutor(host, StopSignal(), frozenset()))

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    assert {a["state"] for a in attacks_of(world).values()} == {"Simulated"}
    assert_untouched(world)
    assert lock_holder(world) is None


async def test_a_dry_run_refused_at_pick_up_fails_and_says_so(world: FakeApi) -> None:
    executor, _ = start_dry(
        world, {**spec(SCALE), "blastRadius": {"selector": {"matchLabels": {"app": "none"}}}}
    )

    await drive(executor)

    status = status_of(world)
    assert (status["phase"], status["reason"], status["dryRun"]) == (
        Phase.FAILED,
        Reason.NO_TARGETS,
        True,
    )
    assert status["message"].startswith(DRY_RUN_MARK)
    assert_untouched(world)


def test_a_dry_runs_report_says_so_on_its_first_line() -> None:
    from shakeout.cli.report import DRY_RUN_HEADLINE, report

    run: Obj = {
        "metadata": {"name": "r", "namespace": NS},
        "spec": {"experimentRef": {"name": "exp"}, "dryRun": True},
        "status": {"phase": "COMPLETED", "dryRun": True},
    }
    assert report(run).splitlines()[0] == DRY_RUN_HEADLINE
    assert "nothing was applied" in DRY_RUN_HEADLINE
    real = {**run, "spec": {"experimentRef": {"name": "exp"}}, "status": {"phase": "COMPLETED"}}
    assert report(real).splitlines()[0].startswith("Run:")
