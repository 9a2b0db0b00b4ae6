"""The ChaosSwitch as the operator sees it: an in-memory view kept by the watch, the lock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from shakeout.api.common import GROUP, VERSION
from shakeout.api.switch import SWITCH_NAME
from shakeout.engine.runs import is_terminal
from shakeout.handlers import metrics
from shakeout.handlers.k8s import Conflict, api, timestamp

# Set by the mutating webhook when spec.enabled changes; copied into status.lastChange.
CHANGED_BY = "shakeout.dev/changed-by"
CHANGED_AT = "shakeout.dev/changed-at"


@dataclass
class SwitchView:
    """The last state of the switch the watch delivered, and the live runs' daemons."""

    known: bool = False
    enabled: bool = False
    # Run UID -> the event that wakes its daemon: all of them on Stop All, one on a cancel
    # or a deletion of that run (handlers.runs.run_event).
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    # Run UID -> the event that halts an attack being applied (ClusterAgent.halt).
    halts: dict[str, asyncio.Event] = field(default_factory=dict)

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()

    def request_stop(self, uid: str) -> None:
        """A cancel, Stop All or deletion of this run: halt what it is applying and wake
        its daemon to roll back."""
        metrics.stop_requested(uid)
        for events in (self.halts, self.wakeups):
            if (event := events.get(uid)) is not None:
                event.set()


SWITCH = SwitchView()


@kopf.on.event(GROUP, VERSION, "chaosswitches")
async def switch_event(
    type: str,  # noqa: A002  (kopf's keyword)
    body: kopf.Body,
    **_: Any,
) -> None:
    if body.get("metadata", {}).get("name") != SWITCH_NAME:
        return
    enabled = type != "DELETED" and bool(body.get("spec", {}).get("enabled"))
    changed = SWITCH.known and enabled != SWITCH.enabled
    SWITCH.known, SWITCH.enabled = True, enabled
    if changed or not enabled:
        if not enabled:
            for uid in list(SWITCH.wakeups):
                SWITCH.request_stop(uid)
        SWITCH.wake_all()
    if type != "DELETED":
        await _record_change(body)


async def _record_change(body: kopf.Body) -> None:
    """Copy who flipped the switch (from the webhook's annotations) into status."""
    annotations = body.get("metadata", {}).get("annotations", {})
    by = annotations.get(CHANGED_BY)
    at = annotations.get(CHANGED_AT)
    if not by or not at:
        return
    last = body.get("status", {}).get("lastChange") or {}
    enabled = bool(body.get("spec", {}).get("enabled"))
    if last.get("by") == by and last.get("time") == at and last.get("enabled") == enabled:
        return
    try:
        await api().patch_switch_status(
            {"status": {"lastChange": {"enabled": enabled, "by": by, "time": at}}}
        )
    except ApiException as err:
        if err.status != 404:  # deleted since this event: nothing to record it on
            raise


async def switch_enabled() -> bool:
    """Whether experimenting is enabled: the watch's view, or a read before it arrived."""
    if SWITCH.known:
        return SWITCH.enabled
    switch = await api().get_switch()
    return bool(switch and switch.get("spec", {}).get("enabled"))


@dataclass(frozen=True)
class LockResult:
    acquired: bool
    holder: str = ""
    disabled: bool = False


async def active_run(switch: dict[str, Any] | None, besides: str | None = None) -> str | None:
    """NAMESPACE/NAME of the run that holds the lock and is still live (other than the run
    `besides`), or None: what the Run button refuses on, read in O(1) from the switch."""
    holder = ((switch or {}).get("status") or {}).get("activeRun")
    if not holder or (besides and holder.get("uid") == besides):
        return None
    return f"{holder['namespace']}/{holder['name']}" if await _holder_alive(holder) else None


async def _holder_alive(ref: dict[str, Any]) -> bool:
    run = await api().get_run(ref["namespace"], ref["name"])
    if run is None or (ref.get("uid") and run["metadata"]["uid"] != ref["uid"]):
        return False
    return not is_terminal(run.get("status", {}).get("phase"))


async def acquire(
    namespace: str, name: str, uid: str, prefetched: dict[str, Any] | None = None
) -> LockResult:
    """Take the cluster-wide run lock: a compare-and-swap on the switch's status.

    Two runs racing both read the same resourceVersion; the API server accepts only the
    first write carrying it, and the second gets 409 and reads again, finding the lock
    held. A holder that is gone or finished is taken over.
    """
    for attempt in range(20):
        # The first read may come from the caller, who fetched it alongside other reads.
        switch = prefetched if attempt == 0 and prefetched else await api().get_switch()
        if switch is None or not switch.get("spec", {}).get("enabled"):
            return LockResult(False, disabled=True)
        holder = switch.get("status", {}).get("activeRun")
        if holder and holder.get("uid") == uid:
            return LockResult(True)
        if holder and await _holder_alive(holder):
            return LockResult(False, holder=f"{holder['namespace']}/{holder['name']}")
        try:
            await api().patch_switch_status(
                {
                    "metadata": {"resourceVersion": switch["metadata"]["resourceVersion"]},
                    "status": {"activeRun": {"namespace": namespace, "name": name, "uid": uid}},
                }
            )
        except Conflict:
            continue
        return LockResult(True)
    return LockResult(False, holder="(the lock is contended; try again)")


async def release(uid: str) -> None:
    """Give the lock back if this run holds it (CAS, so a newer holder is never cleared)."""
    for _ in range(20):
        switch = await api().get_switch()
        if switch is None:
            return
        holder = switch.get("status", {}).get("activeRun")
        if not holder or holder.get("uid") != uid:
            return
        try:
            await api().patch_switch_status(
                {
                    "metadata": {"resourceVersion": switch["metadata"]["resourceVersion"]},
                    "status": {"activeRun": None},
                }
            )
        except Conflict:
            continue
        return


def now_iso() -> str:
    return timestamp(datetime.now(UTC))
