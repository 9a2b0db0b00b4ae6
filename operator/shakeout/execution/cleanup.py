"""Marks that outlive their faults, and finished runs still in the operator's watch.

NetworkIsolation's rollback deletes the policy (the fault ends at once, whatever the
number of targets); the isolation labels then select nothing and are removed by the
run's executor right after the run ends. `sweep` removes any that an operator restart
left behind: the labelled pods whose run is over or gone are unlabelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from shakeout.api.labels import FINISHED_LABEL, ISOLATED
from shakeout.attacks.cluster import ClusterAttacks
from shakeout.engine.runs import is_terminal
from shakeout.execution.retire import retire_run
from shakeout.kube.client import api
from shakeout.kube.resources import PODS

log = logging.getLogger("shakeout.cleanup")

# Clean-ups after runs, by (namespace, run UID), held by the operator rather than by the
# runs' daemons: kopf cancels a daemon a minute after its run ended (handlers/runs.py,
# cancellation_backoff), and unmarking 10,000 pods on a busy API server takes longer
# (bench/scale.py left 5,521 marks to the next sweep, 5 minutes later, before they were
# held here). The sweep leaves the marks of these runs alone: unmarking them a second
# time, side by side, doubled the writes (a JSON Patch each, refused for all but one).
AFTER_RUNS: dict[tuple[str, str], asyncio.Task[None]] = {}


async def outliving_the_caller(
    coro: Coroutine[Any, Any, None], what: str, run: tuple[str, str]
) -> None:
    """Run `coro`, the clean-up of `run` (namespace, UID), in a task of the operator's own
    and wait for it. When the caller is cancelled, the task goes on (shielded) until it is
    done or the operator exits; what it leaves then is the sweep's."""
    task = asyncio.create_task(coro, name=what)
    AFTER_RUNS[run] = task
    task.add_done_callback(lambda done: _forget(run, done))
    await asyncio.shield(task)


def _forget(run: tuple[str, str], task: asyncio.Task[None]) -> None:
    if AFTER_RUNS.get(run) is task:
        del AFTER_RUNS[run]
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning(f"{task.get_name()} failed (the next sweep tries again): {error}")


# Distinct marks looked at by one sweep (any team may label its pods): the rest wait for
# the next sweep, so that a flood of marks never makes one sweep read without bound.
MAX_MARKS_PER_SWEEP = 50


async def sweep() -> int:
    """Unlabel the marks of runs that are not live; returns how many runs were swept.

    Each mark names its run by UID, in the pod's namespace: the run is looked up among
    the unfinished runs of that namespace only (never every run of the cluster), for at
    most MAX_MARKS_PER_SWEEP distinct marks. The marks of a run whose own clean-up is
    going on (AFTER_RUNS) are its clean-up's.
    """
    marks: dict[tuple[str, str], int] = defaultdict(int)
    for pod in await api().list_objects(PODS, labels=ISOLATED):
        meta = pod["metadata"]
        mark = (meta["namespace"], (meta.get("labels") or {}).get(ISOLATED, ""))
        if mark in AFTER_RUNS:
            continue
        if mark in marks or len(marks) < MAX_MARKS_PER_SWEEP:
            marks[mark] += 1
    live: dict[str, set[str]] = {}
    stale = []
    for namespace, uid in marks:
        if namespace not in live:
            live[namespace] = await live_runs(namespace)
        if uid not in live[namespace]:
            stale.append((namespace, uid))
    for namespace, uid in stale:
        await ClusterAttacks(namespace, run_uid=uid).unmark()
    return len(stale)


async def live_runs(namespace: str) -> set[str]:
    """The UIDs of the namespace's runs that are not over (a finished run is labelled so;
    one that ended before it was labelled is not live either)."""
    return {
        run["metadata"]["uid"]
        for run in await api().list_runs(namespace, f"!{FINISHED_LABEL}")
        if not is_terminal((run.get("status") or {}).get("phase"))
    }


async def retire_finished() -> int:
    """Finished runs still in the operator's watch (they ended before runs were retired,
    or the operator stopped between a run's end and its retirement) are retired now."""
    runs = await api().list_runs(selector=f"!{FINISHED_LABEL}")
    finished = [r for r in runs if is_terminal((r.get("status") or {}).get("phase"))]
    for run in finished:
        await retire_run(run["metadata"]["namespace"], run["metadata"]["name"])
    return len(finished)
