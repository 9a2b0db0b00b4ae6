"""The fault holder: the keeper's state, every fault of the node with its journal.

It applies a fault only after journaling it (with a record that undoes whatever a
half-done apply left), rolls each back at its notAfter, rolls everything back on a
deadline or a stop, retries what could not be rolled back, and caps the stress a node
carries. The keeper process (keeper.py) drives it from the agent's commands and its
timers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shakeout.agent.node import faults
from shakeout.agent.node.journal import Entries, Journal
from shakeout.agent.node.keeper_protocol import Op, reply_to
from shakeout.agent.node.locate import (
    Located,
    LocateError,
    Locator,
    PodRef,
    kept_annotations,
    locate_many,
)
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import REVERSIBLE, AttackType

log = logging.getLogger("shakeout.keeper")

# Faults applied or rolled back at once (each forks nsenter and a tool, ~30 ms).
CONCURRENCY = 8
# Faults in one apply_batch: a NodeAttack's targets at most (api/nodeattack.py).
MAX_BATCH = 256
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


@dataclass
class _Pending:
    """One fault of a batch, checked, on its way to the journal and the node."""

    index: int  # its place in the batch
    fault_id: str
    kind: AttackType
    parameters: dict[str, Any]
    pod: PodRef
    not_after: float | None
    located: Located | None = None

    @classmethod
    def checked(cls, index: int, command: Mapping[str, Any]) -> _Pending:
        """An apply command's fields, checked before anything is journaled."""
        fault_id = faults.checked_fault_id(command.get("id"))
        kind = faults.node_attack(command.get("type"))
        parameters = command.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise FaultError("parameters must be an object")
        faults.parameters_of(kind, parameters)  # refused before anything is journaled
        pod = PodRef.from_json(command.get("pod"))
        not_after = checked_not_after(command.get("notAfter"))
        if not_after is not None and time.time() >= not_after:
            raise FaultError("refused: its notAfter has passed")
        return cls(index, fault_id, kind, parameters, pod, not_after)


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
        # One command at a time: a batch, a rollback and the deadline never interleave
        # (a batch's faults run side by side inside it).
        self.lock = asyncio.Lock()
        # Counts the rollbacks of everything asked for (bumped as the command arrives,
        # before it waits for the lock): a batch in progress starts no further fault.
        self.halts = 0
        self.last_command = time.monotonic()

    def _save(self) -> None:
        self.journal.save(self.entries)

    def _save_logged(self) -> None:
        """A save after faults went away or were applied: the entries on disk still undo
        everything held (a provisional record undoes its fault), so a failure is logged,
        and the next save writes it all."""
        try:
            self._save()
        except OSError as error:
            log.error("cannot write the journal %s: %s", self.journal.path, error)

    async def recover(self) -> tuple[list[str], list[str]]:
        """Roll back what an earlier keeper left: its agent lost the faults' owner."""
        self.entries = self.journal.load()
        found = sorted(self.entries)
        errors = await self.rollback_all("left in the journal by an earlier keeper")
        self._save()
        return [fault_id for fault_id in found if fault_id not in errors], sorted(errors)

    async def _undo(self, fault_id: str) -> bool:
        """Undo the fault, still holding it (the caller forgets it); whether it was held."""
        entry = self.entries.get(fault_id)
        if entry is None:
            return False
        kind = faults.node_attack(entry.get("type"))
        await faults.rollback(kind, entry.get("record") or {}, host=self.host)
        return True

    def _forget(self, fault_ids: list[str]) -> None:
        """Drop undone faults. Callers save right after, with no await between: heartbeats
        do not take the lock, and one must never report a fault gone (neither held nor
        unrecovered) while the journal on disk still holds it."""
        for fault_id in fault_ids:
            self.entries.pop(fault_id, None)
            self.unrecovered.pop(fault_id, None)

    async def rollback_one(self, fault_id: str) -> bool:
        """Undo the fault and forget it; whether it was held. Caller holds the lock."""
        held = await self._undo(fault_id)
        if held:
            self._forget([fault_id])
            self._save()
        return held

    def _pod_of(self, fault_id: str) -> str:
        """What faults on one pod share (its UID): they are applied and undone in turn,
        since two of them may touch the same thing (a pod's root qdisc)."""
        pod = self.entries.get(fault_id, {}).get("pod") or {}
        return str(pod.get("uid") or fault_id)

    async def rollback_many(
        self, fault_ids: list[str], why: str
    ) -> tuple[list[str], dict[str, str]]:
        """Undo these faults, pods side by side (at most CONCURRENCY at once), with one
        journal save at the end; (the ids that were held, the errors by id). Lock held.

        Every fault is tried, whatever others do; those that fail stay held (and
        journaled). A crash before the save leaves undone faults in the journal: the
        next keeper undoes them again, a no-op (rollbacks are idempotent)."""
        held: list[str] = []
        errors: dict[str, str] = {}

        async def undo(fault_id: str) -> None:
            try:
                if await self._undo(fault_id):
                    held.append(fault_id)
                    log.warning("rolled back %s: %s", fault_id, why)
            except Exception as error:
                log.error("cannot roll back %s (%s): %s", fault_id, why, error, exc_info=True)
                errors[fault_id] = str(error)

        await self._per_pod(list(dict.fromkeys(fault_ids)), undo)
        if held:
            self._forget(held)
            self._save_logged()
        return sorted(held), errors

    async def _per_pod(self, fault_ids: list[str], act: Callable[[str], Awaitable[None]]) -> None:
        """act(id) on each fault: those of one pod in turn, pods side by side, at most
        CONCURRENCY acts at once. act must not raise."""
        by_pod: dict[str, list[str]] = {}
        for fault_id in fault_ids:
            by_pod.setdefault(self._pod_of(fault_id), []).append(fault_id)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def in_turn(ids: list[str]) -> None:
            for fault_id in ids:
                async with slots:
                    await act(fault_id)

        await asyncio.gather(*(in_turn(ids) for ids in by_pod.values()))

    async def rollback_all(self, why: str) -> dict[str, str]:
        """Undo every fault held; the errors by fault id (those stay held). Lock held."""
        _, errors = await self.rollback_many(list(self.entries), why)
        self.unrecovered.update(errors)
        return errors

    async def rollback_due(self, now: float) -> None:
        """Roll back each fault whose notAfter has come (lock held); a failure joins the
        unrecovered ones, retried on their timer."""
        due = [
            fault_id
            for fault_id, entry in self.entries.items()
            if fault_id not in self.unrecovered
            and isinstance(entry.get("not_after"), int | float)
            and now >= entry["not_after"]
        ]
        late = max((now - self.entries[fault_id]["not_after"] for fault_id in due), default=0.0)
        _, errors = await self.rollback_many(due, f"its notAfter came (up to {late:.2f} s ago)")
        self.unrecovered.update(errors)

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
        for fault_id in [f for f in self.unrecovered if f not in self.entries]:
            self.unrecovered.pop(fault_id, None)
        ids = sorted(self.unrecovered)
        _, errors = await self.rollback_many(ids, "at last (it was unrecovered)")
        self.unrecovered.update(errors)

    def check_caps(self, kind: AttackType, parameters: Mapping[str, Any]) -> None:
        """FaultError when this stress would take the node past its caps (what is held,
        journaled or being applied counts)."""
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
        """Apply one fault (a batch of one); its record, or FaultError. Lock held."""
        (result,) = await self.apply_batch([command])
        if not result["ok"]:
            raise FaultError(result["error"])
        return dict(result["record"])

    def _accepted(
        self, commands: Sequence[Mapping[str, Any]], results: list[dict[str, Any]]
    ) -> list[_Pending]:
        """The batch's commands that may be applied; the others' results filled in (an
        error, or the record of a fault already in place: a repeated apply)."""
        accepted: list[_Pending] = []
        ids: set[str] = set()
        for index, command in enumerate(commands):
            results[index]["id"] = command.get("id")
            try:
                pending = _Pending.checked(index, command)
                if pending.fault_id in ids:
                    raise FaultError(f"fault {pending.fault_id} is twice in the batch")
                ids.add(pending.fault_id)
                held = self.entries.get(pending.fault_id)
                if held is not None:
                    if held.get("type") == pending.kind and held.get("state") == "applied":
                        results[index] = {
                            "id": pending.fault_id,
                            "ok": True,
                            "record": dict(held["record"]),
                        }
                        continue
                    raise FaultError(
                        f"fault {pending.fault_id} is held already ({held.get('type')})"
                    )
            except (FaultError, LocateError) as error:
                results[index]["error"] = str(error)
                continue
            accepted.append(pending)
        return accepted

    async def _journaled(
        self, accepted: list[_Pending], results: list[dict[str, Any]]
    ) -> list[_Pending]:
        """Locate the pods (in one pass), journal what can be applied (in one save);
        those journaled. The others' results say why not."""
        located = await self._locate(accepted)
        journaled: list[_Pending] = []
        for pending in accepted:
            where = located.get(pending.pod.uid)
            try:
                if not isinstance(where, Located):
                    raise where or LocateError(f"{pending.pod} was not located")
                # Caps count what is journaled so far, this batch's earlier faults too.
                self.check_caps(pending.kind, pending.parameters)
            except (FaultError, LocateError) as error:
                results[pending.index]["error"] = str(error)
                continue
            pending.located = where
            self.entries[pending.fault_id] = {
                "type": str(pending.kind),
                "parameters": pending.parameters,
                # Only the annotation a locator reads, bounded: never the team's others (SEC-16).
                "pod": {
                    **pending.pod.to_json(),
                    "annotations": kept_annotations(pending.pod.annotations),
                },
                "target": where.to_json(),
                "state": "applying",
                "record": faults.provisional_record(
                    pending.fault_id, pending.kind, where, host=self.host
                ),
                "since": time.time(),
                "not_after": pending.not_after,
            }
            journaled.append(pending)
        if not journaled:
            return []
        try:
            self._save()  # every fault on disk before the first is touched
        except OSError as error:
            for pending in journaled:
                del self.entries[pending.fault_id]
                results[pending.index]["error"] = (
                    f"cannot write the journal {self.journal.path}: {error}"
                )
            return []
        return journaled

    async def _locate(self, accepted: list[_Pending]) -> dict[str, Located | LocateError]:
        """Where each pod of the batch lives, by UID, found in one pass over /proc.

        Never reused by a later batch: what a fault journals (the pod's processes, whose
        namespaces find a network fault again once the pod's netns name is gone) must be
        what the node holds when it is applied."""
        pods = list({p.pod.uid: p.pod for p in accepted}.values())
        return await asyncio.to_thread(locate_many, self.locator, pods)

    async def apply_batch(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Apply these faults; one result per command, in order: {"id", "ok", "record"}
        or {"id", "ok": false, "error"} (and "halted": true for one never started because
        a rollback of everything was asked for meanwhile). Lock held.

        Every target is located in one pass (one /proc scan), every fault is journaled
        with its provisional record in one save before the first is applied, then they
        are applied pods side by side (at most CONCURRENCY at once; one pod's in turn),
        and journaled again, with their real records, in one save at the end."""
        if len(commands) > MAX_BATCH:
            raise FaultError(f"at most {MAX_BATCH} faults in one batch, not {len(commands)}")
        results: list[dict[str, Any]] = [{"ok": False, "error": "not applied"} for _ in commands]
        began = time.monotonic()
        accepted = self._accepted(commands, results)
        journaled = await self._journaled(accepted, results) if accepted else []
        if not journaled:
            return results
        ready = time.monotonic()
        halts = self.halts
        by_id = {pending.fault_id: pending for pending in journaled}

        async def apply_one(fault_id: str) -> None:
            pending = by_id[fault_id]
            result = results[pending.index]
            if self.halts != halts:
                # A rollback of everything was asked for: nothing more is started.
                del self.entries[fault_id]  # journaled, never touched
                result.update(error="halted: a rollback of every fault was asked for", halted=True)
                return
            assert pending.located is not None
            try:
                record = await self._apply_journaled(
                    fault_id, pending.kind, pending.parameters, pending.located
                )
            except Exception as error:  # noqa: BLE001  (reported per fault)
                result["error"] = str(error)
                return
            result.update(ok=True, record=record)
            result.pop("error", None)

        await self._per_pod(list(by_id), apply_one)
        applied = time.monotonic()
        self._save_logged()
        log.info(
            "batch of %d: located and journaled in %.0f ms, applied in %.0f ms, saved in %.0f ms",
            len(commands),
            (ready - began) * 1000,
            (applied - ready) * 1000,
            (time.monotonic() - applied) * 1000,
        )
        return results

    async def _apply_journaled(
        self, fault_id: str, kind: AttackType, parameters: dict[str, Any], located: Located
    ) -> dict[str, Any]:
        """Apply a journaled fault; its record, or FaultError (undone, or left held)."""
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
        pod = self.entries[fault_id]["pod"]
        log.info("applied %s (%s) to pod %s/%s", fault_id, kind, pod["namespace"], pod["name"])
        if REVERSIBLE[kind]:
            self.entries[fault_id].update(state="applied", record=record)
        else:
            del self.entries[fault_id]  # nothing to undo, so nothing to hold
        return record

    async def _undo_failed_apply(self, fault_id: str) -> str | None:
        """Undo from the provisional record: covers an apply that failed while it undid.

        None when the fault is gone, else why it stays held (and is retried later).
        """
        try:
            await self._undo(fault_id)
            self._forget([fault_id])  # the batch's last save journals it
        except Exception as undo_error:
            log.error("undoing the failed apply of %s failed", fault_id, exc_info=True)
            self.entries[fault_id]["error"] = str(undo_error)
            return str(undo_error)
        return None

    async def handle_batch(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The reply's fields for apply_batch and rollback_many (FaultError if malformed)."""
        if command.get("op") == Op.APPLY_BATCH:
            batch = command.get("faults")
            if not isinstance(batch, list) or not all(isinstance(f, dict) for f in batch):
                raise FaultError("faults must be a list of apply commands")
            return {"ok": True, "results": await self.apply_batch(batch)}
        ids = command.get("ids")
        if not isinstance(ids, list):
            raise FaultError("ids must be a list of fault ids")
        checked = [faults.checked_fault_id(fault_id) for fault_id in ids]
        held, errors = await self.rollback_many(checked, "the agent asked")
        reply: dict[str, Any] = {"ok": not errors, "held": held, "errors": errors}
        if errors:
            reply["error"] = "; ".join(f"{key}: {text}" for key, text in errors.items())
        return reply

    async def handle(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The reply to one command (heartbeats excepted). Caller holds the lock."""
        reply = reply_to(command)
        op = command.get("op")
        try:
            if op == Op.APPLY:
                reply.update(ok=True, record=await self.apply(command))
            elif op in (Op.APPLY_BATCH, Op.ROLLBACK_MANY):
                reply.update(await self.handle_batch(command))
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
