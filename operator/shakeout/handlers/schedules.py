"""Scheduled runs: one loop over the scheduled Experiments, fed by the watch.

No kopf timer per Experiment: kopf puts a finalizer on objects with timers, and an
Experiment must never hang in Terminating because the operator is away.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from shakeout.api.common import API_VERSION, GROUP, VERSION
from shakeout.api.experiment import Schedule
from shakeout.engine.runs import is_terminal
from shakeout.engine.schedule import decide_schedule, run_name, runs_to_prune
from shakeout.handlers.k8s import api, timestamp
from shakeout.handlers.periodic import every

EXPERIMENT_LABEL = "shakeout.dev/experiment"
TRIGGER_LABEL = "shakeout.dev/trigger"
SCHEDULED_FOR = "shakeout.dev/scheduled-for"
TICK_SECONDS = 1.0


@dataclass
class Scheduled:
    namespace: str
    name: str
    uid: str
    schedule: Schedule
    created: datetime
    last_schedule_time: datetime | None


SCHEDULED: dict[tuple[str, str], Scheduled] = {}


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@kopf.on.event(GROUP, VERSION, "experiments")
def experiment_event(type: str, body: kopf.Body, **_: Any) -> None:  # noqa: A002
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    raw = body.get("spec", {}).get("schedule")
    if type == "DELETED" or not raw or meta.get("deletionTimestamp"):
        SCHEDULED.pop(key, None)
        return
    try:
        schedule = Schedule.model_validate(raw)
    except ValueError:
        SCHEDULED.pop(key, None)  # reported by the Valid condition
        return
    previous = SCHEDULED.get(key)
    last = _time(body.get("status", {}).get("lastScheduleTime"))
    if (
        previous is not None
        and previous.last_schedule_time
        and (last is None or last < previous.last_schedule_time)
    ):
        last = previous.last_schedule_time  # our own write may not have come back yet
    SCHEDULED[key] = Scheduled(
        namespace=key[0],
        name=key[1],
        uid=meta.get("uid", ""),
        schedule=schedule,
        created=_time(meta.get("creationTimestamp")) or datetime.now(UTC),
        last_schedule_time=last,
    )


async def tick(now: datetime) -> None:
    for item in list(SCHEDULED.values()):
        decision = decide_schedule(
            item.schedule.cron, item.schedule.time_zone, item.last_schedule_time, item.created, now
        )
        if decision is None:
            continue
        if decision.create:
            await create_scheduled_run(item, decision.due)
        item.last_schedule_time = decision.due
        await api().patch_experiment_status(
            item.namespace,
            item.name,
            {"lastScheduleTime": timestamp(decision.due)},
        )
        await prune(item)


async def create_scheduled_run(item: Scheduled, due: datetime) -> None:
    """Create the run; the operator checks its preconditions and records a refusal."""
    body = {
        "apiVersion": API_VERSION,
        "kind": "ExperimentRun",
        "metadata": {
            "name": run_name(item.name, due),
            "namespace": item.namespace,
            "labels": {EXPERIMENT_LABEL: item.name, TRIGGER_LABEL: "schedule"},
            "annotations": {SCHEDULED_FOR: due.isoformat()},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Experiment",
                    "name": item.name,
                    "uid": item.uid,
                }
            ],
        },
        "spec": {"experimentRef": {"name": item.name}},
    }
    try:
        await api().create_run(item.namespace, body)
    except ApiException as err:
        if err.status != 409:  # 409: created already, before a restart
            raise


async def prune(item: Scheduled) -> None:
    """Delete the oldest finished scheduled runs beyond the history limit."""
    runs = await api().list_runs(
        item.namespace, f"{EXPERIMENT_LABEL}={item.name},{TRIGGER_LABEL}=schedule"
    )
    finished = [
        (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"])
        for r in runs
        if is_terminal((r.get("status") or {}).get("phase"))
    ]
    for name in runs_to_prune(finished, item.schedule.history_limit):
        await api().delete_run(item.namespace, name)


@kopf.on.startup()
async def start_scheduler(logger: kopf.Logger, **_: Any) -> None:
    every(TICK_SECONDS, lambda: tick(datetime.now(UTC)), logger, "scheduler tick")
