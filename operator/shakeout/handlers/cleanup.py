"""Marks that outlive their faults: the isolation labels of runs that are over; and
finished runs that are still in the operator's watch.

NetworkIsolation's rollback deletes the policy (the fault ends at once, whatever the
number of targets); the `shakeout.dev/isolated` labels then select nothing and are
removed by the run's daemon right after the run ends. This sweeper removes any that an
operator restart left behind: at start and every few minutes, the labelled pods whose run
is over or gone are unlabelled.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import kopf

from shakeout.engine.runs import is_terminal
from shakeout.handlers.attacks import ISOLATED, ClusterAgent
from shakeout.handlers.k8s import api
from shakeout.handlers.periodic import every
from shakeout.handlers.runs import retire_run
from shakeout.handlers.settings import FINISHED_LABEL

SWEEP_EVERY = 300.0


async def sweep() -> int:
    """Unlabel the marks of runs that are not live; returns how many runs were swept."""
    listing = await api().request("GET", "/api/v1/pods", query={"labelSelector": ISOLATED})
    marks: dict[tuple[str, str], int] = defaultdict(int)
    for pod in (listing or {}).get("items", []):
        meta = pod["metadata"]
        marks[(meta["namespace"], (meta.get("labels") or {}).get(ISOLATED, ""))] += 1
    if not marks:
        return 0
    live = {
        run["metadata"]["uid"]
        for run in await api().list_runs()
        if not is_terminal((run.get("status") or {}).get("phase"))
    }
    stale = [(ns, uid) for ns, uid in marks if uid not in live]
    for namespace, uid in stale:
        await ClusterAgent(namespace, run_uid=uid).unmark()
    return len(stale)


async def retire_finished() -> int:
    """Finished runs still in the operator's watch (they ended before runs were retired,
    or the operator stopped between a run's end and its retirement) are retired now."""
    runs = await api().list_runs(selector=f"!{FINISHED_LABEL}")
    finished = [r for r in runs if is_terminal((r.get("status") or {}).get("phase"))]
    for run in finished:
        await retire_run(run["metadata"]["namespace"], run["metadata"]["name"])
    return len(finished)


async def sweep_and_report(logger: Any) -> None:
    if swept := await sweep():
        logger.info(f"removed the isolation marks of {swept} ended run(s)")
    if retired := await retire_finished():
        logger.info(f"took {retired} finished run(s) out of the operator's watch")


@kopf.on.startup()
async def start_sweeper(logger: kopf.Logger, **_: Any) -> None:
    every(SWEEP_EVERY, lambda: sweep_and_report(logger), logger, "sweeping marks and runs")
