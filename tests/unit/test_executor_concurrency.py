"""The executor and the run lock's holders: runs of two namespaces at once in Namespace
mode, and a scheduled run waiting for its turn (tests/unit/test_executor.py's harness)."""

from __future__ import annotations

import asyncio

import pytest

from shakeout.api.labels import SCHEDULED_TRIGGER, TRIGGER_LABEL
from shakeout.api.run import Phase
from shakeout.engine.runs import Reason
from shakeout.execution import executor as executor_module
from shakeout.kube.resources import RUNS, SWITCHES
from tests.unit.fake_kube import FakeApi
from tests.unit.test_executor import (  # noqa: F401  (fixtures)
    NS,
    RUN,
    SCALE,
    Obj,
    clock,
    drive,
    fake,
    spec,
    start,
    status_of,
    target_writes,
    wait_for,
)

OTHER_NS = "team-b"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "WAIT_POLL", 0.02)


def holders(fake: FakeApi) -> list[Obj]:  # noqa: F811
    switch = fake.switch()
    assert switch is not None
    return list((switch.get("status") or {}).get("activeRuns") or [])


def namespace_mode(fake: FakeApi) -> None:  # noqa: F811
    fake.edit(SWITCHES, None, "default", {"spec": {"enabled": True, "concurrency": "Namespace"}})


def other_holds(fake: FakeApi, namespace: str) -> None:  # noqa: F811
    """A live run `other` of `namespace` holds its turn."""
    if namespace != NS:
        fake.add_namespace(namespace)
    other = fake.add_run(namespace, "other", "exp", status={"phase": "ATTACKS_STARTED"})
    ref = {"namespace": namespace, "name": "other", "uid": other["metadata"]["uid"]}
    fake.edit(SWITCHES, None, "default", {"status": {"activeRun": ref, "activeRuns": [ref]}})


def scheduled(max_wait: int) -> Obj:
    """An Experiment with a schedule (once a year) and its bound on waiting."""
    return {**spec(SCALE), "schedule": {"cron": "0 0 1 1 *", "maxWaitSeconds": max_wait}}


def label_scheduled(fake: FakeApi) -> None:  # noqa: F811
    fake.edit(RUNS, NS, RUN, {"metadata": {"labels": {TRIGGER_LABEL: SCHEDULED_TRIGGER}}})


async def test_namespace_mode_runs_beside_another_namespaces_run(fake: FakeApi) -> None:  # noqa: F811
    namespace_mode(fake)
    other_holds(fake, OTHER_NS)
    executor, _ = start(fake, spec(SCALE))
    task = asyncio.create_task(drive(executor))
    await wait_for(lambda: len(holders(fake)) == 2)
    assert [h["name"] for h in holders(fake)] == ["other", RUN]
    await task
    assert status_of(fake)["phase"] == Phase.COMPLETED
    # Its turn given back, the other's kept; activeRun names the first holder.
    assert [h["name"] for h in holders(fake)] == ["other"]
    switch = fake.switch()
    assert switch is not None
    assert switch["status"]["activeRun"]["name"] == "other"


async def test_namespace_mode_refuses_a_second_run_of_the_namespace(fake: FakeApi) -> None:  # noqa: F811
    namespace_mode(fake)
    other_holds(fake, NS)
    executor, _ = start(fake, spec(SCALE))
    await drive(executor)
    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ANOTHER_RUN_ACTIVE)
    assert f"holds namespace {NS}'s turn" in status["message"]
    assert target_writes(fake) == []


async def test_a_scheduled_run_waits_and_runs_when_the_holder_ends(fake: FakeApi) -> None:  # noqa: F811
    other_holds(fake, OTHER_NS)  # Cluster mode: any holder takes the turn
    executor, host = start(fake, scheduled(max_wait=3600))
    label_scheduled(fake)
    task = asyncio.create_task(drive(executor, timeout=10))

    def waiting() -> Obj | None:
        conditions = status_of(fake).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Waiting"), None)

    await wait_for(lambda: waiting() is not None)
    condition = waiting()
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("True", Reason.ANOTHER_RUN_ACTIVE)
    assert f"{OTHER_NS}/other" in condition["message"]
    assert "phase" not in status_of(fake)
    assert target_writes(fake) == []
    fake.edit(RUNS, OTHER_NS, "other", {"status": {"phase": "COMPLETED"}})
    await task
    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert ("Normal", "Waiting") in [(e.type, e.reason) for e in host.events]


@pytest.mark.parametrize(
    ("stop", "phase", "reason"),
    [
        ("cancel", Phase.CANCELED, Reason.CANCELED),
        ("stop-all", Phase.CANCELED, Reason.STOPPED_ALL),
        ("bound", Phase.FAILED, Reason.ANOTHER_RUN_ACTIVE),
    ],
)
async def test_a_waiting_run_ends_untouched(
    fake: FakeApi,  # noqa: F811
    stop: str,
    phase: Phase,
    reason: Reason,
) -> None:
    other_holds(fake, OTHER_NS)
    # The clock runs 20 times faster: a bound of 20 s passes in about one second.
    executor, _ = start(fake, scheduled(max_wait=20 if stop == "bound" else 3600))
    label_scheduled(fake)
    task = asyncio.create_task(drive(executor, timeout=10))
    await wait_for(lambda: "conditions" in status_of(fake))
    if stop == "cancel":
        fake.edit(RUNS, NS, RUN, {"spec": {"cancel": True}})
    elif stop == "stop-all":
        fake.edit(SWITCHES, None, "default", {"spec": {"enabled": False}})
    await task
    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (phase, reason)
    if stop == "bound":
        assert "schedule.maxWaitSeconds" in status["message"]
    else:
        assert "while it waited for its turn; nothing was touched" in status["message"]
    waiting = next(c for c in status["conditions"] if c["type"] == "Waiting")
    assert waiting["status"] == "False"
    assert target_writes(fake) == []
    assert [h["name"] for h in holders(fake)] == ["other"]


async def test_a_manual_run_never_waits_even_with_the_bound_set(fake: FakeApi) -> None:  # noqa: F811
    other_holds(fake, OTHER_NS)
    executor, _ = start(fake, scheduled(max_wait=3600))
    await drive(executor, timeout=2)
    status = status_of(fake)
    assert (status["phase"], status["reason"]) == (Phase.FAILED, Reason.ANOTHER_RUN_ACTIVE)
    assert not any(c["type"] == "Waiting" for c in status.get("conditions") or [])


async def test_namespace_mode_takes_over_a_finished_holder_of_the_namespace(
    fake: FakeApi,  # noqa: F811
) -> None:
    namespace_mode(fake)
    other_holds(fake, NS)
    fake.edit(RUNS, NS, "other", {"status": {"phase": "COMPLETED"}})
    executor, _ = start(fake, spec(SCALE))
    await drive(executor)
    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert holders(fake) == []
