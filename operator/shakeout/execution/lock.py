"""The cluster-wide run lock: a compare-and-swap on the ChaosSwitch's status.activeRun."""

from __future__ import annotations

from dataclasses import dataclass

from shakeout.gather.switch import holder_alive, is_enabled, lock_ref
from shakeout.kube.client import Obj, api
from shakeout.kube.errors import Conflict

ATTEMPTS = 20


@dataclass(frozen=True)
class LockResult:
    acquired: bool
    holder: str = ""
    disabled: bool = False


async def acquire(namespace: str, name: str, uid: str, prefetched: Obj | None = None) -> LockResult:
    """Take the lock. Two runs racing both read the same resourceVersion; the API server
    accepts only the first write carrying it, and the second gets a Conflict and reads
    again, finding the lock held. A holder that is gone or finished is taken over."""
    for attempt in range(ATTEMPTS):
        # The first read may come from the caller, who fetched it alongside other reads.
        switch = prefetched if attempt == 0 and prefetched else await api().get_switch()
        if switch is None or not is_enabled(switch):
            return LockResult(False, disabled=True)
        holder = lock_ref(switch)
        if holder and holder.get("uid") == uid:
            return LockResult(True)
        if holder and await holder_alive(holder):
            return LockResult(False, holder=f"{holder.get('namespace')}/{holder['name']}")
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
    for _ in range(ATTEMPTS):
        switch = await api().get_switch()
        holder = lock_ref(switch)
        if switch is None or not holder or holder.get("uid") != uid:
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
