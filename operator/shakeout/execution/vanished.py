"""Runs whose object vanished with attacks journaled, found from their rollback records
after an operator restart (a run that vanishes while its executor lives is rolled back by
that executor at once: handlers/runs.py), and live runs hidden from the operator's watch.

Both are bounded by the runs that hold attacks (one per turn: the run lock) and the lock's
holders: the sweep never lists every run of the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard

from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import FINISHED_LABEL
from shakeout.engine.runs import is_terminal
from shakeout.execution.executor import RunExecutor
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather.records import RunRecord, read_records, record_name
from shakeout.gather.switch import held_runs
from shakeout.kube.client import Obj, api, timestamp
from shakeout.kube.errors import KubeError
from shakeout.kube.resources import CONFIG_MAPS, EVENTS, RUNS
from shakeout.options import OPTIONS

log = logging.getLogger("shakeout.vanished")


class VanishedHost:
    """The executor's host for a run whose object is gone: the body from its record, and
    Events posted in the run's namespace (the team still sees what happened)."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self._body: dict[str, Any] = {
            "metadata": {"namespace": record.namespace, "name": record.name, "uid": record.uid},
            "spec": {"experimentRef": {"name": record.experiment}},
            "status": record.status.to_k8s(),
        }
        # Events to post once the rollback is done (posting is no reason to delay it).
        self.pending: list[tuple[str, str, str]] = []

    @property
    def body(self) -> Mapping[str, Any]:
        return self._body

    def deleting(self) -> bool:
        return True

    def shutting_down(self) -> bool:
        return False

    def post_event(self, type: str, reason: str, message: str) -> None:  # noqa: A002
        log.warning(f"run {self.record.namespace}/{self.record.name} (gone): {reason}: {message}")
        self.pending.append((type, reason, message))


async def post_events(record: RunRecord, events: list[tuple[str, str, str]]) -> None:
    now = timestamp(datetime.now(UTC))
    for kind, reason, message in events:
        body = {
            "metadata": {
                "name": f"{record.name[:230]}.{secrets.token_hex(8)}",
                "namespace": record.namespace,
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ExperimentRun",
                "namespace": record.namespace,
                "name": record.name,
                "uid": record.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "shakeout-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(KubeError):  # the namespace may be gone too
            await api().create(EVENTS, record.namespace, body)


def same_run(run: Obj | None, uid: str) -> TypeGuard[Obj]:
    return run is not None and run["metadata"].get("uid") == uid


async def roll_back_vanished() -> int:
    """Roll back the runs whose record outlived their object; returns how many."""
    done = 0
    for record in await read_records():
        if record.uid in LIVE_RUNS:
            continue  # its executor is on it
        run = await api().get_run(record.namespace, record.name)
        if same_run(run, record.uid):
            if not is_terminal((run.get("status") or {}).get("phase")):
                continue  # its daemon has it (or will have it, once the watch delivers it)
            # Ended, and the record's deletion was lost (an operator stopped between).
            await api().delete(CONFIG_MAPS, OPTIONS.namespace, record_name(record.uid))
            continue
        log.warning(
            f"run {record.namespace}/{record.name} vanished with attacks journaled: "
            "rolling them back from its record"
        )
        host = VanishedHost(record)
        executor = RunExecutor(host, LIVE_RUNS.add(record.uid), OPTIONS.protected_namespaces)
        try:
            await executor.finish_vanished(resumed=True)
        finally:
            LIVE_RUNS.remove(record.uid)
            await post_events(record, host.pending)
        done += 1
    return done


async def unhide(namespace: str, name: str, uid: str) -> bool:
    """A live run labelled finished is out of the operator's watch: take the label off (a
    compare on the UID), so that the watch delivers it again. True if it was hidden."""
    run = await api().get_run(namespace, name)
    if not same_run(run, uid):
        return False
    meta = run["metadata"]
    if FINISHED_LABEL not in (meta.get("labels") or {}):
        return False
    if is_terminal((run.get("status") or {}).get("phase")):
        return False
    patch = {"metadata": {"uid": uid, "labels": {FINISHED_LABEL: None}}}
    await api().merge_patch(RUNS, namespace, name, patch)
    return True


async def unhide_live() -> int:
    """Live runs labelled finished by someone else than the operator (the policy
    shakeout-run-changes forbids it; this holds where the policy is absent): the runs with
    a record and the lock's holders, taken back into the watch. Returns how many."""
    candidates = {(r.namespace, r.name, r.uid) for r in await read_records()}
    for holder in held_runs(await api().get_switch()):
        if holder.uid:
            candidates.add((holder.namespace, holder.name, holder.uid))
    hidden = 0
    for namespace, name, uid in sorted(candidates):
        if await unhide(namespace, name, uid):
            log.warning(f"run {namespace}/{name} was labelled {FINISHED_LABEL} while live")
            hidden += 1
    return hidden
