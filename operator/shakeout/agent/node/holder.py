"""The fault holder: the keeper's state, every fault of the node with its journal.

It applies a fault only after journaling it (with a record that undoes whatever a
half-done apply left), rolls each back at its notAfter, rolls everything back on a
deadline or a stop, retries what could not be rolled back, and caps the stress a node
carries. The keeper process (keeper.py) drives it from the agent's commands and its
timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from shakeout.agent.node import faults
from shakeout.agent.node.journal import Entries, Journal
from shakeout.agent.node.keeper_protocol import Op, reply_to
from shakeout.agent.node.locate import LocateError, Locator, PodRef, kept_annotations
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import REVERSIBLE, AttackType

log = logging.getLogger("shakeout.keeper")

# Per-node stress caps, unless the agent says otherwise.
DEFAULT_MAX_STRESS_WORKERS = 16
DEFAULT_MAX_STRESS_MIB = 4096
DEFAULT_RETRY_SECONDS = 10.0
_STRESS = frozenset({AttackType.CPU_STRESS, AttackType.MEMORY_STRESS})


def stress_load(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(processes, MiB) of stress a journal entry holds."""
    parameters = entry.get("parameters") or {}
    if entry.get("type") == AttackType.CPU_STRESS:
        return int(parameters.get("workers") or 1), 0
    if entry.get("type") == AttackType.MEMORY_STRESS:
        return 1, int(parameters.get("megabytes") or 0)
    return 0, 0


def checked_not_after(value: object) -> float | None:
    """A fault's notAfter: seconds since the epoch, or None; FaultError if malformed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise FaultError(f"notAfter must be seconds since the epoch, not {value!r}")
    return float(value)


class FaultHolder:
    """The faults the keeper holds, mirrored in the journal, and the commands on them."""

    def __init__(
        self,
        journal: Journal,
        deadline: float,
        locator: Locator,
        host: HostPaths,
        *,
        max_stress_workers: int = DEFAULT_MAX_STRESS_WORKERS,
        max_stress_mib: int = DEFAULT_MAX_STRESS_MIB,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ):
        self.journal = journal
        self.deadline = deadline
        self.locator = locator
        self.host = host
        self.max_stress_workers = max_stress_workers
        self.max_stress_mib = max_stress_mib
        self.retry_seconds = retry_seconds
        self.entries: Entries = {}
        # Faults whose rollback failed (at recovery, at notAfter, ...): retried every
        # retry_seconds whatever the agent does, and reported in every heartbeat.
        self.unrecovered: dict[str, str] = {}
        # One fault operation at a time: apply, rollback and the deadline never interleave.
        self.lock = asyncio.Lock()
        self.last_command = time.monotonic()

    def _save(self) -> None:
        self.journal.save(self.entries)

    async def recover(self) -> tuple[list[str], list[str]]:
        """Roll back what an earlier keeper left: its agent lost the faults' owner."""
        self.entries = self.journal.load()
        found = sorted(self.entries)
        errors = await self.rollback_all("left in the journal by an earlier keeper")
        self._save()
        return [fault_id for fault_id in found if fault_id not in errors], sorted(errors)

    async def rollback_one(self, fault_id: str) -> bool:
        """Undo the fault and forget it; whether it was held. Caller holds the lock."""
        entry = self.entries.get(fault_id)
        if entry is None:
            return False
        kind = faults.node_attack(entry.get("type"))
        await faults.rollback(kind, entry.get("record") or {}, host=self.host)
        del self.entries[fault_id]
        self.unrecovered.pop(fault_id, None)
        self._save()
        return True

    async def rollback_all(self, why: str) -> dict[str, str]:
        """Undo every fault held; the errors by fault id (those stay held). Lock held."""
        errors = {}
        for fault_id in list(self.entries):
            try:
                await self.rollback_one(fault_id)
                log.warning("rolled back %s: %s", fault_id, why)
            except Exception as error:
                log.error("cannot roll back %s (%s): %s", fault_id, why, error, exc_info=True)
                errors[fault_id] = str(error)
        self.unrecovered.update(errors)
        return errors

    async def rollback_due(self, now: float) -> None:
        """Roll back each fault whose notAfter has come (lock held); a failure joins the
        unrecovered ones, retried on their timer."""
        for fault_id, entry in list(self.entries.items()):
            not_after = entry.get("not_after")
            if fault_id in self.unrecovered or not isinstance(not_after, int | float):
                continue
            if now >= not_after:
                try:
                    await self.rollback_one(fault_id)
                    late = now - not_after
                    log.warning("rolled back %s: its notAfter came (%.2f s ago)", fault_id, late)
                except Exception as error:  # noqa: BLE001  (retried with the unrecovered)
                    log.error("cannot roll back %s at its notAfter: %s", fault_id, error)
                    self.unrecovered[fault_id] = str(error)

    def due(self, now: float) -> bool:
        """Whether a fault's notAfter has come (not counting the unrecovered ones)."""
        return any(
            isinstance(entry.get("not_after"), int | float)
            and now >= entry["not_after"]
            and fault_id not in self.unrecovered
            for fault_id, entry in self.entries.items()
        )

    async def retry_unrecovered(self) -> None:
        """Try again each fault whose rollback failed before (lock held)."""
        for fault_id in sorted(self.unrecovered):
            if fault_id not in self.entries:
                self.unrecovered.pop(fault_id, None)
                continue
            try:
                await self.rollback_one(fault_id)
                log.warning("rolled back %s at last (it was unrecovered)", fault_id)
            except Exception as error:  # noqa: BLE001  (retried on the next round)
                log.error("still cannot roll back %s: %s", fault_id, error)
                self.unrecovered[fault_id] = str(error)

    def check_caps(self, kind: AttackType, parameters: Mapping[str, Any]) -> None:
        """FaultError when this stress would take the node past its caps."""
        if kind not in _STRESS:
            return
        workers, mib = stress_load({"type": kind, "parameters": parameters})
        held = [stress_load(entry) for entry in self.entries.values()]
        held_workers = sum(w for w, _ in held)
        held_mib = sum(m for _, m in held)
        if held_workers + workers > self.max_stress_workers:
            raise FaultError(
                f"refused: {workers} more stress process(es) would make "
                f"{held_workers + workers} on this node, over its cap of "
                f"{self.max_stress_workers} (agent --max-stress-workers)"
            )
        if held_mib + mib > self.max_stress_mib:
            raise FaultError(
                f"refused: {mib} MiB more MemoryStress would make {held_mib + mib} MiB on "
                f"this node, over its cap of {self.max_stress_mib} MiB (agent --max-stress-mib)"
            )

    async def apply(self, command: Mapping[str, Any]) -> dict[str, Any]:
        fault_id = faults.checked_fault_id(command.get("id"))
        kind = faults.node_attack(command.get("type"))
        parameters = command.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise FaultError("parameters must be an object")
        faults.parameters_of(kind, parameters)  # refused before anything is journaled
        pod = PodRef.from_json(command.get("pod"))
        not_after = checked_not_after(command.get("notAfter"))
        held = self.entries.get(fault_id)
        if held is not None:
            if held.get("type") == kind and held.get("state") == "applied":
                return dict(held["record"])  # a repeated apply: the fault is in place
            raise FaultError(f"fault {fault_id} is held already ({held.get('type')})")
        if not_after is not None and time.time() >= not_after:
            raise FaultError("refused: its notAfter has passed")
        self.check_caps(kind, parameters)
        located = await asyncio.to_thread(self.locator.locate, pod)
        self.entries[fault_id] = {
            "type": str(kind),
            "parameters": parameters,
            # Only the annotation a locator reads, bounded: never the team's others (SEC-16).
            "pod": {**pod.to_json(), "annotations": kept_annotations(pod.annotations)},
            "target": located.to_json(),
            "state": "applying",
            "record": faults.provisional_record(fault_id, kind, located, host=self.host),
            "since": time.time(),
            "not_after": not_after,
        }
        try:
            self._save()
        except OSError as error:
            del self.entries[fault_id]
            raise FaultError(f"cannot write the journal {self.journal.path}: {error}") from error
        try:
            record = await faults.apply(fault_id, kind, parameters, located, host=self.host)
        except Exception as error:
            if not isinstance(error, FaultError):
                log.error("applying %s failed", fault_id, exc_info=True)
            undo_error = await self._undo_failed_apply(fault_id)
            if undo_error is not None:
                raise FaultError(
                    f"{error}; the fault stays held, its rollback failed: {undo_error}"
                ) from error
            if isinstance(error, FaultError):
                raise
            raise FaultError(f"internal error: {error!r}") from error
        log.info("applied %s (%s) to %s", fault_id, kind, pod)
        if REVERSIBLE[kind]:
            self.entries[fault_id].update(state="applied", record=record)
        else:
            del self.entries[fault_id]  # nothing to undo, so nothing to hold
        self._save()
        return record

    async def _undo_failed_apply(self, fault_id: str) -> str | None:
        """Undo from the provisional record: covers an apply that failed while it undid.

        None when the fault is gone, else why it stays held (and is retried later).
        """
        try:
            await self.rollback_one(fault_id)
        except Exception as undo_error:
            log.error("undoing the failed apply of %s failed", fault_id, exc_info=True)
            self.entries[fault_id]["error"] = str(undo_error)
            with contextlib.suppress(OSError):
                self._save()
            return str(undo_error)
        return None

    async def handle(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The reply to one command (heartbeats excepted). Caller holds the lock."""
        reply = reply_to(command)
        op = command.get("op")
        try:
            if op == Op.APPLY:
                reply.update(ok=True, record=await self.apply(command))
            elif op == Op.ROLLBACK:
                held = await self.rollback_one(faults.checked_fault_id(command.get("id")))
                if held:
                    log.info("rolled back %s", command.get("id"))
                reply.update(ok=True, held=held)
            elif op == Op.ROLLBACK_ALL:
                errors = await self.rollback_all("the agent asked")
                reply.update(ok=not errors, errors=errors)
                if errors:
                    reply["error"] = "; ".join(f"{key}: {text}" for key, text in errors.items())
            elif op == Op.LIST:
                reply.update(ok=True, ids=sorted(self.entries))
            else:
                reply.update(ok=False, error=f"unknown op {op!r}")
        except (FaultError, LocateError) as error:
            reply.update(ok=False, error=str(error))
        except Exception as error:
            log.error("%s failed", op, exc_info=True)
            reply.update(ok=False, error=f"internal error: {error!r}")
        return reply
