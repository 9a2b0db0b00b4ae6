"""The scheduler's tick against an in-memory API server: due runs are created, each
Experiment on its own."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shakeout.api.labels import (
    EXPERIMENT_LABEL,
    SCHEDULED_FOR,
    SCHEDULED_TRIGGER,
    STARTED_BY,
    TRIGGER_LABEL,
    experiment_label_value,
)
from shakeout.api.run import UserInfo
from shakeout.execution import scheduler
from shakeout.gather import facts
from shakeout.kube import client as kube_client
from shakeout.kube.errors import Conflict, NotFound, Unavailable
from shakeout.kube.resources import EXPERIMENTS, RUNS
from tests.unit.fake_kube import FakeApi

Obj = dict[str, Any]

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
DUE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPEC: Obj = {
    "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
    "attacks": [{"name": "kill", "type": "PodDelete"}],
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    monkeypatch.setattr(scheduler, "SCHEDULED", {})
    monkeypatch.setattr(facts, "IDENTITIES", facts.Identities())
    monkeypatch.setattr(scheduler, "IDENTITIES", facts.IDENTITIES)
    api.add_namespace("team-a")
    api.add_namespace("team-b")
    return api


def scheduled(
    fake: FakeApi,
    namespace: str,
    name: str,
    *,
    cron: str = "*/5 * * * *",
    history_limit: int = 10,
    last: str | None = None,
) -> Obj:
    """An Experiment with a schedule, created long ago, as its watch event shows it."""
    schedule = {"cron": cron, "historyLimit": history_limit}
    obj = fake.add_experiment(namespace, name, {**SPEC, "schedule": schedule})
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    if last is not None:
        obj["status"] = {"lastScheduleTime": last}
    scheduler.observe("ADDED", obj)
    return obj


def run_name(experiment: str, due: datetime = DUE) -> str:
    return f"{experiment}-{due.strftime('%Y%m%d-%H%M')}"


def last_schedule_time(fake: FakeApi, namespace: str, name: str) -> str | None:
    obj = fake.peek(EXPERIMENTS, namespace, name)
    assert obj is not None
    value: str | None = (obj.get("status") or {}).get("lastScheduleTime")
    return value


async def test_a_due_run_is_created(fake: FakeApi) -> None:
    experiment = scheduled(fake, "team-a", "nightly")

    await scheduler.tick(NOW)

    run = fake.peek(RUNS, "team-a", run_name("nightly"))
    assert run is not None
    assert run["spec"] == {"experimentRef": {"name": "nightly"}}
    assert run["metadata"]["labels"] == {
        EXPERIMENT_LABEL: "nightly",
        TRIGGER_LABEL: SCHEDULED_TRIGGER,
    }
    assert run["metadata"]["annotations"] == {SCHEDULED_FOR: DUE.isoformat()}
    # Named by a label, not owned (SEC-23): deleting the Experiment keeps the run's report.
    assert "ownerReferences" not in run["metadata"]
    assert experiment["metadata"]["uid"]
    assert last_schedule_time(fake, "team-a", "nightly") == "2026-03-01T12:00:00Z"
    assert scheduler.SCHEDULED[("team-a", "nightly")].last_schedule_time == DUE

    # The next tick, before the next due time, creates nothing.
    posts = len(fake.find("POST", r"/experimentruns$"))
    await scheduler.tick(NOW + timedelta(seconds=30))
    assert len(fake.find("POST", r"/experimentruns$")) == posts


async def test_a_due_time_recorded_already_creates_nothing(fake: FakeApi) -> None:
    scheduled(fake, "team-a", "nightly", last="2026-03-01T12:00:00Z")

    await scheduler.tick(NOW)

    assert fake.find("POST", r"/experimentruns$") == []
    assert fake.find("PATCH", r"/experiments/") == []


async def test_a_due_time_long_past_is_recorded_without_a_run(fake: FakeApi) -> None:
    scheduled(fake, "team-a", "nightly")

    await scheduler.tick(DUE + timedelta(minutes=3))

    assert fake.find("POST", r"/experimentruns$") == []
    assert last_schedule_time(fake, "team-a", "nightly") == "2026-03-01T12:00:00Z"


async def test_a_run_that_exists_already_is_no_error(
    fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """After a restart or a failover the run of this due time may exist: the create
    conflicts, which is fine, and the due time is recorded."""
    scheduled(fake, "team-a", "nightly")
    fake.add_run("team-a", run_name("nightly"), "nightly")

    with caplog.at_level(logging.WARNING, logger="shakeout.scheduler"):
        await scheduler.tick(NOW)

    [post] = fake.find("POST", r"/experimentruns$")
    assert isinstance(post.error, Conflict)
    assert last_schedule_time(fake, "team-a", "nightly") == "2026-03-01T12:00:00Z"
    assert scheduler.SCHEDULED[("team-a", "nightly")].last_schedule_time == DUE
    assert caplog.records == []


@pytest.mark.parametrize(
    "error", [Conflict("conflict", 409), Unavailable("away", 503)], ids=["409", "503"]
)
async def test_one_experiments_failed_status_patch_keeps_no_other_run_from_being_created(
    fake: FakeApi, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    scheduled(fake, "team-a", "first")
    scheduled(fake, "team-b", "second")
    fake.fail("PATCH", r"/namespaces/team-a/experiments/first/status$", error)

    with caplog.at_level(logging.WARNING, logger="shakeout.scheduler"):
        await scheduler.tick(NOW)

    assert fake.peek(RUNS, "team-b", run_name("second")) is not None
    assert last_schedule_time(fake, "team-b", "second") == "2026-03-01T12:00:00Z"
    # The first one's run was created before its status write failed, and is not
    # created twice on the next tick.
    assert fake.peek(RUNS, "team-a", run_name("first")) is not None
    assert [r.getMessage() for r in caplog.records] == [f"schedule of team-a/first: {error}"]
    await scheduler.tick(NOW + timedelta(seconds=5))
    assert len(fake.find("POST", r"/namespaces/team-a/experimentruns$")) == 1


async def test_one_experiments_failed_create_keeps_no_other_run_from_being_created(
    fake: FakeApi,
) -> None:
    scheduled(fake, "team-a", "first")
    scheduled(fake, "team-b", "second")
    fake.fail("POST", r"/namespaces/team-a/experimentruns$", NotFound("namespace gone", 404))

    await scheduler.tick(NOW)

    assert fake.peek(RUNS, "team-b", run_name("second")) is not None
    assert last_schedule_time(fake, "team-a", "first") is None


async def test_an_older_watch_event_does_not_undo_the_recorded_due_time(fake: FakeApi) -> None:
    experiment = scheduled(fake, "team-a", "nightly")
    await scheduler.tick(NOW)

    # The watch delivers the Experiment as it was before our status write came back.
    stale = {**experiment, "status": {}}
    scheduler.observe("MODIFIED", stale)
    await scheduler.tick(NOW + timedelta(seconds=10))

    assert len(fake.find("POST", r"/experimentruns$")) == 1


async def test_finished_scheduled_runs_beyond_the_history_limit_are_pruned(
    fake: FakeApi,
) -> None:
    scheduled(fake, "team-a", "nightly", history_limit=2)
    labels = {EXPERIMENT_LABEL: "nightly", TRIGGER_LABEL: SCHEDULED_TRIGGER}
    for hour, phase in [(8, "COMPLETED"), (9, "FAILED"), (10, "CANCELED"), (11, None)]:
        name = f"nightly-20260301-{hour:02d}00"
        run = fake.add_run("team-a", name, "nightly", status={"phase": phase} if phase else None)
        run["metadata"]["labels"] = labels
        run["metadata"]["creationTimestamp"] = f"2026-03-01T{hour:02d}:00:00Z"
    fake.add_run("team-a", "by-hand", "nightly", status={"phase": "COMPLETED"})

    await scheduler.tick(NOW)

    assert fake.names(RUNS, "team-a") == [
        "by-hand",
        "nightly-20260301-0900",
        "nightly-20260301-1000",
        "nightly-20260301-1100",
        "nightly-20260301-1200",
    ]


async def test_a_scheduled_run_records_the_operator_as_its_creator(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the mutating webhook would: a scheduled run is never one whose creator went
    unrecorded, even when the webhook was down when it was created (SEC-21)."""
    me = UserInfo(username="system:serviceaccount:shakeout-system:shakeout-operator")
    monkeypatch.setattr(scheduler.IDENTITIES, "operator", me)
    scheduled(fake, "team-a", "nightly")

    await scheduler.tick(NOW)

    run = fake.peek(RUNS, "team-a", run_name("nightly"))
    assert run is not None
    assert json.loads(run["metadata"]["annotations"][STARTED_BY]) == {
        "username": me.username,
        "groups": [],
    }
    assert "ownerReferences" not in run["metadata"]


async def test_pruning_never_deletes_a_run_with_findings_or_action_required(
    fake: FakeApi,
) -> None:
    scheduled(fake, "team-a", "nightly", history_limit=1)
    labels = {EXPERIMENT_LABEL: "nightly", TRIGGER_LABEL: SCHEDULED_TRIGGER}
    reports: list[Obj] = [{"findings": "the cache fell over"}, {"actionRequired": "No"}, {}, {}]
    for hour, report in zip((8, 9, 10, 11), reports, strict=True):
        name = f"nightly-20260301-{hour:02d}00"
        run = fake.add_run("team-a", name, "nightly", status={"phase": "COMPLETED"})
        run["metadata"]["labels"] = labels
        run["metadata"]["creationTimestamp"] = f"2026-03-01T{hour:02d}:00:00Z"
        run["spec"].update(report)

    await scheduler.tick(NOW)

    # 10:00 is pruned: beyond the limit of 1 among the runs without a report (11:00 and
    # the new 12:00 one is not finished). The reports stay, whatever their age.
    assert fake.names(RUNS, "team-a") == [
        "nightly-20260301-0800",
        "nightly-20260301-0900",
        "nightly-20260301-1100",
        "nightly-20260301-1200",
    ]


async def test_an_experiment_name_too_long_for_a_label_still_gets_its_runs(fake: FakeApi) -> None:
    """Experiment names may have 253 characters, label values 63: the run is labelled
    with a value that fits, and its history is found by the same value."""
    long = "a" * 70 + ".example"
    scheduled(fake, "team-a", long, history_limit=1)

    await scheduler.tick(NOW)

    run = fake.peek(RUNS, "team-a", run_name(long))
    assert run is not None
    value = run["metadata"]["labels"][EXPERIMENT_LABEL]
    assert value == experiment_label_value(long)
    assert len(value) <= 63
    assert value != experiment_label_value("a" * 70 + ".other")
