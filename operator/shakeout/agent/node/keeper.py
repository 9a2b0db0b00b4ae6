"""The keeper: the process that holds a node's faults and rolls them back on its own.

    python -m shakeout.agent.node.keeper --journal PATH --deadline SECONDS
        [--locator runtime|netns-annotation] [--proc-root DIR] [--netns-dir DIR]
        [--cgroup-root DIR] [--parent-pid PID]

Protocol: one JSON object per line, commands on stdin, replies on stdout. A command may
carry "seq"; its reply echoes "seq" (and "id"), so that the client matches replies.

    {"op":"apply","id":ID,"type":T,"parameters":{...},"pod":{namespace,name,uid,annotations}}
        -> {"id":ID,"ok":true,"record":{...}} | {"id":ID,"ok":false,"error":"..."}
    {"op":"rollback","id":ID}  -> {"id":ID,"ok":true,"held":bool} (held: it was held)
    {"op":"rollback_all"}      -> {"ok":true,"errors":{}} | {"ok":false,"error":...,"errors":{...}}
    {"op":"list"}              -> {"ok":true,"ids":[...]}
    {"op":"heartbeat"}         -> {"ok":true,"held":[...]}, answered at once, even mid-apply

First line on stdout: {"event":"ready","pid":P,"recovered":[...],"unrecovered":[...]}, once
the faults left in the journal by an earlier keeper are rolled back.

Safety: the journal is written before a fault is applied; no command for --deadline
seconds rolls everything back (the keeper keeps running, empty); SIGTERM, SIGINT, stdin
EOF and the death of the parent (PR_SET_PDEATHSIG) roll everything back and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shakeout.agent.node import faults
from shakeout.agent.node.journal import Entries, Journal
from shakeout.agent.node.locate import LOCATORS, LocateError, Locator, PodRef, make_locator
from shakeout.agent.node.stress import set_parent_death_signal
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.experiment import REVERSIBLE, AttackType

log = logging.getLogger("shakeout.keeper")
client_log = logging.getLogger("shakeout.agent.keeper")

MODULE = "shakeout.agent.node.keeper"
MAX_DEADLINE_SECONDS = 86_400.0
# The deadline is checked this often (the brief allows at most 100 ms).
_WATCH_SECONDS = 0.05
# After a deadline rollback that failed, the next attempt comes this much later.
_RETRY_SECONDS = 1.0
_LINE_LIMIT = 1 << 20
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class _Holder:
    """The keeper's state: the faults it holds, mirrored in the journal."""

    def __init__(self, journal: Journal, deadline: float, locator: Locator, host: HostPaths):
        self.journal = journal
        self.deadline = deadline
        self.locator = locator
        self.host = host
        self.entries: Entries = {}
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
        return errors

    async def apply(self, command: Mapping[str, Any]) -> dict[str, Any]:
        fault_id = faults.checked_fault_id(command.get("id"))
        kind = faults.node_attack(command.get("type"))
        parameters = command.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise FaultError("parameters must be an object")
        faults.parameters_of(kind, parameters)  # refused before anything is journaled
        pod = PodRef.from_json(command.get("pod"))
        held = self.entries.get(fault_id)
        if held is not None:
            if held.get("type") == kind and held.get("state") == "applied":
                return dict(held["record"])  # a repeated apply: the fault is in place
            raise FaultError(f"fault {fault_id} is held already ({held.get('type')})")
        located = await asyncio.to_thread(self.locator.locate, pod)
        self.entries[fault_id] = {
            "type": str(kind),
            "parameters": parameters,
            "pod": pod.to_json(),
            "target": located.to_json(),
            "state": "applying",
            "record": faults.provisional_record(fault_id, kind, located, host=self.host),
            "since": time.time(),
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
        reply = _reply_to(command)
        op = command.get("op")
        try:
            if op == "apply":
                reply.update(ok=True, record=await self.apply(command))
            elif op == "rollback":
                held = await self.rollback_one(faults.checked_fault_id(command.get("id")))
                if held:
                    log.info("rolled back %s", command.get("id"))
                reply.update(ok=True, held=held)
            elif op == "rollback_all":
                errors = await self.rollback_all("the agent asked")
                reply.update(ok=not errors, errors=errors)
                if errors:
                    reply["error"] = "; ".join(f"{key}: {text}" for key, text in errors.items())
            elif op == "list":
                reply.update(ok=True, ids=sorted(self.entries))
            else:
                reply.update(ok=False, error=f"unknown op {op!r}")
        except (FaultError, LocateError) as error:
            reply.update(ok=False, error=str(error))
        except Exception as error:
            log.error("%s failed", op, exc_info=True)
            reply.update(ok=False, error=f"internal error: {error!r}")
        return reply


def _reply_to(command: Mapping[str, Any]) -> dict[str, Any]:
    return {key: command[key] for key in ("seq", "id") if key in command}


def _send(out: asyncio.StreamWriter, message: Mapping[str, Any]) -> None:
    # Buffered by the transport, never awaited: a frozen agent that reads nothing must
    # not block the keeper's deadline.
    out.write(json.dumps(message).encode() + b"\n")


async def _read_commands(
    holder: _Holder,
    commands: asyncio.StreamReader,
    queue: asyncio.Queue[dict[str, Any]],
    out: asyncio.StreamWriter,
) -> None:
    """Until stdin ends: heartbeats answered here, the rest queued in order."""
    while True:
        try:
            line = await commands.readline()
        except ValueError:
            log.error("a command line exceeds %d bytes; stopping", _LINE_LIMIT)
            return
        if not line:
            log.warning("stdin closed: the agent is gone or stopping us")
            return
        holder.last_command = time.monotonic()
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as error:
            _send(out, {"ok": False, "error": f"a command must be a JSON object: {error}"})
            continue
        if command.get("op") == "heartbeat":
            _send(out, {**_reply_to(command), "ok": True, "held": sorted(holder.entries)})
        else:
            queue.put_nowait(command)


async def _work(
    holder: _Holder, queue: asyncio.Queue[dict[str, Any]], out: asyncio.StreamWriter
) -> None:
    while True:
        command = await queue.get()
        async with holder.lock:
            reply = await holder.handle(command)
        _send(out, reply)


async def _watch_deadline(holder: _Holder) -> None:
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
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
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
    holder = _Holder(
        Journal(Path(args.journal)), args.deadline, make_locator(args.locator, host), host
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
    ready = {"event": "ready", "pid": os.getpid(), "recovered": recovered}
    _send(out, {**ready, "unrecovered": unrecovered})
    holder.last_command = time.monotonic()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reader = asyncio.create_task(_read_commands(holder, commands, queue, out))
    helpers = [
        asyncio.create_task(_work(holder, queue, out)),
        asyncio.create_task(_watch_deadline(holder)),
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
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_SECONDS):
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DEADLINE_SECONDS:g}] seconds")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--journal", required=True, help="JSON journal of the faults held")
    parser.add_argument("--deadline", type=_deadline, required=True, help="seconds of silence")
    parser.add_argument("--locator", choices=LOCATORS, default="runtime")
    parser.add_argument("--proc-root", default="/proc")
    parser.add_argument("--netns-dir", default="/run/netns")
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup")
    parser.add_argument("--parent-pid", type=int, help="the agent; exit if it is gone")
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


# --- the agent daemon's client -------------------------------------------------------


class Keeper:
    """The agent daemon's handle on its keeper process (see the module docstring).

    Start it from the thread that lives as long as the agent (its event loop's thread):
    the keeper's PR_SET_PDEATHSIG fires when the thread that forked it exits. Call
    heartbeat() after every successful lease renewal, and use the lease duration as
    the deadline: an agent that cannot renew, or is frozen, loses its faults in time.
    """

    def __init__(
        self, process: asyncio.subprocess.Process, journal: Path, ready: Mapping[str, Any]
    ):
        self._process = process
        self.journal = journal
        self.recovered: list[str] = list(ready.get("recovered", []))
        self.unrecovered: list[str] = list(ready.get("unrecovered", []))
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._replies = asyncio.create_task(self._read_replies())

    @classmethod
    async def start(
        cls,
        *,
        journal: Path,
        deadline: float,
        locator: str = "runtime",
        proc_root: str = "/proc",
        netns_dir: str = "/run/netns",
        cgroup_root: str = "/sys/fs/cgroup",
        cgroup_namespace: str | None = None,
        start_timeout: float = 60.0,
    ) -> Keeper:
        """Start the keeper; returns once it rolled back what its journal held.

        cgroup_namespace: run the keeper in this cgroup namespace, e.g. the host's
        (f"{proc_root}/1/ns/cgroup") when the agent's container has a private one (the
        default on cgroup v2 nodes): cgroup v2 refuses to move a process into a cgroup
        outside the mover's cgroup namespace, so stress could not join the pod's cgroup.
        """
        if locator not in LOCATORS:
            raise ValueError(f"unknown locator {locator!r}")
        host = HostPaths(proc_root=proc_root, netns_dir=netns_dir, cgroup_root=cgroup_root)
        enter: list[str] = []
        if cgroup_namespace is not None:
            pid = cgroup_namespace.removeprefix(host.proc_root + "/").removesuffix("/ns/cgroup")
            if not (
                pid.isascii()
                and pid.isdigit()
                and host.proc(int(pid), "ns", "cgroup") == cgroup_namespace
            ):
                raise ValueError(f"not <proc root>/<pid>/ns/cgroup: {cgroup_namespace!r}")
            # nsenter execs the keeper: same pid, same parent, so PDEATHSIG still works.
            enter = ["nsenter", f"--cgroup={cgroup_namespace}", "--"]
        argv = [
            *enter,
            sys.executable, "-m", MODULE,
            "--journal", str(journal),
            "--deadline", repr(_deadline(repr(float(deadline)))),
            "--locator", locator,
            "--proc-root", proc_root,
            "--netns-dir", netns_dir,
            "--cgroup-root", cgroup_root,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_LINE_LIMIT
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise FaultError(f"the keeper was not ready within {start_timeout:g} s") from None
        try:
            ready = json.loads(line)
        except ValueError:
            ready = None
        if not isinstance(ready, dict) or ready.get("event") != "ready":
            code = await process.wait()
            raise FaultError(f"the keeper did not start (exit code {code}; see its log)")
        return cls(process, journal, ready)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    async def apply(
        self,
        fault_id: str,
        attack_type: AttackType | str,
        parameters: Mapping[str, Any] | None,
        pod: PodRef | Mapping[str, Any],
        *,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Apply the fault; its rollback record. FaultError with the keeper's message.

        pod: a PodRef, or its JSON form {"namespace", "name", "uid", "annotations"}.
        """
        if not isinstance(pod, PodRef):
            pod = PodRef.from_json(pod)
        command = {
            "op": "apply",
            "id": fault_id,
            "type": str(attack_type),
            "parameters": dict(parameters or {}),
            "pod": pod.to_json(),
        }
        reply = await self._request(command, timeout)
        return dict(reply["record"])

    async def rollback(self, fault_id: str, *, timeout: float = 120.0) -> None:
        """Roll the fault back; a no-op when the keeper does not hold it."""
        await self._request({"op": "rollback", "id": fault_id}, timeout)

    async def heartbeat(self, *, timeout: float = 5.0) -> list[str]:
        """Tell the keeper the agent lives; the ids it holds (fewer after a lapse)."""
        reply = await self._request({"op": "heartbeat"}, timeout)
        return [str(fault_id) for fault_id in reply.get("held", [])]

    async def held(self, *, timeout: float = 30.0) -> list[str]:
        """The ids of the faults the keeper holds (op "list")."""
        reply = await self._request({"op": "list"}, timeout)
        return [str(fault_id) for fault_id in reply.get("ids", [])]

    async def rollback_all(self, *, timeout: float = 300.0) -> None:
        await self._request({"op": "rollback_all"}, timeout)

    async def stop(self, *, timeout: float = 120.0) -> None:
        """Roll everything back and end the keeper; FaultError if something stayed."""
        if self._process.returncode is None and self._process.stdin is not None:
            self._process.stdin.close()  # EOF: the keeper rolls back and exits
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            self._process.kill()
            code = await self._process.wait()
        await asyncio.gather(self._replies, return_exceptions=True)
        if code != 0:
            raise FaultError(
                f"the keeper (pid {self.pid}) exited with code {code}; what it could not "
                f"roll back stays in {self.journal} for the next keeper"
            )

    async def _request(self, command: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        stdin = self._process.stdin
        if stdin is None or self._replies.done():
            raise FaultError(f"the keeper (pid {self.pid}) is not running")
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            async with asyncio.timeout(timeout):
                stdin.write(json.dumps({**command, "seq": seq}).encode() + b"\n")
                await stdin.drain()
                reply = await future
        except TimeoutError:
            raise FaultError(
                f"the keeper did not answer {command['op']} within {timeout:g} s"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as error:
            raise FaultError(f"the keeper (pid {self.pid}) is gone: {error}") from error
        finally:
            self._pending.pop(seq, None)
        if not reply.get("ok"):
            raise FaultError(str(reply.get("error") or f"the keeper refused {command['op']}"))
        return reply

    async def _read_replies(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                try:
                    reply = json.loads(line)
                except ValueError:
                    client_log.warning("keeper wrote a line that is no JSON: %r", line[:200])
                    continue
                seq = reply.get("seq") if isinstance(reply, dict) else None
                future = self._pending.get(seq) if isinstance(seq, int) else None
                if future is not None and not future.done():
                    future.set_result(reply)
                else:
                    client_log.warning("keeper said, unasked: %s", reply)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(FaultError(f"the keeper (pid {self.pid}) exited"))


if __name__ == "__main__":
    sys.exit(main())
