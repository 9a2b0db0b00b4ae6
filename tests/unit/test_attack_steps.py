"""Attack steps and a blast radius per attack: the pure rules (engine/steps.py, the journal
of one step in engine/attacks.py) table-tested, then runs driven by the executor against
the in-memory API server of test_executor (its clock SPEED times faster)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import AttackState, ExperimentRunStatus, Phase, TimelineEntry
from shakeout.api.switch import ChaosSwitchSpec
from shakeout.cli.reports.html_page import render_html
from shakeout.cli.reports.junit import render_junit
from shakeout.cli.reports.markdown import render_markdown
from shakeout.engine import attacks as lifecycle
from shakeout.engine import steps
from shakeout.engine.policies import NamespaceFacts
from shakeout.engine.preconditions import (
    PICKUP,
    RunFacts,
    blast_radius_has_targets,
    evaluate,
    run_seconds,
)
from shakeout.engine.runs import Reason, initial_status
from shakeout.engine.targets import Selection
from shakeout.execution.executor import RunExecutor
from shakeout.execution.live_runs import StopSignal
from shakeout.kube.resources import SWITCHES
from tests.unit.fake_kube import FakeApi, FakeHost
from tests.unit.test_executor import (
    NS,
    RUN,
    attacks_of,
    clock,  # noqa: F401  (a fixture)
    drive,
    fake,  # noqa: F401  (a fixture)
    scale_writes,
    start,
    status_of,
    wait_for,
)
from tests.unit.test_reports import at as report_at
from tests.unit.test_reports import full_run

Obj = dict[str, Any]
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# The worked example of docs/api.md in small: step 1 at once, step 2 two seconds after the
# attacks started, step 3 when step 2 has ended.
THREE_STEPS: Obj = {
    "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
    "coolDownSeconds": 0,
    "attacks": [
        {"name": "step-1", "type": "PodDelete", "durationSeconds": 3},
        {
            "name": "step-2",
            "type": "ScaleWorkload",
            "durationSeconds": 4,
            "startAfterSeconds": 2,
            "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}, "replicas": 1},
        },
        {
            "name": "step-3",
            "type": "NetworkIsolation",
            "durationSeconds": 2,
            "after": ["step-2"],
        },
    ],
}
SPEC = ExperimentSpec.model_validate(THREE_STEPS)


def stretched(experiment: Obj, factor: int) -> Obj:
    """The experiment with every duration and offset `factor` times longer."""
    attacks = []
    for attack in experiment["attacks"]:
        longer = {**attack, "durationSeconds": attack["durationSeconds"] * factor}
        if "startAfterSeconds" in attack:
            longer["startAfterSeconds"] = attack["startAfterSeconds"] * factor
        attacks.append(longer)
    return {**experiment, "attacks": attacks}


# The runs' steps, five times longer (step-1 0-15 s, step-2 10-30 s, step-3 30-40 s of the
# fast clock, 2 s of real time): a loaded machine may be late by LATE of the fast clock
# (half a second of real time) and by twice what it was late for the first step, never
# early.
STEPS_RUN = stretched(THREE_STEPS, 5)
LATE = 10.0


def begun(spec: ExperimentSpec = SPEC, at: datetime = T0) -> ExperimentRunStatus:
    """A run that entered ATTACKS_STARTED at `at`, every attack PENDING."""
    status = initial_status(spec, at - timedelta(seconds=5), 1)
    status.phase = Phase.ATTACKS_STARTED
    status.timeline.append(TimelineEntry(phase=Phase.ATTACKS_STARTED, time=at))
    return status


def set_attack(status: ExperimentRunStatus, name: str, **changes: object) -> None:
    i = next(i for i, r in enumerate(status.attacks) if r.name == name)
    status.attacks[i] = status.attacks[i].model_copy(update=changes)


# -- the schedule -------------------------------------------------------------------------


def test_the_schedule_is_the_longest_chain_of_offsets_and_durations() -> None:
    assert steps.schedule_offsets(SPEC) == {
        "step-1": (0, 3),
        "step-2": (2, 6),
        "step-3": (6, 8),
    }
    assert steps.schedule_seconds(SPEC) == 8
    # maxRunSeconds counts the schedule, not the longest attack (4 s).
    assert run_seconds(SPEC) == SPEC.warm_up_seconds + 8 + SPEC.cool_down_seconds


def test_without_steps_the_schedule_is_the_longest_attack() -> None:
    spec = ExperimentSpec.model_validate(
        {
            **THREE_STEPS,
            "attacks": [
                {"name": "a", "type": "PodDelete", "durationSeconds": 3},
                {"name": "b", "type": "PodDelete", "durationSeconds": 7},
            ],
        }
    )
    assert not steps.has_steps(spec)
    assert steps.first_starts(spec) == ["a", "b"]
    assert steps.schedule_seconds(spec) == 7


def test_an_offset_after_several_attacks_counts_from_the_last_to_end() -> None:
    spec = ExperimentSpec.model_validate(
        {
            **THREE_STEPS,
            "attacks": [
                {"name": "a", "type": "PodDelete", "durationSeconds": 3},
                {"name": "b", "type": "PodDelete", "durationSeconds": 5, "startAfterSeconds": 1},
                {
                    "name": "c",
                    "type": "PodDelete",
                    "durationSeconds": 1,
                    "after": ["a", "b"],
                    "startAfterSeconds": 2,
                },
            ],
        }
    )
    assert steps.schedule_offsets(spec)["c"] == (8, 9)
    status = begun(spec)
    set_attack(status, "a", state=AttackState.COMPLETED, ended_at=T0 + timedelta(seconds=3))
    set_attack(status, "b", state=AttackState.APPLIED, applied_at=T0 + timedelta(seconds=1))
    assert "c" not in steps.start_times(status)  # b has not ended
    set_attack(status, "b", state=AttackState.ROLLED_BACK, ended_at=T0 + timedelta(seconds=7))
    assert steps.start_times(status)["c"] == T0 + timedelta(seconds=9)


def test_no_attack_is_due_before_the_attacks_start() -> None:
    status = initial_status(SPEC, T0, 1)
    assert steps.start_times(status) == {}
    assert steps.due_starts(status, T0 + timedelta(hours=1)) == []
    assert steps.next_start(status, T0) is None


@pytest.mark.parametrize(
    ("seconds", "due"),
    [(0, ["step-1"]), (1.9, ["step-1"]), (2, ["step-1", "step-2"])],
)
def test_an_attack_is_due_at_its_offset_from_the_start_of_the_attacks(
    seconds: float, due: list[str]
) -> None:
    status = begun()
    assert steps.due_starts(status, T0 + timedelta(seconds=seconds)) == due


def test_the_next_start_is_the_earliest_known_one_after_now() -> None:
    status = begun()
    set_attack(status, "step-1", state=AttackState.APPLIED, applied_at=T0)
    assert steps.next_start(status, T0) == T0 + timedelta(seconds=2)
    # step-3 waits for step-2 to end: no time is known for it yet.
    set_attack(status, "step-2", state=AttackState.APPLIED, applied_at=T0 + timedelta(seconds=2))
    assert steps.next_start(status, T0 + timedelta(seconds=2)) is None


@pytest.mark.parametrize(
    ("ended_state", "kind"),
    [
        (AttackState.ROLLED_BACK, "rolled back"),
        (AttackState.COMPLETED, "closed"),
        (AttackState.SIMULATED, "a dry run's window closed"),
    ],
)
def test_an_attack_after_another_is_due_when_that_one_ended(
    ended_state: AttackState, kind: str
) -> None:
    status = begun()
    ended = T0 + timedelta(seconds=6.5)
    set_attack(status, "step-1", state=AttackState.COMPLETED, ended_at=T0 + timedelta(seconds=3))
    set_attack(status, "step-2", state=AttackState.APPLIED, applied_at=T0 + timedelta(seconds=2))
    assert "step-3" not in steps.due_starts(status, T0 + timedelta(minutes=5)), kind
    set_attack(status, "step-2", state=ended_state, ended_at=ended)
    assert steps.due_starts(status, ended - timedelta(seconds=0.1)) == []
    assert steps.due_starts(status, ended) == ["step-3"]


@pytest.mark.parametrize("state", [AttackState.SKIPPED, AttackState.FAILED])
def test_an_attack_after_one_that_never_ended_never_starts(state: AttackState) -> None:
    """A skipped or failed attack stops the run: what waits for it is skipped, not started."""
    status = begun()
    set_attack(status, "step-2", state=state)
    assert "step-3" not in steps.start_times(status)


def test_a_stop_skips_the_pending_steps_and_stops_the_started_ones() -> None:
    status = begun()
    set_attack(status, "step-1", state=AttackState.COMPLETED, ended_at=T0)
    set_attack(status, "step-2", state=AttackState.APPLIED, applied_at=T0)
    assert lifecycle.stop_actions(status) == [
        lifecycle.StopAction("step-2", lifecycle.StopKind.ROLL_BACK),
        lifecycle.StopAction("step-3", lifecycle.StopKind.SKIP),
    ]
    assert not lifecycle.attacks_finished(status)  # step-3 is still to come


# -- the journal of one step -----------------------------------------------------------


def test_one_step_is_journaled_alone_with_its_own_targets() -> None:
    status = begun()
    set_attack(status, "step-1", state=AttackState.APPLIED, applied_at=T0)
    pods = [f"web-{i}" for i in range(8, 0, -1)]
    new = lifecycle.begin_apply(
        status,
        {"step-2": {"previous_replicas": 3}},
        None,
        [],
        names=["step-2"],
        attack_targets={"step-2": pods},
    )
    states = {r.name: r.state for r in new.attacks}
    assert states == {
        "step-1": AttackState.APPLIED,
        "step-2": AttackState.APPLYING,
        "step-3": AttackState.PENDING,
    }
    step2 = next(r for r in new.attacks if r.name == "step-2")
    assert step2.previous_replicas == 3
    assert step2.target_names == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    assert new.targets == status.targets  # None: the run's targets as they were


def test_a_step_already_started_is_not_applied_again() -> None:
    status = begun()
    set_attack(status, "step-1", state=AttackState.APPLIED, applied_at=T0)
    with pytest.raises(ValueError, match="applied once: step-1"):
        lifecycle.begin_apply(status, {}, None, [], names=["step-1"])
    with pytest.raises(ValueError, match="no attack nope"):
        lifecycle.begin_apply(status, {}, None, [], names=["nope"])
    with pytest.raises(ValueError, match="unknown attacks: step-3"):
        lifecycle.begin_apply(status, {"step-3": {}}, None, [], names=["step-2"])


def test_a_dry_run_simulates_one_step_alone() -> None:
    status = begun()
    at = T0 + timedelta(seconds=2)
    new = lifecycle.begin_simulation(
        status, {}, {"step-2": "dry run: would scale"}, None, [], now=at, names=["step-2"]
    )
    step2 = next(r for r in new.attacks if r.name == "step-2")
    assert (step2.state, step2.applied_at, step2.message) == (
        AttackState.SIMULATING,
        at,
        "dry run: would scale",
    )
    assert {r.state for r in new.attacks if r.name != "step-2"} == {AttackState.PENDING}


def test_an_attack_ends_when_it_is_rolled_back_or_closed() -> None:
    status = begun()
    set_attack(status, "step-1", state=AttackState.APPLIED, applied_at=T0)
    set_attack(status, "step-2", state=AttackState.APPLIED, applied_at=T0)
    at = T0 + timedelta(seconds=3)
    closed = lifecycle.begin_stop(
        status, lifecycle.StopAction("step-1", lifecycle.StopKind.CLOSE), at
    )
    assert next(r for r in closed.attacks if r.name == "step-1").ended_at == at
    rolling = lifecycle.begin_stop(
        closed, lifecycle.StopAction("step-2", lifecycle.StopKind.ROLL_BACK), at
    )
    assert next(r for r in rolling.attacks if r.name == "step-2").ended_at is None
    later = at + timedelta(seconds=1)
    rolled = lifecycle.record_rollback(rolling, "step-2", later)
    step2 = next(r for r in rolled.attacks if r.name == "step-2")
    assert (step2.rolled_back_at, step2.ended_at) == (later, later)


# -- a blast radius per attack ------------------------------------------------------------


def test_the_union_counts_each_pod_once() -> None:
    union = steps.union(
        ["a", "b", "c", "b", "d"],
        [Selection(matched=3, targets=("a", "b")), Selection(matched=2, targets=("b", "d"))],
    )
    assert union == Selection(matched=4, targets=("a", "b", "d"))


def test_an_attack_whose_own_blast_radius_takes_no_pod_is_refused() -> None:
    facts = RunFacts(
        namespace=NS,
        experiment_name="exp",
        namespace_facts=NamespaceFacts(NS, {}),
        experiment=SPEC,
        selection=Selection(matched=2, targets=("web-0",)),
        attacks_without_targets=("step-2",),
    )
    refusal = blast_radius_has_targets(facts)
    assert refusal is not None
    assert refusal.reason == Reason.NO_TARGETS
    assert "attack(s) step-2" in refusal.message


# -- runs --------------------------------------------------------------------------------


@pytest.fixture
def world(request: pytest.FixtureRequest) -> FakeApi:
    """test_executor's cluster (its clock SPEED times faster): a Deployment web of 3
    replicas, its 3 pods web-0..2, the switch on."""
    return cast(FakeApi, request.getfixturevalue("fake"))


def seconds_after(status: Obj, time: str) -> float:
    started = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STARTED")
    return (datetime.fromisoformat(time) - datetime.fromisoformat(started)).total_seconds()


async def test_steps_start_in_order_at_their_offsets(world: FakeApi) -> None:
    executor, host = start(world, STEPS_RUN)

    await drive(executor)

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    attacks = attacks_of(world)
    offsets = {n: seconds_after(status, a["appliedAt"]) for n, a in attacks.items()}
    # The fast clock: one real loop turn is a second of it at most (MAX_IDLE 0.05 s).
    # step-1 is due at 0: how late it was recorded is how slow this machine is now.
    slack = LATE + 2 * offsets["step-1"]
    assert 10 <= offsets["step-2"] < 10 + slack, offsets
    step2_end = seconds_after(status, attacks["step-2"]["endedAt"])
    assert step2_end >= offsets["step-2"] + 20
    assert step2_end <= offsets["step-3"] < step2_end + slack, (offsets, step2_end)
    # ATTACKS_STOPPED once the last attack ended.
    stopped = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STOPPED")
    assert seconds_after(status, stopped) >= seconds_after(status, attacks["step-3"]["endedAt"])
    assert [a["state"] for a in attacks.values()] == ["Completed", "RolledBack", "RolledBack"]
    assert scale_writes(world) == [1, 3]
    # Each attack journaled its own targets.
    assert attacks["step-1"]["targetNames"] == ["web-0", "web-1", "web-2"]
    # step-1 deleted every pod (nothing recreates them here): the later steps, resolved
    # when they start, have no target, and start anyway (STEP_START).
    assert attacks["step-3"]["targetNames"] == []
    assert ("Normal", "AttacksStarted") in [(e.type, e.reason) for e in host.events]


async def test_a_cancel_between_steps_skips_the_pending_ones(world: FakeApi) -> None:
    executor, host = start(world, STEPS_RUN)
    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: attacks_of(world).get("step-2", {}).get("state") == "Applied")
    host.cancel()
    await task

    status = status_of(world)
    assert status["phase"] == Phase.CANCELED
    states = {n: a["state"] for n, a in attacks_of(world).items()}
    assert states["step-2"] == "RolledBack"
    assert states["step-3"] == "Skipped"
    assert world.replicas(NS, "web") == 3


async def test_a_restart_between_steps_starts_the_pending_ones_when_due(world: FakeApi) -> None:
    """The operator restarts after step 1 started: the journal has step-2 and step-3
    PENDING; the new executor starts them at their times, step 1 is not applied again."""

    executor, _ = start(world, STEPS_RUN)
    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: attacks_of(world).get("step-1", {}).get("state") == "Applied")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deletes = len(world.find("DELETE", r"/pods/"))
    await drive(RunExecutor(FakeHost(world, NS, RUN), StopSignal(), frozenset()))
    status = status_of(world)
    assert status["phase"] == Phase.COMPLETED
    assert len(world.find("DELETE", r"/pods/")) == deletes  # the irreversible one: once
    assert {a["state"] for a in attacks_of(world).values()} == {"Completed", "RolledBack"}
    assert scale_writes(world) == [1, 3]


async def test_a_dry_run_simulates_each_step_at_its_time(world: FakeApi) -> None:
    world.add_experiment(NS, "exp", STEPS_RUN)
    world.add_run(NS, RUN, "exp", dry_run=True)
    await drive(RunExecutor(FakeHost(world, NS, RUN), StopSignal(), frozenset()))

    status = status_of(world)
    assert status["phase"] == Phase.COMPLETED
    attacks = attacks_of(world)
    assert {a["state"] for a in attacks.values()} == {"Simulated"}
    assert seconds_after(status, attacks["step-2"]["appliedAt"]) >= 10
    assert seconds_after(status, attacks["step-3"]["appliedAt"]) >= seconds_after(
        status, attacks["step-2"]["endedAt"]
    )
    assert scale_writes(world) == []


PER_ATTACK: Obj = {
    "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
    "coolDownSeconds": 0,
    "attacks": [
        {
            "name": "kill-web",
            "type": "PodDelete",
            "durationSeconds": 1,
            "blastRadius": {
                "selector": {"matchLabels": {"app": "web"}},
                "limit": {"count": 1},
            },
        },
        {
            "name": "kill-db",
            "type": "PodDelete",
            "durationSeconds": 1,
            "blastRadius": {"selector": {"matchLabels": {"app": "db"}}},
        },
    ],
}


async def test_attacks_with_their_own_blast_radius_hit_their_own_pods(world: FakeApi) -> None:
    world.add_pod(NS, "db-0", {"app": "db"})
    executor, _ = start(world, PER_ATTACK)

    await drive(executor)

    status = status_of(world)
    assert status["phase"] == Phase.COMPLETED
    attacks = attacks_of(world)
    assert attacks["kill-db"]["targetNames"] == ["db-0"]
    (web,) = attacks["kill-web"]["targetNames"]
    assert web.startswith("web-")
    deleted = sorted(c.path.rsplit("/", 1)[1] for c in world.find("DELETE", r"/pods/"))
    assert deleted == sorted(["db-0", web])
    # The run's targets are the union: 4 pods matched, 2 targeted.
    assert status["targets"] == {"matched": 4, "selected": 2, "names": sorted(["db-0", web])}


async def test_the_caps_apply_to_the_union_of_every_attacks_targets(world: FakeApi) -> None:
    """Each attack alone takes one pod; together two, over maxTargets 1: refused."""
    world.add_pod(NS, "db-0", {"app": "db"})
    world.edit(SWITCHES, None, "default", {"spec": {"caps": {"maxTargets": 1}}})
    executor, _ = start(world, PER_ATTACK)

    await drive(executor)

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.OVER_TARGET_CAP)
    assert "would target 2 pods" in status["message"]
    assert world.find("DELETE", r"/pods/") == []


def test_the_pickup_refuses_an_attack_without_targets_before_the_caps() -> None:
    facts = RunFacts(
        namespace=NS,
        experiment_name="exp",
        namespace_facts=NamespaceFacts(NS, {}),
        experiment=ExperimentSpec.model_validate(PER_ATTACK),
        switch=ChaosSwitchSpec(enabled=True),
        selection=Selection(matched=3, targets=("web-0",)),
        attacks_without_targets=("kill-db",),
    )
    refusal = evaluate(PICKUP, facts)
    assert refusal is not None
    assert refusal.reason == Reason.NO_TARGETS


# -- the report -----------------------------------------------------------------------------


def stepped_run() -> Obj:
    """A completed run of three steps, listed out of order, the last never started."""

    def attack(name: str, start: int | None, end: int | None, pods: list[str]) -> Obj:
        return {
            "name": name,
            "type": "PodDelete",
            "reversible": False,
            "state": "Completed" if start is not None else "Skipped",
            "appliedAt": report_at(start) if start is not None else None,
            "endedAt": report_at(end) if end is not None else None,
            "targetNames": pods,
        }

    return full_run(
        attacks=[
            attack("late", 16, 18, ["db-0"]),
            attack("first", 10, 13, ["web-1", "web-2"]),
            attack("never", None, None, []),
        ]
    )


def test_the_markdown_timeline_lists_the_steps_in_the_order_they_started() -> None:
    text = render_markdown(stepped_run())
    table = text.split("Attacks over time:", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in rows[1:]]
    assert [(c[0], c[2], c[4]) for c in cells] == [
        ("first", "+0 s", "web-1, web-2"),
        ("late", "+6 s", "db-0"),
    ]
    assert cells[1][3] == report_at(18).replace("+00:00", "Z")


def test_the_html_and_junit_reports_show_each_attacks_times_and_targets() -> None:
    page = render_html(stepped_run())
    steps_table = page.split('id="attack-steps"', 1)[1].split("</table>", 1)[0]
    assert steps_table.index('data-attack-step="first"') < steps_table.index(
        'data-attack-step="late"'
    )
    assert "never" not in steps_table
    assert "+6 s" in steps_table
    assert "db-0" in steps_table
    junit = render_junit(stepped_run())
    assert "targets: db-0" in junit
    assert f"started {report_at(16).replace('+00:00', 'Z')}" in junit


async def test_agents_are_needed_on_the_nodes_of_node_level_attacks_only(world: FakeApi) -> None:
    """A PodDelete of its own pods on node-1 and a CpuStress of web's on node-1 and node-2:
    the agents of the stress' nodes are needed, not those of every target."""
    from shakeout.gather.facts import gather_run_facts

    world.add_pod(NS, "web-3", {"app": "web"}, node="node-2")
    world.add_pod(NS, "db-0", {"app": "db"}, node="node-3")
    experiment = {
        **PER_ATTACK,
        "attacks": [
            {"name": "stress", "type": "CpuStress", "durationSeconds": 1},
            {
                "name": "kill-db",
                "type": "PodDelete",
                "blastRadius": {"selector": {"matchLabels": {"app": "db"}}},
            },
        ],
    }
    world.add_experiment(NS, "exp", experiment)

    facts, pods, _switch, _generation = await gather_run_facts(
        NS, "exp", "uid-1", protected_namespaces=frozenset()
    )

    assert facts.target_nodes == ("node-1", "node-2")
    assert facts.selection == Selection(
        matched=5, targets=("db-0", "web-0", "web-1", "web-2", "web-3")
    )
    assert sorted(p.name for p in pods) == ["db-0", "web-0", "web-1", "web-2", "web-3"]
    assert facts.attacks_without_targets == ()


def test_max_run_seconds_counts_the_step_schedule_not_the_longest_attack() -> None:
    """THREE_STEPS: its longest attack is 4 s, its steps 8 s; a cap of 6 s refuses it."""
    facts = RunFacts(
        namespace=NS,
        experiment_name="exp",
        namespace_facts=NamespaceFacts(NS, {}),
        experiment=SPEC,
        switch=ChaosSwitchSpec(enabled=True, max_run_seconds=6),
        selection=Selection(matched=3, targets=("web-0",)),
    )
    refusal = evaluate(PICKUP, facts)
    assert refusal is not None
    assert refusal.reason == Reason.RUN_TOO_LONG
    assert "would last 8 s" in refusal.message
    roomy = replace(facts, switch=ChaosSwitchSpec(enabled=True, max_run_seconds=8))
    assert evaluate(PICKUP, roomy) is None


async def test_a_later_step_checks_the_preconditions_again(world: FakeApi) -> None:
    """The caps lowered while step-1 runs: step-2 is refused before it starts, the run
    fails with the precondition's reason, step-1's effects end and step-3 is skipped."""
    executor, _ = start(world, stretched(THREE_STEPS, 20))  # step-2 at 2 s of real time
    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: attacks_of(world).get("step-1", {}).get("state") == "Applied")
    world.edit(SWITCHES, None, "default", {"spec": {"caps": {"maxTargets": 1}}})
    await task

    status = status_of(world)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.OVER_TARGET_CAP)
    states = {n: a["state"] for n, a in attacks_of(world).items()}
    assert states == {"step-1": "Completed", "step-2": "Skipped", "step-3": "Skipped"}
    assert scale_writes(world) == []


def test_a_later_step_forgets_the_runs_kept_resolutions_only() -> None:
    from shakeout.api.experiment import BlastRadius
    from shakeout.gather.targets import RecentResolutions
    from shakeout.kube.pods import Pod

    recent = RecentResolutions()
    web = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "web"}}})
    db = BlastRadius.model_validate({"selector": {"matchLabels": {"app": "db"}}})
    kept = (Selection(matched=1, targets=("a",)), [Pod("a", True, False)])
    for uid, radius in (("uid-1", web), ("uid-1", db), ("uid-2", web)):
        recent.keep(NS, uid, radius, False, kept)
    recent.drop(NS, "uid-1")
    assert recent.take(NS, "uid-1", web, False) is None
    assert recent.take(NS, "uid-1", db, False) is None
    assert recent.take(NS, "uid-2", web, False) == kept
