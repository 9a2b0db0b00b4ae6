"""ExperimentRun wiring: one kopf daemon per live run hands it to the executor, and a cancel
or a deletion reaches the run's executor at once."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from shakeout import metrics
from shakeout.api.common import GROUP, VERSION
from shakeout.engine.runs import is_terminal
from shakeout.execution import lock
from shakeout.execution.executor import RunExecutor
from shakeout.execution.journal import RunGone
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.execution.retire import retire_run
from shakeout.options import OPTIONS


@kopf.on.event(GROUP, VERSION, "experimentruns")
async def run_event(body: kopf.Body, **_: Any) -> None:
    """Stop a run's executor at once when it is canceled or deleted (no polling delay)."""
    wanted = body.get("spec", {}).get("cancel") or body.get("metadata", {}).get("deletionTimestamp")
    if wanted:
        LIVE_RUNS.request_stop(body.get("metadata", {}).get("uid", ""))


class DaemonHost:
    """The executor's view of its kopf daemon: the live body, the stop reason, Events."""

    def __init__(self, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
        self._body = body  # a live view: kopf updates it as watch events arrive
        self.stopped = stopped
        self.done = asyncio.Event()

    def rebind(self, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
        """kopf forgot the run while its daemon ran (it left the watch: labelled finished
        by someone else) and has since seen it again with a new daemon: this executor goes
        on with the new daemon's live body and stop signal, so that a cancel, a deletion
        or the operator's exit reaches it again."""
        self._body, self.stopped = body, stopped

    @property
    def body(self) -> kopf.Body:
        return self._body

    def _stopping(self, reason: kopf.DaemonStoppingReason) -> bool:
        return bool(self.stopped.reason and self.stopped.reason & reason)

    def deleting(self) -> bool:
        deleted = self._stopping(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        return bool(self._body["metadata"].get("deletionTimestamp")) or deleted

    def shutting_down(self) -> bool:
        return self._stopping(kopf.DaemonStoppingReason.OPERATOR_EXITING)

    def post_event(self, type: str, reason: str, message: str) -> None:  # noqa: A002
        kopf.event(self._body, type=type, reason=reason, message=message)


# The hosts of the executors running in this process, by run UID.
HOSTS: dict[str, DaemonHost] = {}


def _live(status: Any, **_: Any) -> bool:
    return not is_terminal((status or {}).get("phase"))


# When kopf stops the daemon (the run went terminal, was deleted, the operator exits) it
# first only signals `stopped` and waits cancellation_backoff seconds, so that the daemon
# finishes its rollback and bookkeeping; only then does it cancel the task.
@kopf.daemon(
    GROUP,
    VERSION,
    "experimentruns",
    id="lifecycle",
    when=_live,
    # An error (say, the API server away) restarts the daemon soon; it resumes from status.
    backoff=2,
    cancellation_backoff=55,
    cancellation_timeout=5,
)
async def lifecycle(
    body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any
) -> None:
    uid = body["metadata"]["uid"]
    if (running := HOSTS.get(uid)) is not None:
        logger.warning("the run left the operator's watch while it ran; its executor goes on")
        running.rebind(body, stopped)
        await running.done.wait()
        return
    signal = LIVE_RUNS.add(uid)
    host = HOSTS[uid] = DaemonHost(body, stopped)
    executor = RunExecutor(host, signal, OPTIONS.protected_namespaces)
    metrics.ACTIVE_RUNS.inc()
    try:
        if executor.status.phase is not None and executor.status.experiment is not None:
            logger.info(f"resuming run in phase {executor.status.phase}")
        await executor.execute()
        if is_terminal(executor.status.phase):
            await retire_run(executor.namespace, executor.name)
    except RunGone:
        if executor.journal.recorded:
            # Deleted without the operator's finalizer, with attacks journaled: the
            # rollback record holds them.
            logger.warning("the run vanished mid-run; rolling back its attacks from its record")
            await executor.finish_vanished(resumed=False)
        else:
            # Deleted before kopf's finalizer was on it: nothing left to drive (and
            # nothing attacked: a run is attacked only after its journal is written).
            logger.info("the run is gone; its daemon ends")
            if executor.status.phase is not None:
                await lock.release(uid)
    finally:
        host.done.set()
        HOSTS.pop(uid, None)
        metrics.ACTIVE_RUNS.dec()
        metrics.STOP_REQUESTED.pop(uid, None)
        LIVE_RUNS.remove(uid)
