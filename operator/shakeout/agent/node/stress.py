"""The stress program of CpuStress and MemoryStress, started by the keeper.

    python -m shakeout.agent.node.stress --parent KEEPER_PID cpu
    python -m shakeout.agent.node.stress --parent KEEPER_PID memory --megabytes N

It dies with the keeper (PR_SET_PDEATHSIG), waits for "go" on stdin so that the keeper
can move it into the pod's cgroup before it uses anything, then prints "ready" once it
burns (cpu) or holds every page of its memory (memory). Standard library only, so that
it starts fast.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import signal
import sys
from typing import NoReturn

PR_SET_PDEATHSIG = 1
MIB = 1024 * 1024


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send sig to this process when its parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def hold_memory(megabytes: int) -> bytearray:
    held = bytearray(megabytes * MIB)
    # The allocation is lazy; writing one byte per page makes every page resident.
    pages = len(range(0, len(held), mmap.PAGESIZE))
    held[:: mmap.PAGESIZE] = b"\x01" * pages
    return held


def burn() -> NoReturn:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shakeout.agent.node.stress")
    parser.add_argument("--parent", type=int, required=True, help="pid of the keeper")
    kinds = parser.add_subparsers(dest="kind", required=True)
    kinds.add_parser("cpu", help="keep one CPU busy")
    memory = kinds.add_parser("memory", help="allocate and hold memory")
    memory.add_argument("--megabytes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.kind == "memory" and not 1 <= args.megabytes <= 65536:
        parser.error("--megabytes must be in 1..65536")

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.parent:
        return 3  # the keeper died before the prctl: nobody would ever stop us
    if sys.stdin.buffer.readline() != b"go\n":
        return 0  # the keeper gave up on this fault before it started
    held = hold_memory(args.megabytes) if args.kind == "memory" else None
    print("ready", flush=True)
    if held is None:
        burn()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
