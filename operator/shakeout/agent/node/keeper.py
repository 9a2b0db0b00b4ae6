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

from shakeout.agent.node.holder import (
    DEFAULT_MAX_STRESS_MIB,
    DEFAULT_MAX_STRESS_WORKERS,
    DEFAULT_RETRY_SECONDS,
    FaultHolder,
)
from shakeout.agent.node.journal import Journal
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
    make_locator,
)
from shakeout.agent.node.stress import set_parent_death_signal
from shakeout.agent.node.system import HostPaths

log = logging.getLogger("shakeout.keeper")

# The deadline is checked this often: a lapse is acted on within 100 ms.
_WATCH_SECONDS = 0.05
# After a deadline rollback that failed, the next attempt comes this much later.
_RETRY_SECONDS = 1.0
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


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
            if command.get("op") == Op.ROLLBACK_ALL:
                holder.halts += 1  # a batch in progress starts nothing more
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
