"""The run lock: a compare-and-swap on the ChaosSwitch's status.activeRuns (engine/
concurrency.py decides who may execute beside whom; status.activeRun names the first)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from shakeout.engine.concurrency import (
    Conflict,
    Holder,
    conflict,
    contenders,
    lock_status,
    released,
    taken,
)
from shakeout.gather.switch import held_runs, is_alive, is_enabled, switch_spec
from shakeout.kube.client import Obj, api
from shakeout.kube.errors import Conflict as WriteConflict

# Each lost compare-and-swap means another run's write went through: in Namespace mode as
# many runs as namespaces may race for the list at once, each losing at most once per
# winner.
ATTEMPTS = 64


@dataclass(frozen=True)
class LockResult:
    acquired: bool
    holder: str = ""
    disabled: bool = False
    # Why the turn was refused (a holder conflicts); None when acquired or disabled.
    conflict: Conflict | None = None


async def acquire(
    namespace: str,
    name: str,
    uid: str,
    prefetched: Obj | None = None,
    nodes: Sequence[str] = (),
) -> LockResult:
    """Take this run's turn, holding `nodes`. Two runs racing both read the same
    resourceVersion; the API server accepts only the first write carrying it, and the
    second gets a Conflict and reads again, finding the first among the holders. A holder
    that is gone or finished is taken over (left out of what is written)."""
    me = Holder(namespace, name, uid, tuple(sorted(set(nodes))))
    alive: set[str] = set()
    dead: set[str] = set()
    for attempt in range(ATTEMPTS):
        # The first read may come from the caller, who fetched it alongside other reads.
        switch = prefetched if attempt == 0 and prefetched else await api().get_switch()
        spec = switch_spec(switch)
        if switch is None or spec is None or not is_enabled(switch):
            return LockResult(False, disabled=True)
        every = held_runs(switch)
        held = [h for h in every if h.uid != uid]
        # Only the holders it would conflict with are asked whether they are alive (one
        # read each, remembered across attempts): in Namespace mode, usually none. A dead
        # one is taken over; the others' entries are their own to give back.
        rivals = [h for h in contenders(spec.concurrency, me, held) if h.uid not in alive]
        for holder, ok in zip(rivals, await asyncio.gather(*map(is_alive, rivals)), strict=True):
            (alive if ok else dead).add(holder.uid)
        live = [h for h in held if h.uid not in dead]
        if (found := conflict(spec.concurrency, me, live)) is not None:
            return LockResult(False, holder=found.holder.ref, conflict=found)
        already = [h for h in every if h.uid == uid]
        if already and already[0].nodes == me.nodes and len(live) == len(held):
            return LockResult(True)  # held already, as it is (nothing to take over)
        try:
            await api().patch_switch_status(
                {
                    "metadata": {"resourceVersion": switch["metadata"]["resourceVersion"]},
                    "status": lock_status(taken(live, me)),
                }
            )
        except WriteConflict:
            continue
        return LockResult(True)
    return LockResult(False, holder="(the lock is contended; try again)")


async def release(uid: str) -> None:
    """Give this run's turn back if it holds one (CAS, so no other holder is lost)."""
    for _ in range(ATTEMPTS):
        switch = await api().get_switch()
        if switch is None:
            return
        left = released(held_runs(switch), uid)
        if left is None:
            return
        try:
            await api().patch_switch_status(
                {
                    "metadata": {"resourceVersion": switch["metadata"]["resourceVersion"]},
                    "status": lock_status(left),
                }
            )
        except WriteConflict:
            continue
        return
