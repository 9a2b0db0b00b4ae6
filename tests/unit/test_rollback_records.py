"""The rollback record: a copy of a run's attack journal outside the run object, written
before anything is applied, and what the operator does with it when the run object
vanishes (deleted without its finalizer) mid-run: at once, and after a restart."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from shakeout.api.labels import ROLLBACK_RECORD_LABEL
from shakeout.api.run import Phase
from shakeout.engine.runs import Reason
from shakeout.execution import vanished
from shakeout.execution.journal import RunGone
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather.records import record_name
from shakeout.kube.resources import CONFIG_MAPS, EVENTS, RUNS
from shakeout.options import OPTIONS
from tests.unit.fake_kube import FakeApi

# The executor tests' world (a namespace, a Deployment web of 3, the switch) and helpers;
# `clock` and `fake` are their fixtures.
from tests.unit.test_executor import (  # noqa: F401
    KILL,
    NS,
    RUN,
    SCALE,
    applied,
    attacks_of,
    clock,
    crashed,
    fake,
    hold_lock,
    journal,
    lock_holder,
    spec,
    start,
    status_of,
    target_writes,
)


def record_of(fake: FakeApi, uid: str) -> dict[str, object] | None:  # noqa: F811  (fixture name)
    return fake.peek(CONFIG_MAPS, OPTIONS.namespace, record_name(uid))


def run_uid(fake: FakeApi) -> str:  # noqa: F811
    return str(fake.run(NS, RUN)["metadata"]["uid"])


async def test_the_record_is_written_before_anything_is_touched_and_goes_at_the_end(
    fake: FakeApi,  # noqa: F811
) -> None:
    executor, _ = start(fake, spec(SCALE, KILL))
    uid = run_uid(fake)
    seen: list[object] = []
    first_scale = lambda _c: seen.append(copy.deepcopy(record_of(fake, uid)))  # noqa: E731
    fake.on("PATCH", r"/deployments/web/scale$", first_scale)

    await asyncio.wait_for(executor.execute(), 5)

    first = seen[0]
    assert isinstance(first, dict)
    assert first["metadata"]["labels"] == {ROLLBACK_RECORD_LABEL: "true"}
    data = first["data"]
    assert (data["namespace"], data["name"], data["uid"]) == (NS, RUN, uid)
    states = {a["name"]: a["state"] for a in json.loads(data["status"])["attacks"]}
    assert states == {"scale": "Applying", "kill": "Applying"}
    # Written before the run's status said Applying, so before any target write.
    writes = [c.path for c in fake.calls if c.method != "GET"]
    record_create = next(i for i, p in enumerate(writes) if "/configmaps" in p)
    assert record_create < writes.index(target_writes(fake)[0].path)
    assert status_of(fake)["phase"] == Phase.COMPLETED
    assert record_of(fake, uid) is None


async def test_a_run_refused_at_pick_up_writes_no_record(fake: FakeApi) -> None:  # noqa: F811
    executor, _ = start(fake, None)  # its Experiment does not exist

    await asyncio.wait_for(executor.execute(), 5)

    assert status_of(fake)["reason"] == Reason.EXPERIMENT_NOT_FOUND
    assert not fake.find("POST", r"/configmaps$")


async def test_a_run_that_vanishes_mid_attack_is_rolled_back_from_its_record(
    fake: FakeApi,  # noqa: F811
) -> None:
    executor, host = start(fake, spec({**SCALE, "durationSeconds": 60}))
    uid = run_uid(fake)
    # Deleted without the operator's finalizer once the scale is applied: the object and
    # its status, the journal, are gone.
    fake.on("PATCH", r"/deployments/web/scale$", lambda _c: fake.drop(RUNS, NS, RUN))

    with pytest.raises(RunGone):
        await asyncio.wait_for(executor.execute(), 5)
    assert executor.journal.recorded
    assert fake.replicas(NS, "web") == 0  # SCALE's value: still applied
    await asyncio.wait_for(executor.finish_vanished(resumed=False), 5)

    assert fake.replicas(NS, "web") == 3
    assert record_of(fake, uid) is None
    assert lock_holder(fake) is None
    assert ("Warning", Reason.RUN_DELETED) in [(e.type, e.reason) for e in host.events]


async def test_after_a_restart_a_vanished_run_is_rolled_back_from_its_record(
    fake: FakeApi,  # noqa: F811
    clock: object,  # noqa: F811
) -> None:
    experiment = spec({**SCALE, "durationSeconds": 60}, KILL)
    status = applied(journal(experiment, clock()), clock())  # type: ignore[operator]
    executor, _ = crashed(fake, experiment, status, replicas=0, deleted=1)  # SCALE's value
    uid = run_uid(fake)
    await executor.journal.record.save(status)
    fake.drop(RUNS, NS, RUN)  # vanished while the operator was down

    assert await vanished.roll_back_vanished() == 1

    assert fake.replicas(NS, "web") == 3
    assert record_of(fake, uid) is None
    assert lock_holder(fake) is None
    assert uid not in LIVE_RUNS
    posted = [fake.peek(EVENTS, NS, n)["reason"] for n in fake.names(EVENTS, NS)]  # type: ignore[index]
    assert Reason.RUN_DELETED in posted
    # A second sweep finds nothing left to do.
    assert await vanished.roll_back_vanished() == 0


async def test_a_record_of_a_live_run_is_left_to_its_executor(
    fake: FakeApi,  # noqa: F811
    clock: object,  # noqa: F811
) -> None:
    experiment = spec({**SCALE, "durationSeconds": 60})
    status = applied(journal(experiment, clock()), clock())  # type: ignore[operator]
    executor, _ = crashed(fake, experiment, status, replicas=1, deleted=0)
    await executor.journal.record.save(status)

    assert await vanished.roll_back_vanished() == 0

    assert fake.replicas(NS, "web") == 1
    assert record_of(fake, run_uid(fake)) is not None


async def test_the_lock_of_a_vanished_run_is_not_taken_while_its_record_lasts(
    fake: FakeApi,  # noqa: F811
    clock: object,  # noqa: F811
) -> None:
    experiment = spec({**SCALE, "durationSeconds": 60})
    status = applied(journal(experiment, clock()), clock())  # type: ignore[operator]
    old, _ = crashed(fake, experiment, status, replicas=1, deleted=0)
    await old.journal.record.save(status)
    fake.drop(RUNS, NS, RUN)
    second, _ = start(fake, None, run="run-2")

    await asyncio.wait_for(second.execute(), 5)

    assert (status_of(fake, "run-2")["reason"]) == Reason.ANOTHER_RUN_ACTIVE
    assert fake.replicas(NS, "web") == 1  # the second run touched nothing


async def test_a_live_run_labelled_finished_is_taken_back_into_the_watch(
    fake: FakeApi,  # noqa: F811
    clock: object,  # noqa: F811
) -> None:
    experiment = spec({**SCALE, "durationSeconds": 60})
    status = applied(journal(experiment, clock()), clock())  # type: ignore[operator]
    crashed(fake, experiment, status, replicas=1, deleted=0)
    fake.edit(RUNS, NS, RUN, {"metadata": {"labels": {"shakeout.dev/finished": "true"}}})

    assert await vanished.unhide_live() == 1

    assert "shakeout.dev/finished" not in (fake.run(NS, RUN)["metadata"].get("labels") or {})
    assert await vanished.unhide_live() == 0
