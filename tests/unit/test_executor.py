"""The run executor driven against an in-memory API server: each test is a rule of the run.

The executor's clock runs SPEED times faster than real time (attacks last one second of
it), so that a whole run takes a fraction of a second; everything else is the code as the
operator runs it, down to the URL of every request (tests/unit/fake_kube.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.labels import CANCELED_BY, ISOLATED, REMOVED_LABELS
from shakeout.api.run import ExperimentRunStatus, Phase, Targets
from shakeout.api.switch import OPT_IN_LABEL, PROTECTED_LABEL
from shakeout.attacks.context import RunContext
from shakeout.attacks.network_isolation import NetworkIsolation
from shakeout.engine import attacks as lifecycle
from shakeout.engine import checks, ends
from shakeout.engine import runs as engine
from shakeout.engine.runs import Reason, Transition
from shakeout.execution import clock as clock_module
from shakeout.execution import executor as executor_module
from shakeout.execution.executor import RunExecutor
from shakeout.execution.live_runs import LiveRuns, StopSignal
from shakeout.gather import agents as gather_agents
from shakeout.gather import switch as gather_switch
from shakeout.gather import targets as gather_targets
from shakeout.gather.switch import SwitchView
from shakeout.gather.targets import RecentResolutions
from shakeout.kube import client as kube_client
from shakeout.kube.errors import Forbidden, Invalid, Unavailable
from shakeout.kube.pods import Pod
from shakeout.kube.resources import (
    DEPLOYMENTS,
    EXPERIMENTS,
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    REPLICASETS,
    RUNS,
    SERVICES,
    SWITCHES,
)
from shakeout.options import OPTIONS
from tests.unit.fake_kube import Call, FakeApi, FakeHost

Obj = dict[str, Any]

NS = "team-a"
RUN = "run-1"
SPEED = 20.0
PODS_AT_START = ["web-0", "web-1", "web-2"]

SCALE: Obj = {
    "name": "scale",
    "type": "ScaleWorkload",
    "durationSeconds": 1,
    "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}, "replicas": 0},
}
KILL: Obj = {"name": "kill", "type": "PodDelete", "durationSeconds": 1}
ISOLATE: Obj = {"name": "isolate", "type": "NetworkIsolation", "durationSeconds": 60}
UNPLUG: Obj = {"name": "unplug", "type": "EndpointRemoval", "durationSeconds": 1}


def spec(*attacks: Obj, warm_up: int = 0, checks: list[Obj] | None = None) -> Obj:
    return {
        "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
        "attacks": list(attacks),
        "stateChecks": list(checks or []),
        "warmUpSeconds": warm_up,
        "coolDownSeconds": 0,
    }


class Clock:
    """The executor's wall clock, SPEED times faster than real time."""

    def __init__(self) -> None:
        self.origin = datetime.now(UTC)
        self.started = time.monotonic()

    def __call__(self) -> datetime:
        return self.origin + timedelta(seconds=(time.monotonic() - self.started) * SPEED)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(clock_module, "utcnow", clock)
    # Waits of 0.05 s (one second of the fast clock) at most: a run looks again soon.
    monkeypatch.setattr(executor_module, "MAX_IDLE", 0.05)
    return clock


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> FakeApi:
    """A namespace with a Deployment web of 3 replicas and its 3 Running pods, the switch
    enabled; the process-wide state of the operator fresh."""
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    monkeypatch.setattr(gather_targets, "RECENT", RecentResolutions())
    monkeypatch.setattr(gather_switch, "SWITCH", SwitchView())
    monkeypatch.setattr(gather_agents, "AGENTS", {})
    real_delay = lifecycle.rollback_delay
    # The retries' count and order as they are, their waits a hundredth.
    monkeypatch.setattr(
        lifecycle,
        "rollback_delay",
        lambda attempt: real_delay(attempt) / 100,
    )
    api.add_namespace(NS)
    api.add_namespace(OPTIONS.namespace)  # the rollback records'
    api.add_switch()
    api.add_deployment(NS, "web", 3)
    for name in PODS_AT_START:
        api.add_pod(NS, name, {"app": "web"})
    return api


def start(
    fake: FakeApi,
    experiment: Obj | None = None,
    *,
    run: str = RUN,
    status: Obj | None = None,
    started_by: str | None = None,
    annotations: dict[str, str] | None = None,
    protected: frozenset[str] = frozenset(),
    signal: StopSignal | None = None,
) -> tuple[RunExecutor, FakeHost]:
    if experiment is not None:
        fake.add_experiment(NS, "exp", experiment)
    fake.add_run(NS, run, "exp", status=status, started_by=started_by, annotations=annotations)
    host = FakeHost(fake, NS, run)
    return RunExecutor(host, signal or StopSignal(), protected), host


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until `condition` holds (the run is driven meanwhile by another task)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


async def drive(executor: RunExecutor, timeout: float = 5.0) -> None:
    """The run to its end; a run that does not end within `timeout` is wedged."""
    await asyncio.wait_for(executor.execute(), timeout)


def status_of(fake: FakeApi, run: str = RUN) -> Obj:
    return dict(fake.run(NS, run).get("status") or {})


def attacks_of(fake: FakeApi, run: str = RUN) -> dict[str, Obj]:
    return {a["name"]: a for a in status_of(fake, run).get("attacks") or []}


def touches_targets(call: Call) -> bool:
    """A write to what the attacks act on (pods, workloads, policies, services, nodes)."""
    if call.method == "GET":
        return False
    kinds = ("pods", "deployments", "statefulsets", "networkpolicies", "services", "nodes")
    return any(f"/{kind}/" in call.path or call.path.endswith(f"/{kind}") for kind in kinds)


def target_writes(fake: FakeApi) -> list[Call]:
    return [c for c in fake.calls if touches_targets(c)]


def status_writes(fake: FakeApi, run: str = RUN) -> list[Obj]:
    return [c.body["status"] for c in fake.find("PATCH", rf"/experimentruns/{run}/status$")]


def scale_writes(fake: FakeApi) -> list[int]:
    return [c.body["spec"]["replicas"] for c in fake.find("PATCH", r"/deployments/web/scale$")]


def lock_holder(fake: FakeApi) -> Obj | None:
    switch = fake.switch()
    assert switch is not None
    holder: Obj | None = (switch.get("status") or {}).get("activeRun")
    return holder


def hold_lock(fake: FakeApi, run: str = RUN) -> None:
    uid = fake.run(NS, run)["metadata"]["uid"]
    fake.edit(
        SWITCHES,
        None,
        "default",
        {"status": {"activeRun": {"namespace": NS, "name": run, "uid": uid}}},
    )


def events(host: FakeHost) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in host.events]


# -- a run from its pick-up to its end ------------------------------------------------------


async def test_a_run_goes_from_pick_up_to_completed(fake: FakeApi) -> None:
    executor, host = start(fake, spec(SCALE, KILL), started_by="alice")
    fake.members.add(("alice", NS))

    await drive(executor)

    status = status_of(fake)
    assert status["phase"] == Phase.COMPLETED
    assert status["reason"] == Reason.COMPLETED
    assert [e["phase"] for e in status["timeline"]] == [
        "CREATED",
        "PREPARED",
        "ATTACKS_STARTED",
        "ATTACKS_STOPPED",
        "COMPLETED",
    ]
    assert status["startedBy"]["username"] == "alice"
    # Every status write moves forward, never back.
    order = [*engine.ORDER]
    written = [order.index(Phase(s["phase"])) for s in status_writes(fake)]
    assert written == sorted(written)
    # The workload went to 0 and came back to its replicas, each once.
    assert scale_writes(fake) == [0, 3]
    assert fake.replicas(NS, "web") == 3
    # Each target pod deleted exactly once.
    deleted = [c.path.rsplit("/", 1)[1] for c in fake.find("DELETE", r"/pods/")]
    assert sorted(deleted) == PODS_AT_START
    assert fake.names(PODS, NS) == []
    attacks = attacks_of(fake)
    assert attacks["scale"]["state"] == "RolledBack"
    assert attacks["scale"]["previousReplicas"] == 3
    assert attacks["kill"]["state"] == "Completed"
    assert attacks["kill"]["targets"] == 3
    assert status["targets"] == {"matched": 3, "selected": 3, "names": PODS_AT_START}
    # The lock was taken and given back; the Experiment knows its last run.
    assert lock_holder(fake) is None
    assert fake.find("PATCH", r"/chaosswitches/default/status$")
    experiment = fake.peek(EXPERIMENTS, NS, "exp")
    assert experiment is not None
    assert experiment["status"]["lastRun"] == {
        "name": RUN,
        "phase": "COMPLETED",
        "createdAt": fake.run(NS, RUN)["metadata"]["creationTimestamp"],
    }
    assert events(host) == [
        ("Normal", "Created"),
        ("Normal", "Prepared"),
        ("Normal", "AttacksStarted"),
        ("Normal", "AttacksStopped"),
        ("Normal", "Completed"),
    ]


async def test_the_journal_is_written_before_the_cluster_is_touched(fake: FakeApi) -> None:
    executor, _ = start(fake, spec(SCALE, KILL))

    await drive(executor)

    writes = fake.find("PATCH", rf"/experimentruns/{RUN}/status$")
    journal = next(
        c
        for c in writes
        if any(a["state"] == "Applying" for a in c.body["status"].get("attacks") or [])
    )
    first_touch = target_writes(fake)[0]
    assert journal.seq < first_touch.seq
    # The journal is the run's first status write (a run that goes straight to its
    # attacks writes its pick-up together with it), and it carries the rollback data.
    assert journal is writes[0]
    assert journal.body["status"]["phase"] == "ATTACKS_STARTED"
    scale = next(a for a in journal.body["status"]["attacks"] if a["name"] == "scale")
    assert scale["previousReplicas"] == 3
    # And the lock was taken before anything was touched.
    lock = fake.find("PATCH", r"/chaosswitches/default/status$")[0]
    assert lock.seq < first_touch.seq


async def test_only_attackable_pods_become_targets(fake: FakeApi) -> None:
    fake.add_pod(NS, "web-pending", {"app": "web"}, phase="Pending")
    fake.add_pod(NS, "web-unscheduled", {"app": "web"}, node=None)
    fake.add_pod(NS, "web-leaving", {"app": "web"}, deleting=True)
    fake.add_pod(NS, "other", {"app": "db"})
    executor, _ = start(fake, spec(KILL))

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.COMPLETED
    deleted = sorted(c.path.rsplit("/", 1)[1] for c in fake.find("DELETE", r"/pods/"))
    assert deleted == PODS_AT_START
    assert fake.names(PODS, NS) == ["other", "web-leaving", "web-pending", "web-unscheduled"]


# -- refused at pick-up ------------------------------------------------------------------------


def _drop_pods(fake: FakeApi) -> None:
    for name in PODS_AT_START:
        fake.drop(PODS, NS, name)


REFUSALS: dict[str, tuple[Callable[[FakeApi], object], Reason, str]] = {
    "switch missing": (
        lambda f: f.drop(SWITCHES, None, "default"),
        Reason.EXPERIMENTING_DISABLED,
        "there is no ChaosSwitch named default",
    ),
    "switch disabled": (
        lambda f: f.edit(SWITCHES, None, "default", {"spec": {"enabled": False}}),
        Reason.EXPERIMENTING_DISABLED,
        "ChaosSwitch default has spec.enabled: false",
    ),
    "experiment missing": (
        lambda f: f.drop(EXPERIMENTS, NS, "exp"),
        Reason.EXPERIMENT_NOT_FOUND,
        f"Experiment {NS}/exp not found",
    ),
    "experiment invalid": (
        lambda f: f.edit(EXPERIMENTS, NS, "exp", {"spec": {"attacks": []}}),
        Reason.EXPERIMENT_INVALID,
        f"Experiment {NS}/exp is invalid",
    ),
    "selector refused by the API server": (
        lambda f: f.fail("GET", rf"/namespaces/{NS}/pods$", Invalid("bad selector", 400)),
        Reason.EXPERIMENT_INVALID,
        "the API server refuses the selector 'app=web'",
    ),
    "no targets": (_drop_pods, Reason.NO_TARGETS, "resolves to no pods (0 matched"),
    "namespace labelled protected": (
        lambda f: f.edit(NAMESPACES, None, NS, {"metadata": {"labels": {PROTECTED_LABEL: "true"}}}),
        Reason.NAMESPACE_PROTECTED,
        f"namespace {NS} is protected: it is labelled",
    ),
    "namespace not opted in": (
        lambda f: f.edit(SWITCHES, None, "default", {"spec": {"namespaceMode": "OptIn"}}),
        Reason.NAMESPACE_PROTECTED,
        f"lacks the label {OPT_IN_LABEL}=enabled",
    ),
    "over the target cap": (
        lambda f: f.edit(SWITCHES, None, "default", {"spec": {"caps": {"maxTargets": 2}}}),
        Reason.OVER_TARGET_CAP,
        "would target 3 pods, over the cluster-wide cap of 2",
    ),
    "over the percent cap": (
        lambda f: f.edit(SWITCHES, None, "default", {"spec": {"caps": {"maxPercent": 50}}}),
        Reason.OVER_TARGET_CAP,
        "over the cluster-wide cap of 50%",
    ),
    "creator no longer a member": (
        lambda f: f.members.clear(),
        Reason.UNAUTHORIZED,
        f"alice, who created the run, may not run experiments in namespace {NS}",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_run_refused_at_pick_up_fails_with_the_reason_and_attacks_nothing(
    fake: FakeApi, case: str
) -> None:
    change, reason, message = REFUSALS[case]
    fake.members.add(("alice", NS))
    executor, host = start(fake, spec(SCALE, KILL), started_by="alice")
    change(fake)

    await drive(executor)

    status = status_of(fake)
    assert status["phase"] == Phase.FAILED
    assert status["reason"] == reason
    assert message in status["message"]
    assert [e["phase"] for e in status["timeline"]] == ["CREATED", "FAILED"]
    assert status["startedBy"]["username"] == "alice"
    assert target_writes(fake) == []
    assert not fake.find("PATCH", r"/chaosswitches/")  # the lock was never taken
    assert events(host) == [("Warning", reason)]
    assert host.events[0].message == status["message"]


async def test_a_run_in_an_operator_namespace_is_refused(fake: FakeApi) -> None:
    executor, host = start(fake, spec(SCALE), protected=frozenset({NS}))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.NAMESPACE_PROTECTED)
    assert "it runs the shakeout operator" in status["message"]
    assert target_writes(fake) == []
    assert events(host) == [("Warning", Reason.NAMESPACE_PROTECTED)]


async def test_a_status_the_operator_never_wrote_ends_the_run(fake: FakeApi) -> None:
    executor, host = start(fake, spec(SCALE), status={"phase": "ATTACKS_STARTED"})

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.INVALID_STATUS)
    assert target_writes(fake) == []
    assert events(host) == [("Warning", Reason.INVALID_STATUS)]


# -- the lock ------------------------------------------------------------------------------------


async def test_a_second_run_while_one_holds_the_lock_fails(fake: FakeApi) -> None:
    executor, host = start(fake, spec(SCALE, KILL))
    fake.add_run(NS, "other", "exp", status={"phase": "ATTACKS_STARTED"})
    hold_lock(fake, "other")

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ANOTHER_RUN_ACTIVE)
    assert f"{NS}/other" in status["message"]
    assert target_writes(fake) == []
    holder = lock_holder(fake)
    assert holder is not None
    assert holder["name"] == "other"
    assert events(host) == [("Warning", Reason.ANOTHER_RUN_ACTIVE)]


def _finished(fake: FakeApi) -> None:
    fake.edit(RUNS, NS, "other", {"status": {"phase": "COMPLETED"}})


def _deleted(fake: FakeApi) -> None:
    fake.drop(RUNS, NS, "other")


def _recreated(fake: FakeApi) -> None:
    fake.drop(RUNS, NS, "other")
    fake.add_run(NS, "other", "exp", status={"phase": "ATTACKS_STARTED"})


@pytest.mark.parametrize("gone", [_finished, _deleted, _recreated])
async def test_a_lock_held_by_a_run_that_is_over_is_taken_over(
    fake: FakeApi, gone: Callable[[FakeApi], None]
) -> None:
    executor, _ = start(fake, spec(SCALE))
    fake.add_run(NS, "other", "exp", status={"phase": "ATTACKS_STARTED"})
    hold_lock(fake, "other")
    gone(fake)

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.COMPLETED
    taken = fake.find("PATCH", r"/chaosswitches/default/status$")[0]
    assert taken.body["status"]["activeRun"]["name"] == RUN
    assert lock_holder(fake) is None


async def test_two_runs_picked_up_at_once_one_wins_the_lock(fake: FakeApi) -> None:
    first, _ = start(fake, spec(SCALE), run="run-a")
    second, _ = start(fake, None, run="run-b")

    await asyncio.gather(drive(first), drive(second))

    phases = {
        r: (status_of(fake, r)["phase"], status_of(fake, r)["reason"]) for r in ("run-a", "run-b")
    }
    assert sorted(phases.values()) == [
        (Phase.COMPLETED, Reason.COMPLETED),
        (Phase.FAILED, Reason.ANOTHER_RUN_ACTIVE),
    ]
    # They raced: both wrote with the same resourceVersion and the API server took one.
    lost = [c for c in fake.find("PATCH", r"/chaosswitches/default/status$") if c.error]
    assert lost
    assert scale_writes(fake) == [0, 3]
    assert lock_holder(fake) is None


# -- resume after a crash --------------------------------------------------------------------------


def _targets() -> Targets:
    return Targets(matched=3, selected=3, names=PODS_AT_START)


def journal(experiment: Obj, now: datetime) -> ExperimentRunStatus:
    """The status apply_attacks writes before it touches anything."""
    snapshot = ExperimentSpec.model_validate(experiment)
    status = engine.initial_status(snapshot, now, 1, targets=_targets(), experiment_generation=1)
    status = engine.enter(status, Transition(Phase.PREPARED, Reason.PREPARED, "ready"), now, 1)
    go = Transition(Phase.ATTACKS_STARTED, Reason.ATTACKS_STARTED, "go", apply_attacks=True)
    status = engine.enter(status, go, now, 1)
    data = (
        {"scale": {"previous_replicas": 3}}
        if any(a["name"] == "scale" for a in experiment["attacks"])
        else {}
    )
    return lifecycle.begin_apply(status, data, _targets(), [])


def applied(status: ExperimentRunStatus, at: datetime) -> ExperimentRunStatus:
    """The status record_applied writes after every attack went out."""
    outcomes = [lifecycle.ApplyOutcome(a.name, targets=3) for a in status.attacks]
    return lifecycle.record_applied(status, outcomes, at)[0]


def rolling_back(status: ExperimentRunStatus) -> ExperimentRunStatus:
    """The irreversible attack closed, the reversible one's rollback journaled."""
    status = lifecycle.begin_stop(status, lifecycle.StopAction("kill", lifecycle.StopKind.CLOSE))
    return lifecycle.begin_stop(status, lifecycle.StopAction("scale", lifecycle.StopKind.ROLL_BACK))


def crashed(
    fake: FakeApi, experiment: Obj, status: ExperimentRunStatus, *, replicas: int, deleted: int
) -> tuple[RunExecutor, FakeHost]:
    """The cluster and the run as the killed operator left them; a new executor on it."""
    fake.edit(DEPLOYMENTS, NS, "web", {"spec": {"replicas": replicas}})
    for name in PODS_AT_START[:deleted]:
        fake.drop(PODS, NS, name)
    executor, host = start(fake, experiment, status=status.to_k8s())
    hold_lock(fake)
    return executor, host


RESUMES: dict[str, tuple[Callable[[Clock], ExperimentRunStatus], int, int, list[int]]] = {
    # name: (status at the crash, replicas then, pods deleted then, scale writes after)
    "journal written, nothing applied yet": (
        lambda c: journal(spec(SCALE, KILL), c()),
        3,
        0,
        [0, 3],
    ),
    "journal written, scaled, one pod deleted": (
        lambda c: journal(spec(SCALE, KILL), c()),
        0,
        1,
        [0, 3],
    ),
    "every attack applied": (
        lambda c: applied(journal(spec(SCALE, KILL), c()), c() - timedelta(seconds=10)),
        0,
        3,
        [3],
    ),
    "rolling back, not restored yet": (
        lambda c: rolling_back(applied(journal(spec(SCALE, KILL), c()), c())),
        0,
        3,
        [3],
    ),
    # The count is back already: the compare-and-swap rollback writes nothing again.
    "rolling back, restored already": (
        lambda c: rolling_back(applied(journal(spec(SCALE, KILL), c()), c())),
        3,
        3,
        [],
    ),
}


@pytest.mark.parametrize("case", list(RESUMES))
async def test_a_restarted_operator_resumes_from_the_journal(
    fake: FakeApi, clock: Clock, case: str
) -> None:
    build, replicas, deleted, writes = RESUMES[case]
    executor, host = crashed(
        fake, spec(SCALE, KILL), build(clock), replicas=replicas, deleted=deleted
    )

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    # The reversible attack applied again (idempotent) where the journal says Applying,
    # and rolled back in every case.
    assert scale_writes(fake) == writes
    assert fake.replicas(NS, "web") == 3
    # The irreversible one is never applied a second time.
    assert fake.find("DELETE", r"/pods/") == []
    attacks = attacks_of(fake)
    assert attacks["scale"]["state"] == "RolledBack"
    assert attacks["kill"]["state"] == "Completed"
    assert lock_holder(fake) is None
    assert events(host)[-1] == ("Normal", "Completed")


async def test_an_irreversible_attack_caught_applying_is_never_applied_again(
    fake: FakeApi, clock: Clock
) -> None:
    executor, _ = crashed(fake, spec(KILL), journal(spec(KILL), clock()), replicas=3, deleted=1)

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert fake.find("DELETE", r"/pods/") == []
    assert fake.names(PODS, NS) == PODS_AT_START[1:]
    kill = attacks_of(fake)["kill"]
    assert kill["state"] == "Completed"
    assert "not applied again" in kill["message"]


async def test_a_restart_during_the_warm_up_applies_the_attacks_once(
    fake: FakeApi, clock: Clock
) -> None:
    experiment = spec(SCALE, KILL, warm_up=1)
    snapshot = ExperimentSpec.model_validate(experiment)
    now = clock()
    status = engine.initial_status(snapshot, now, 1, targets=_targets())
    status = engine.enter(status, Transition(Phase.PREPARED, Reason.PREPARED, "ready"), now, 1)
    executor, _ = crashed(fake, experiment, status, replicas=3, deleted=0)

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert scale_writes(fake) == [0, 3]
    assert len(fake.find("DELETE", r"/pods/")) == 3


async def test_a_restart_during_the_cool_down_touches_nothing(fake: FakeApi, clock: Clock) -> None:
    status = applied(journal(spec(SCALE, KILL), clock()), clock())
    status = rolling_back(status)
    status = lifecycle.record_rollback(status, "scale", clock())
    status = engine.enter(
        status, Transition(Phase.ATTACKS_STOPPED, Reason.ATTACKS_STOPPED, "stopped"), clock(), 1
    )
    executor, _ = crashed(fake, spec(SCALE, KILL), status, replicas=3, deleted=3)

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert target_writes(fake) == []


@pytest.mark.parametrize("stop", ["cancel", "stop all"])
async def test_a_restart_of_a_run_being_stopped_does_not_apply_again(
    fake: FakeApi, clock: Clock, stop: str
) -> None:
    """The operator died applying; meanwhile the run was canceled (or Stop All pressed).
    engine.attacks.resume: "A run being stopped needs no second apply"."""
    executor, host = crashed(
        fake, spec(SCALE, KILL), journal(spec(SCALE, KILL), clock()), replicas=3, deleted=0
    )
    if stop == "cancel":
        host.cancel()
    else:
        fake.edit(SWITCHES, None, "default", {"spec": {"enabled": False}})

    await drive(executor)

    assert status_of(fake)["phase"] == Phase.CANCELED
    assert 0 not in scale_writes(fake), "the stopped run scaled the workload to 0 again"
    assert fake.replicas(NS, "web") == 3


async def test_a_restart_in_the_rollback_of_a_failed_run_still_fails_it(
    fake: FakeApi, clock: Clock
) -> None:
    """A state check failed, the rollback began, the operator died: the run's end was
    decided (FAILED StateCheckFailed) and must not turn into COMPLETED after the restart."""
    check = {"name": "up", "type": "PodsReady", "intervalSeconds": 1}
    experiment = spec(SCALE, checks=[check])
    status = applied(journal(experiment, clock()), clock())
    up = ExperimentSpec.model_validate(experiment).state_checks[0]
    attacking = Phase.ATTACKS_STARTED
    status = checks.record_check(
        status, up, checks.Probe.judged(True, "3/3 ready"), clock(), attacking
    )
    status = checks.record_check(
        status, up, checks.Probe.judged(False, "1/3 blast-radius pods ready"), clock(), attacking
    )
    # What the operator journals with the first stop it writes: the end it decided.
    end = Transition(
        Phase.FAILED,
        Reason.STATE_CHECK_FAILED,
        "state check up failed: 1/3 blast-radius pods ready",
        rollback=True,
    )
    status = ends.begin_end(status, end)
    status = lifecycle.begin_stop(
        status, lifecycle.StopAction("scale", lifecycle.StopKind.ROLL_BACK)
    )
    executor, _ = crashed(fake, experiment, status, replicas=0, deleted=0)

    await drive(executor)

    final = status_of(fake)
    assert fake.replicas(NS, "web") == 3
    assert (final["phase"], final["reason"]) == (Phase.FAILED, Reason.STATE_CHECK_FAILED), (
        f"ended {final['phase']} {final['reason']}: {final['message']}"
    )


# -- stops -----------------------------------------------------------------------------------------


async def test_a_stop_during_an_apply_starts_no_further_target_and_rolls_back(
    fake: FakeApi,
) -> None:
    for i in range(3, 100):
        fake.add_pod(NS, f"web-{i}", {"app": "web"})
    fake.add_experiment(NS, "exp", spec(ISOLATE))
    fake.add_run(NS, RUN, "exp", annotations={CANCELED_BY: '{"username": "bob"}'})
    host = FakeHost(fake, NS, RUN)
    uid = host.body["metadata"]["uid"]
    live = LiveRuns()  # how the kopf wiring reaches a live run
    executor = RunExecutor(host, live.add(uid), frozenset())
    fake.delay("PATCH", rf"/namespaces/{NS}/pods/", 0.01)
    stopped_at: list[int] = []

    def marks() -> list[Call]:
        return fake.find("PATCH", r"/pods/", when=lambda c: ISOLATED in str(c.body))

    def cancel(call: Call) -> None:
        if len(marks()) == 10 and not stopped_at:
            host.cancel()
            live.request_stop(uid)  # what the run's watch event does
            stopped_at.append(call.seq)

    fake.on("PATCH", r"/pods/", cancel)

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.CANCELED)
    assert status["canceledBy"]["username"] == "bob"
    assert stopped_at
    assert [c.seq for c in marks() if c.seq > stopped_at[0]] == [], (
        "a target started after the stop"
    )
    assert len(marks()) < 100
    isolate = attacks_of(fake)["isolate"]
    assert isolate["state"] == "RolledBack"
    assert isolate["targets"] == len(marks())
    # Rolled back: the policy is gone and no pod carries the mark any more.
    assert fake.find("POST", r"/networkpolicies$")
    assert fake.names(NETWORK_POLICIES, NS) == []
    marked = [
        n
        for n in fake.names(PODS, NS)
        if ISOLATED in (fake.peek(PODS, NS, n) or {})["metadata"]["labels"]
    ]
    assert marked == []
    assert lock_holder(fake) is None
    assert events(host)[-1] == ("Warning", Reason.CANCELED)


def isolation_marks(fake: FakeApi) -> list[Call]:
    return fake.find("PATCH", r"/pods/", when=lambda c: ISOLATED in str(c.body))


def marked_pods(fake: FakeApi) -> list[str]:
    return [
        n
        for n in fake.names(PODS, NS)
        if ISOLATED in (fake.peek(PODS, NS, n) or {})["metadata"]["labels"]
    ]


def stop_at_tenth_mark(fake: FakeApi, stop: Callable[[], None]) -> None:
    """`stop` when the 10th isolation mark goes out (the marks answered 50 ms later)."""
    fake.delay("PATCH", rf"/namespaces/{NS}/pods/", 0.05)
    stopped: list[bool] = []

    def at_tenth(_call: Call) -> None:
        if len(isolation_marks(fake)) == 10 and not stopped:
            stopped.append(True)
            stop()

    fake.on("PATCH", r"/pods/", at_tenth)


async def test_a_stop_during_an_isolation_deletes_the_policy_before_the_marks_in_flight_return(
    fake: FakeApi,
) -> None:
    """The fault ends with the stop, not after the requests in flight: the policy's
    deletion goes out while marks sent before the stop are still unanswered; those land
    afterwards and are removed with the others, none left behind."""
    for i in range(3, 100):
        fake.add_pod(NS, f"web-{i}", {"app": "web"})
    signal = StopSignal()
    executor, host = start(fake, spec(ISOLATE), signal=signal)

    def cancel() -> None:
        host.cancel()
        signal.halt.set()  # what LiveRuns.request_stop does
        signal.wakeup.set()

    stop_at_tenth_mark(fake, cancel)
    at_deletion: list[tuple[int, int]] = []  # (marks sent, marks landed)
    fake.on(
        "DELETE",
        r"/networkpolicies/",
        lambda _c: at_deletion.append((len(isolation_marks(fake)), len(marked_pods(fake)))),
    )

    await drive(executor)

    sent, landed = at_deletion[0]
    assert sent == 10
    assert landed < sent, "the policy waited for the marks in flight"
    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.CANCELED)
    isolate = attacks_of(fake)["isolate"]
    assert (isolate["state"], isolate["targets"]) == ("RolledBack", 10)
    assert fake.names(NETWORK_POLICIES, NS) == []
    assert marked_pods(fake) == []  # the marks that landed after the deletion too
    assert lock_holder(fake) is None


async def test_an_isolation_halted_before_it_began_creates_no_policy(fake: FakeApi) -> None:
    halt = asyncio.Event()
    halt.set()  # the stop came while the attack was being journaled
    isolation = NetworkIsolation(RunContext(NS, RUN, "uid-1", halt))
    applied = await isolation.apply(Attack.model_validate(ISOLATE), [Pod("web-0", True, False)])
    assert applied == 0
    assert fake.find("POST", r"/networkpolicies$") == []
    assert marked_pods(fake) == []


async def test_a_halted_run_ends_even_if_the_switch_is_enabled_again_before_it_looks(
    fake: FakeApi,
) -> None:
    """Stop All pressed and undone within moments: the stop halted the attack partway (and
    ended the isolation's fault), so the run ends as stopped rather than going on with a
    fault that is not there."""
    for i in range(3, 100):
        fake.add_pod(NS, f"web-{i}", {"app": "web"})
    signal = StopSignal()
    executor, _host = start(fake, spec(ISOLATE), signal=signal)
    stop_at_tenth_mark(fake, lambda: (signal.halt.set(), signal.wakeup.set()))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.STOPPED_ALL)
    assert attacks_of(fake)["isolate"]["state"] == "RolledBack"
    assert fake.names(NETWORK_POLICIES, NS) == []
    assert marked_pods(fake) == []
    assert lock_holder(fake) is None


async def test_a_run_deleted_during_its_attacks_rolls_back_and_ends(fake: FakeApi) -> None:
    executor, host = start(fake, spec({**SCALE, "durationSeconds": 60}, KILL))
    fake.on("DELETE", r"/pods/", lambda _c: setattr(host, "being_deleted", True))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.RUN_DELETED)
    assert fake.replicas(NS, "web") == 3
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"


async def test_an_operator_shutting_down_rolls_back_and_fails_the_run(fake: FakeApi) -> None:
    executor, host = start(fake, spec({**SCALE, "durationSeconds": 60}))
    fake.on("PATCH", r"/deployments/web/scale$", lambda _c: setattr(host, "exiting", True))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.OPERATOR_SHUTDOWN)
    assert fake.replicas(NS, "web") == 3


async def test_stop_all_during_the_attacks_cancels_the_run(fake: FakeApi) -> None:
    executor, host = start(fake, spec({**SCALE, "durationSeconds": 60}))
    fake.on(
        "PATCH",
        r"/deployments/web/scale$",
        lambda _c: fake.edit(SWITCHES, None, "default", {"spec": {"enabled": False}}),
        when=lambda c: c.body["spec"]["replicas"] == 0,
    )

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.STOPPED_ALL)
    assert scale_writes(fake) == [0, 3]
    assert events(host)[-1] == ("Warning", Reason.STOPPED_ALL)


# -- failures --------------------------------------------------------------------------------------


def _restore(call: Call) -> bool:
    return bool(call.body["spec"]["replicas"] == 3)


async def test_a_rollback_that_keeps_failing_is_retried_until_it_succeeds(
    fake: FakeApi,
) -> None:
    """The scale's restore is refused 8 times (a webhook restarting, a brown-out): the
    run is never ended with the fault in place. It keeps the lock, says the rollback is
    pending, retries, and fails once the workload is restored."""
    fails = lifecycle.ROLLBACK_QUICK_ATTEMPTS + 3
    fake.fail(
        "PATCH",
        r"/deployments/web/scale$",
        Unavailable("the API server is away", 503),
        times=fails,
        when=_restore,
    )
    seen: list[Obj] = []
    fake.on(
        "PATCH",
        r"/deployments/web/scale$",
        lambda _call: seen.append(
            {"lock": lock_holder(fake), "conditions": status_of(fake).get("conditions", [])}
        ),
        when=_restore,
    )
    executor, host = start(fake, spec(SCALE, KILL))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ROLLBACK_FAILED)
    assert "retried until it succeeded" in status["message"]
    assert "the API server is away" in status["message"]
    assert fake.replicas(NS, "web") == 3
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"
    assert scale_writes(fake) == [0] + [3] * (fails + 1)
    # While it was pending the run held the lock, and a condition said so.
    assert all(s["lock"] is not None for s in seen)
    pending = [c for s in seen for c in s["conditions"] if c["type"] == "RollbackPending"]
    assert any(c["status"] == "True" for c in pending)
    final = next(c for c in status["conditions"] if c["type"] == "RollbackPending")
    assert (final["status"], final["reason"]) == ("False", "RolledBack")
    assert ("Warning", "RollbackPending") in events(host)
    assert events(host)[-1] == ("Warning", Reason.ROLLBACK_FAILED)
    assert lock_holder(fake) is None


async def test_a_stuck_rollback_does_not_keep_the_other_faults_in_place(fake: FakeApi) -> None:
    """Stop All while the scale's restore is refused: the isolation is undone at once,
    the scale when its restore goes through."""
    isolation = {**ISOLATE, "durationSeconds": 60}
    scale = {**SCALE, "durationSeconds": 60}
    fake.fail(
        "PATCH",
        r"/deployments/web/scale$",
        Unavailable("refused", 503),
        times=lifecycle.ROLLBACK_QUICK_ATTEMPTS + 4,
        when=_restore,
    )
    order: list[str] = []
    fake.on("PATCH", r"/deployments/web/scale$", lambda _c: order.append("scale"), when=_restore)
    fake.on("DELETE", r"/networkpolicies/", lambda _c: order.append("isolation"))
    executor, _ = start(fake, spec(scale, isolation))
    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: attacks_of(fake).get("isolate", {}).get("state") == "Applied")
    fake.edit(SWITCHES, None, "default", {"spec": {"enabled": False}})
    await task

    assert status_of(fake)["phase"] == Phase.CANCELED
    assert fake.names(NETWORK_POLICIES, NS) == []
    assert fake.replicas(NS, "web") == 3
    # The isolation went right after the scale's quick attempts, not after all its retries.
    first_isolation = order.index("isolation")
    assert first_isolation == lifecycle.ROLLBACK_QUICK_ATTEMPTS
    assert order.count("scale") == lifecycle.ROLLBACK_QUICK_ATTEMPTS + 5


async def test_a_restart_resumes_a_pending_rollback(fake: FakeApi, clock: Clock) -> None:
    """The operator died while a rollback was pending: the new one keeps retrying."""
    status = applied(journal(spec(SCALE, KILL), clock()), clock())
    end = Transition(Phase.CANCELED, Reason.STOPPED_ALL, "Stop All", rollback=True)
    status = ends.begin_end(status, end)
    status = rolling_back(status)
    status = lifecycle.rollback_pending(status, "scale", "refused", 5, clock())
    fake.fail(
        "PATCH", r"/deployments/web/scale$", Unavailable("still", 503), times=2, when=_restore
    )
    executor, _ = crashed(fake, spec(SCALE, KILL), status, replicas=0, deleted=3)

    await drive(executor)

    final = status_of(fake)
    assert (final["phase"], final["reason"]) == (Phase.CANCELED, Reason.STOPPED_ALL)
    assert fake.replicas(NS, "web") == 3
    assert scale_writes(fake) == [3, 3, 3]


async def test_a_rollback_that_fails_twice_then_succeeds_is_rolled_back(fake: FakeApi) -> None:
    fake.fail("PATCH", r"/deployments/web/scale$", Unavailable("blip", 503), times=2, when=_restore)
    executor, _ = start(fake, spec(SCALE, KILL))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    assert scale_writes(fake) == [0, 3, 3, 3]
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"
    assert fake.replicas(NS, "web") == 3


async def test_a_workload_deleted_during_the_attack_leaves_nothing_to_restore(
    fake: FakeApi,
) -> None:
    """The team deleted the scaled Deployment mid-run: the rollback finds nothing to
    restore, and that is not a failure of the run."""
    fake.on(
        "PATCH",
        r"/deployments/web/scale$",
        lambda _call: fake.drop(DEPLOYMENTS, NS, "web"),
        when=_restore,
    )
    executor, _ = start(fake, spec(SCALE, KILL))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED)
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"
    assert scale_writes(fake) == [0, 3]  # tried once, not retried as a failure


async def test_a_failed_attack_recorded_before_a_restart_fails_the_run_and_rolls_back(
    fake: FakeApi, clock: Clock
) -> None:
    status = journal(spec(SCALE, KILL), clock())
    outcomes = [
        lifecycle.ApplyOutcome("scale", targets=1),
        lifecycle.ApplyOutcome("kill", error="pods is forbidden"),
    ]
    status = lifecycle.record_applied(status, outcomes, clock())[0]
    executor, host = crashed(fake, spec(SCALE, KILL), status, replicas=0, deleted=0)

    await drive(executor)

    final = status_of(fake)
    assert (final["phase"], final["reason"]) == (Phase.FAILED, Reason.ATTACK_FAILED)
    assert final["message"] == "attack kill failed: pods is forbidden"
    assert scale_writes(fake) == [3]
    assert fake.replicas(NS, "web") == 3
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"
    assert fake.find("DELETE", r"/pods/") == []
    assert lock_holder(fake) is None
    assert events(host) == [("Warning", Reason.ATTACK_FAILED)]


async def test_a_failed_attack_fails_the_run_with_warning_event(fake: FakeApi) -> None:
    fake.fail("DELETE", r"/pods/", Forbidden("pods is forbidden", 403))
    executor, host = start(fake, spec(SCALE, KILL))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ATTACK_FAILED)
    assert "pods is forbidden" in status["message"]
    assert attacks_of(fake)["kill"]["state"] == "Failed"
    assert attacks_of(fake)["scale"]["state"] == "RolledBack"
    assert fake.replicas(NS, "web") == 3
    assert events(host) == [
        ("Normal", "Created"),
        ("Normal", "Prepared"),
        ("Normal", "AttacksStarted"),
        ("Warning", "AttackFailed"),
    ]
    assert "pods is forbidden" in host.events[-1].message


async def test_a_reversible_attack_whose_answer_was_lost_is_rolled_back(fake: FakeApi) -> None:
    """The scale went through but its answer did not come back (a timeout after the
    write): the attack failed, and the workload must not stay at 0 replicas."""
    fake.fail(
        "PATCH",
        r"/deployments/web/scale$",
        Unavailable("read timed out", 0),
        times=1,
        after=True,
        when=lambda c: c.body["spec"]["replicas"] == 0,
    )
    executor, _ = start(fake, spec(SCALE))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ATTACK_FAILED)
    assert fake.replicas(NS, "web") == 3, "the failed ScaleWorkload was never rolled back"


async def test_a_partly_applied_attack_that_failed_is_rolled_back(fake: FakeApi) -> None:
    """EndpointRemoval removed the labels of some targets, then a patch failed: the
    targets it changed must get their labels back when the run fails."""
    for name in PODS_AT_START:
        fake.drop(PODS, NS, name)
        fake.add_pod(NS, name, {"app": "web", "tier": "front"}, owner=("ReplicaSet", "web-rs"))
    fake.put(
        REPLICASETS,
        NS,
        {"metadata": {"name": "web-rs"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}},
    )
    fake.put(
        SERVICES,
        NS,
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web", "tier": "front"}}},
    )
    fake.fail("PATCH", r"/pods/web-1$", Unavailable("etcd leader changed", 500))
    executor, _ = start(fake, spec(UNPLUG))

    await drive(executor)
    await asyncio.sleep(0.05)  # the patches in flight when the apply failed

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ATTACK_FAILED)
    for name in PODS_AT_START:
        pod = fake.peek(PODS, NS, name)
        assert pod is not None
        assert pod["metadata"]["labels"] == {"app": "web", "tier": "front"}, (
            f"{name} was left out of its Service's endpoints"
        )
        assert REMOVED_LABELS not in pod["metadata"].get("annotations", {})


async def test_a_state_check_failing_during_the_attacks_fails_the_run(fake: FakeApi) -> None:
    check = {"name": "up", "type": "PodsReady", "intervalSeconds": 1}
    executor, host = start(
        fake,
        spec({**SCALE, "durationSeconds": 30}, {**KILL, "durationSeconds": 30}, checks=[check]),
    )

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.STATE_CHECK_FAILED)
    assert "state check up failed: 0/0 blast-radius pods ready" in status["message"]
    assert fake.replicas(NS, "web") == 3
    tally = status["stateChecks"][0]
    assert tally["successes"] >= 1
    assert tally["failures"] == 1
    assert events(host)[-1] == ("Warning", Reason.STATE_CHECK_FAILED)


# -- the preconditions again when the attacks start ----------------------------------------------


def _protect(fake: FakeApi) -> None:
    fake.edit(NAMESPACES, None, NS, {"metadata": {"labels": {PROTECTED_LABEL: "true"}}})


def _lower_caps(fake: FakeApi) -> None:
    fake.edit(SWITCHES, None, "default", {"spec": {"caps": {"maxTargets": 1}}})


def _revoke(fake: FakeApi) -> None:
    fake.members.clear()


def _disable_unseen(fake: FakeApi) -> None:
    # The switch's watch has not delivered the change yet: only the fresh read sees it.
    gather_switch.SWITCH.known = True
    gather_switch.SWITCH.enabled = True
    fake.edit(SWITCHES, None, "default", {"spec": {"enabled": False}})


WARM_UP_CHANGES: dict[str, tuple[Callable[[FakeApi], None], Reason]] = {
    "namespace protected": (_protect, Reason.NAMESPACE_PROTECTED),
    "caps lowered": (_lower_caps, Reason.OVER_TARGET_CAP),
    "creator no longer a member": (_revoke, Reason.UNAUTHORIZED),
    "switch disabled, the watch behind": (_disable_unseen, Reason.EXPERIMENTING_DISABLED),
}


def during_warm_up(fake: FakeApi, change: Callable[[FakeApi], object]) -> None:
    """Change the world once the run's PREPARED is written (its warm-up under way)."""
    fake.on(
        "PATCH",
        rf"/experimentruns/{RUN}/status$",
        lambda _c: change(fake),
        when=lambda c: c.body["status"].get("phase") == "PREPARED",
    )


@pytest.mark.parametrize("case", list(WARM_UP_CHANGES))
async def test_a_precondition_lost_during_the_warm_up_fails_the_run(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    # The warm-up lasts 3 s of the fast clock, 0.15 s of the monotonic one that decides
    # whether the pick-up's check is still fresh: count it as stale.
    monkeypatch.setattr(executor_module, "FRESH_TARGETS", 0.0)
    change, reason = WARM_UP_CHANGES[case]
    fake.members.add(("alice", NS))
    executor, host = start(fake, spec(SCALE, KILL, warm_up=3), started_by="alice")
    during_warm_up(fake, change)

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, reason)
    assert [e["phase"] for e in status["timeline"]] == ["CREATED", "PREPARED", "FAILED"]
    assert target_writes(fake) == []
    assert {a["state"] for a in status["attacks"]} == {"Skipped"}
    assert lock_holder(fake) is None
    assert events(host) == [("Normal", "Created"), ("Normal", "Prepared"), ("Warning", reason)]


async def test_stop_all_during_the_warm_up_cancels_the_run(fake: FakeApi) -> None:
    executor, _ = start(fake, spec(SCALE, KILL, warm_up=3))
    during_warm_up(fake, lambda f: f.edit(SWITCHES, None, "default", {"spec": {"enabled": False}}))

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.CANCELED, Reason.STOPPED_ALL)
    assert target_writes(fake) == []


async def test_an_attack_on_a_missing_workload_fails_the_run(fake: FakeApi) -> None:
    """Reading a ScaleWorkload's rollback data finds no Deployment: the run must end FAILED
    with the reason recorded, not raise out of the executor. (The kopf daemon, which
    catches NotFound as "the run is gone", would end without a word and leave the run
    in a live phase for good.)"""
    missing = {
        **SCALE,
        "scaleWorkload": {"workload": {"kind": "Deployment", "name": "api"}, "replicas": 0},
    }
    executor, host = start(fake, spec(missing, KILL))

    await drive(executor)

    status = status_of(fake)
    assert status["phase"] == Phase.FAILED
    assert "api" in status["message"]
    assert fake.find("DELETE", r"/pods/") == []
    assert lock_holder(fake) is None
    assert events(host)[-1][0] == "Warning"


# -- state-check semantics: the executor gathers, the engine judges ---------------------------


class ScriptedChecks:
    """Probes that answer by the run's phase, as a workload that degrades under the attacks
    would: `attacked` during them, then `after` for each probe of the cool-down in turn
    (the last one repeated), Pass before. Records in which phase each check was probed."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        attacked: checks.Probe,
        after: list[checks.Probe],
    ) -> None:
        self.executor: RunExecutor | None = None
        self.attacked, self.after = attacked, after
        self.probed: list[tuple[str, str]] = []
        monkeypatch.setattr(executor_module, "run_check", self.run_check)

    async def run_check(self, check: Any, namespace: str, selector: str) -> checks.Probe:
        assert self.executor is not None
        phase = str(self.executor.status.phase)
        self.probed.append((check.name, phase))
        if phase == Phase.ATTACKS_STARTED:
            return self.attacked
        if phase == Phase.ATTACKS_STOPPED:
            seen = sum(p == Phase.ATTACKS_STOPPED for n, p in self.probed if n == check.name)
            return self.after[min(seen, len(self.after)) - 1]
        return checks.Probe.judged(True, "3/3 ready", 3, "ready replicas")


DEGRADING: Obj = {
    "name": "up",
    "type": "PodsReady",
    "intervalSeconds": 1,
    "mayDegradeDuringAttacks": True,
}
DEGRADED = checks.Probe.judged(False, "1/3 ready", 1, "ready replicas")
HOLDS = checks.Probe.judged(True, "3/3 ready", 3, "ready replicas")


def degrading(check: Obj = DEGRADING, cool_down: int = 4) -> Obj:
    return {**spec({**SCALE, "durationSeconds": 3}, checks=[check]), "coolDownSeconds": cool_down}


async def test_a_check_allowed_to_degrade_that_recovers_in_the_cool_down_completes_the_run(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedChecks(monkeypatch, DEGRADED, [DEGRADED, HOLDS])
    executor, _ = start(fake, degrading())
    script.executor = executor

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED), status
    tally = status["stateChecks"][0]
    assert tally["failures"] >= 2
    assert tally["degradedAt"] < tally["recoveredAt"]
    assert tally["unit"] == "ready replicas"
    assert {s["outcome"] for s in tally["samples"]} == {"Pass", "Fail"}
    assert fake.replicas(NS, "web") == 3


async def test_a_check_allowed_to_degrade_that_does_not_recover_fails_the_run(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedChecks(monkeypatch, DEGRADED, [DEGRADED])
    executor, host = start(fake, degrading())
    script.executor = executor

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.STATE_CHECK_FAILED)
    assert status["message"].startswith(
        "state check up did not recover within coolDownSeconds (4s): it degraded during the attacks"
    ), status["message"]
    assert ("up", Phase.ATTACKS_STOPPED) in script.probed
    assert status["stateChecks"][0].get("recoveredAt") is None
    assert fake.replicas(NS, "web") == 3
    assert events(host)[-1] == ("Warning", Reason.STATE_CHECK_FAILED)


async def test_a_check_that_cannot_be_evaluated_ends_the_run_with_its_own_reason(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = checks.Probe.error(
        "refused: httpGet.headers[0]: Secret token key t: no such Secret"
    )
    script = ScriptedChecks(monkeypatch, unreadable, [HOLDS])
    check = {"name": "up", "type": "PodsReady", "intervalSeconds": 1, "failureThreshold": 2}
    executor, host = start(fake, degrading(check))
    script.executor = executor

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.STATE_CHECK_NOT_EVALUATED)
    assert status["message"].startswith(
        f"state check up could not be evaluated: {unreadable.message} (2 in a row"
    )
    assert checks.NOT_EVALUATED_ADVICE in status["message"]
    assert status["attacks"][0]["state"] == "RolledBack"
    assert fake.replicas(NS, "web") == 3
    assert events(host)[-1] == ("Warning", Reason.STATE_CHECK_NOT_EVALUATED)
    tally = status["stateChecks"][0]
    assert (tally["errors"], tally["failures"]) == (2, 0)


async def test_a_check_runs_only_in_its_phases_and_at_once_when_it_starts_to_apply(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedChecks(monkeypatch, DEGRADED, [HOLDS])
    after = {
        "name": "after",
        "type": "PodsReady",
        "intervalSeconds": 60,
        "phases": ["AfterAttacks"],
    }
    experiment = degrading({"name": "up", "type": "PodsReady", "intervalSeconds": 1}, cool_down=2)
    experiment["stateChecks"] = [
        {**experiment["stateChecks"][0], "phases": ["BeforeAttacks"]},
        after,
    ]
    executor, _ = start(fake, experiment)
    script.executor = executor

    await drive(executor)

    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.COMPLETED, Reason.COMPLETED), status
    assert {p for n, p in script.probed if n == "up"} <= {Phase.CREATED, Phase.PREPARED}
    # Never probed before the cool-down, then at once although its interval is 60 s.
    assert {p for n, p in script.probed if n == "after"} == {Phase.ATTACKS_STOPPED}


async def test_a_degradation_journaled_before_a_restart_must_still_recover(
    fake: FakeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check degraded under the attacks, then the operator died. After the restart its
    probes cannot be evaluated (neither pass nor fail): the degradation recorded in status
    before the crash still has to be recovered from, so the run fails at the cool-down's end."""
    unreachable = checks.Probe.error("GET service web:80/: connection refused")
    script = ScriptedChecks(monkeypatch, unreachable, [unreachable])
    experiment = degrading({**DEGRADING, "failureThreshold": 100})
    up = ExperimentSpec.model_validate(experiment).state_checks[0]
    status = applied(journal(experiment, clock()), clock() - timedelta(seconds=10))
    degraded_at = clock()
    status = checks.record_check(status, up, DEGRADED, degraded_at, Phase.ATTACKS_STARTED)
    executor, _ = crashed(fake, experiment, status, replicas=0, deleted=0)
    script.executor = executor

    await drive(executor)

    final = status_of(fake)
    assert (final["phase"], final["reason"]) == (Phase.FAILED, Reason.STATE_CHECK_FAILED), final
    assert final["message"].startswith("state check up did not recover within coolDownSeconds")
    tally = final["stateChecks"][0]
    assert datetime.fromisoformat(tally["degradedAt"]) == degraded_at, "kept from before"
    assert tally["errors"] >= 1
    assert fake.replicas(NS, "web") == 3
