"""Scheduled runs: one loop over the scheduled Experiments, fed by the watch.

No kopf timer per Experiment: kopf puts a finalizer on objects with timers, and an
Experiment must never hang in Terminating because the operator is away. One
Experiment's failure (its namespace gone, the API server refusing a write) is logged and
retried on the next tick; it never keeps the others' due runs from being created.

A scheduled run names its Experiment by a label, never by an ownerReference: deleting or
GitOps-pruning an Experiment keeps the reports of its runs. Pruning beyond the history
limit never deletes a run that has findings or actionRequired.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shakeout.api.common import API_VERSION
from shakeout.api.experiment import Schedule
from shakeout.api.labels import (
    EXPERIMENT_LABEL,
    SCHEDULED_FOR,
    SCHEDULED_TRIGGER,
    STARTED_BY,
    TRIGGER_LABEL,
    experiment_label_value,
)
from shakeout.engine.runs import is_terminal
from shakeout.engine.schedule import decide_schedule, run_name, runs_to_prune
from shakeout.gather.facts import IDENTITIES
from shakeout.kube.client import api, timestamp
from shakeout.kube.errors import Conflict

log = logging.getLogger("shakeout.scheduler")


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


def observe(event_type: str, body: dict[str, Any]) -> None:
    """Keep SCHEDULED current with one watch event of an Experiment."""
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    raw = body.get("spec", {}).get("schedule")
    if event_type == "DELETED" or not raw or meta.get("deletionTimestamp"):
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
    """Create the runs that fell due; each Experiment on its own."""
    for item in list(SCHEDULED.values()):
        try:
            await tick_one(item, now)
        except Exception as err:  # noqa: BLE001  (one Experiment never stalls the others)
            log.warning(f"schedule of {item.namespace}/{item.name}: {err}")


async def tick_one(item: Scheduled, now: datetime) -> None:
    decision = decide_schedule(
        item.schedule.cron, item.schedule.time_zone, item.last_schedule_time, item.created, now
    )
    if decision is None:
        return
    if decision.create:
        await create_scheduled_run(item, decision.due)
    item.last_schedule_time = decision.due
    await api().patch_experiment_status(
        item.namespace, item.name, {"lastScheduleTime": timestamp(decision.due)}
    )
    await prune(item)


async def create_scheduled_run(item: Scheduled, due: datetime) -> None:
    """Create the run; the operator checks its preconditions and records a refusal.

    No ownerReference: the run outlives its Experiment (its report is the team's). The
    operator records itself as the creator, as the mutating webhook would (which then
    writes the same): so the run is never taken for one whose creator went unrecorded.
    """
    annotations = {SCHEDULED_FOR: due.isoformat()}
    if (me := IDENTITIES.operator) is not None:
        annotations[STARTED_BY] = json.dumps(
            {"username": me.username, "groups": list(me.groups)}, separators=(",", ":")
        )
    body = {
        "apiVersion": API_VERSION,
        "kind": "ExperimentRun",
        "metadata": {
            "name": run_name(item.name, due),
            "namespace": item.namespace,
            "labels": {
                EXPERIMENT_LABEL: experiment_label_value(item.name),
                TRIGGER_LABEL: SCHEDULED_TRIGGER,
            },
            "annotations": annotations,
        },
        "spec": {"experimentRef": {"name": item.name}},
    }
    try:
        await api().create_run(item.namespace, body)
    except Conflict:
        return  # created already, before a restart or a failover


def has_report(run: dict[str, Any]) -> bool:
    """Whether the team wrote findings or actionRequired on the run: never pruned."""
    spec = run.get("spec") or {}
    return bool(spec.get("findings")) or spec.get("actionRequired") is not None


async def prune(item: Scheduled) -> None:
    """Delete the oldest finished scheduled runs beyond the history limit; a run with a
    report (findings, actionRequired) is kept and does not count against the limit."""
    runs = await api().list_runs(
        item.namespace,
        f"{EXPERIMENT_LABEL}={experiment_label_value(item.name)},"
        f"{TRIGGER_LABEL}={SCHEDULED_TRIGGER}",
    )
    finished = [
        (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"])
        for r in runs
        if is_terminal((r.get("status") or {}).get("phase")) and not has_report(r)
    ]
    for name in runs_to_prune(finished, item.schedule.history_limit):
        await api().delete_run(item.namespace, name)
