"""The keeper: the process that holds a node's faults and rolls them back on its own.

    python -m shakeout.agent.node.keeper --journal PATH --deadline SECONDS
        [--locator runtime|netns-annotation] [--proc-root DIR] [--netns-dir DIR]
        [--cgroup-root DIR] [--parent-pid PID] [--max-stress-workers N]
        [--max-stress-mib M] [--retry-seconds S]

It answers the agent's commands in the line protocol of keeper_protocol (the agent's
side is keeper_client.Keeper).

Safety: the journal is written before a fault is applied; each fault's notAfter (an
absolute time, journaled with it) rolls it back on its own; no command for --deadline
seconds rolls everything back (the keeper keeps running, empty); SIGTERM, SIGINT, stdin
EOF and the death of the parent (PR_SET_PDEATHSIG) roll everything back and exit. What
could not be rolled back is retried every --retry-seconds, whatever the agent does.
Stress is capped per node: --max-stress-workers processes, --max-stress-mib MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shakeout.agent.node import faults
from shakeout.agent.node.journal import Entries, Journal
from shakeout.agent.node.keeper_protocol import (
    LINE_LIMIT,
    MODULE,
    READY,
    Op,
    checked_deadline,
    decode,
    encode,
    reply_to,
)
from shakeout.agent.node.locate import (
    LOCATORS,
    LocateError,
    Locator,
    PodRef,
    kept_annotations,
    make_locator,
)
from shakeout.agent.node.stress import set_parent_death_signal
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import REVERSIBLE, AttackType

log = logging.getLogger("shakeout.keeper")

# The deadline is checked this often: a lapse is acted on within 100 ms.
_WATCH_SECONDS = 0.05
# After a deadline rollback that failed, the next attempt comes this much later.
_RETRY_SECONDS = 1.0
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
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


def _send(out: asyncio.StreamWriter, message: Mapping[str, Any]) -> None:
    # Buffered by the transport, never awaited: a frozen agent that reads nothing must
    # not block the keeper's deadline.
    out.write(encode(message))


async def _read_commands(
    holder: FaultHolder,
    commands: asyncio.StreamReader,
    queue: asyncio.Queue[dict[str, Any]],
    out: asyncio.StreamWriter,
) -> None:
    """Until stdin ends: heartbeats answered here, the rest queued in order."""
    while True:
        try:
            line = await commands.readline()
        except ValueError:
            log.error("a command line exceeds %d bytes; stopping", LINE_LIMIT)
            return
        if not line:
            log.warning("stdin closed: the agent is gone or stopping us")
            return
        holder.last_command = time.monotonic()
        try:
            command = decode(line)
        except ValueError as error:
            _send(out, {"ok": False, "error": f"a command must be a JSON object: {error}"})
            continue
        if command.get("op") == Op.HEARTBEAT:
            _send(
                out,
                {
                    **reply_to(command),
                    "ok": True,
                    "held": sorted(holder.entries),
                    "unrecovered": dict(sorted(holder.unrecovered.items())),
                },
            )
        else:
            queue.put_nowait(command)


async def _work(
    holder: FaultHolder, queue: asyncio.Queue[dict[str, Any]], out: asyncio.StreamWriter
) -> None:
    while True:
        command = await queue.get()
        async with holder.lock:
            reply = await holder.handle(command)
        _send(out, reply)


async def _watch_not_after(holder: FaultHolder) -> None:
    """Roll back each fault at its notAfter, and retry the unrecovered ones every
    retry_seconds: on a timer of their own, whatever the agent says or does not say."""
    next_retry = time.monotonic() + holder.retry_seconds
    while True:
        await asyncio.sleep(_WATCH_SECONDS)
        due = holder.due(time.time())
        retry = bool(holder.unrecovered) and time.monotonic() >= next_retry
        if not (due or retry):
            continue
        async with holder.lock:
            if due:
                await holder.rollback_due(time.time())
            if retry:
                next_retry = time.monotonic() + holder.retry_seconds
                await holder.retry_unrecovered()


async def _watch_deadline(holder: FaultHolder) -> None:
    """Roll everything back when the agent has been silent for the deadline."""
    next_attempt = 0.0
    while True:
        await asyncio.sleep(_WATCH_SECONDS)
        now = time.monotonic()
        if not holder.entries or now < next_attempt:
            continue
        if now - holder.last_command <= holder.deadline:
            continue
        async with holder.lock:
            silent = time.monotonic() - holder.last_command
            if not holder.entries or silent <= holder.deadline:
                continue  # a command came while we waited for the lock
            log.error(
                "no command from the agent for %.2f s (deadline %g s): rolling back %s",
                silent,
                holder.deadline,
                ", ".join(sorted(holder.entries)),
            )
            errors = await holder.rollback_all(f"deadline of {holder.deadline:g} s lapsed")
        next_attempt = time.monotonic() + _RETRY_SECONDS if errors else 0.0


async def _stdio(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def serve(args: argparse.Namespace) -> int:
    """The keeper's life; its exit code: 0 when nothing is left held."""
    host = HostPaths(
        proc_root=args.proc_root, netns_dir=args.netns_dir, cgroup_root=args.cgroup_root
    )
    holder = FaultHolder(
        Journal(Path(args.journal)),
        args.deadline,
        make_locator(args.locator, host),
        host,
        max_stress_workers=args.max_stress_workers,
        max_stress_mib=args.max_stress_mib,
        retry_seconds=args.retry_seconds,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # Blocked since before the prctl, so that no stop signal went unhandled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        log.warning("the agent (pid %d) died before the keeper started", args.parent_pid)
        stop.set()
    async with holder.lock:
        recovered, unrecovered = await holder.recover()
    commands, out = await _stdio(loop)
    ready = {"event": READY, "pid": os.getpid(), "recovered": recovered}
    _send(out, {**ready, "unrecovered": unrecovered})
    holder.last_command = time.monotonic()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reader = asyncio.create_task(_read_commands(holder, commands, queue, out))
    helpers = [
        asyncio.create_task(_work(holder, queue, out)),
        asyncio.create_task(_watch_deadline(holder)),
        asyncio.create_task(_watch_not_after(holder)),
    ]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
    reader.cancel()
    stopping.cancel()
    async with holder.lock:  # lets a command in progress finish first
        for task in helpers:
            task.cancel()
        errors = await holder.rollback_all("the keeper is stopping")
    await asyncio.gather(reader, stopping, *helpers, return_exceptions=True)
    with contextlib.suppress(OSError):
        await out.drain()
    if errors:
        log.error("left in the journal for the next keeper: %s", ", ".join(sorted(errors)))
    return 1 if errors else 0


def _deadline(text: str) -> float:
    value = float(text)  # a ValueError: argparse says the value is invalid
    try:
        return checked_deadline(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--journal", required=True, help="JSON journal of the faults held")
    parser.add_argument("--deadline", type=_deadline, required=True, help="seconds of silence")
    parser.add_argument("--locator", choices=LOCATORS, default="runtime")
    parser.add_argument("--proc-root", default="/proc")
    parser.add_argument("--netns-dir", default="/run/netns")
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup")
    parser.add_argument("--parent-pid", type=int, help="the agent; exit if it is gone")
    parser.add_argument(
        "--max-stress-workers",
        type=int,
        default=DEFAULT_MAX_STRESS_WORKERS,
        help="stress processes on this node at once, at most",
    )
    parser.add_argument(
        "--max-stress-mib",
        type=int,
        default=DEFAULT_MAX_STRESS_MIB,
        help="MiB of MemoryStress on this node at once, at most",
    )
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=DEFAULT_RETRY_SECONDS,
        help="how often a rollback that failed is tried again",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s keeper[%(process)d] %(levelname)s %(message)s",
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    set_parent_death_signal(signal.SIGTERM)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
