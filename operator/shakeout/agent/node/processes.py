"""CpuStress and MemoryStress (stress processes in the pod), ProcessKill (signals)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from shakeout.agent.node.locate import Located, NetnsId, netns_identity
from shakeout.agent.node.system import (
    FaultError,
    HostPaths,
    checked_int,
    checked_netns_path,
    checked_pid,
    in_netns,
    is_running,
    read_comm,
    signal_if,
    start_time,
)

STRESS_MODULE = "shakeout.agent.node.stress"
LEAF_PREFIX = "shakeout-"
_GONE_TIMEOUT_SECONDS = 5.0
_POLL_SECONDS = 0.02
# The keeper's own stress children by pid, with their start time, so that their exit
# status is collected (no zombies) and a reused pid is never mistaken for one of them.
_children: dict[int, tuple[int, asyncio.subprocess.Process]] = {}


def leaf_name(fault_id: str) -> str:
    return LEAF_PREFIX + hashlib.sha256(fault_id.encode()).hexdigest()[:12]


def _checked_cgroup_dir(path: object, host: HostPaths) -> str:
    if (
        not isinstance(path, str)
        or os.path.normpath(path) != path
        or not path.startswith(host.cgroup_root.rstrip("/") + "/")
    ):
        raise FaultError(f"refusing cgroup directory {path!r}: not under {host.cgroup_root}")
    return path


def _is_cgroup_v2(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "cgroup.controllers"))


def join_cgroups(pid: int, directories: Sequence[str], leaf: str) -> tuple[list[str], list[str]]:
    """Move pid into the pod's cgroups; best effort: (joined directories, errors).

    cgroup v2 allows processes in leaves only, and the pod directory has its containers
    below it, so on v2 the process goes into a leaf of its own in the pod directory.
    """
    joined, errors = [], []
    for directory in directories:
        target = os.path.join(directory, leaf) if _is_cgroup_v2(directory) else directory
        try:
            if target != directory:
                os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, "cgroup.procs"), "w", encoding="ascii") as procs:
                procs.write(str(pid))
            joined.append(target)
        except OSError as error:
            errors.append(f"{target}: {error.strerror}")
    return joined, errors


async def _remove_leaves(leaves: Sequence[object], host: HostPaths) -> list[str]:
    errors = []
    for leaf in leaves:
        path = _checked_cgroup_dir(leaf, host)
        if not os.path.basename(path).startswith(LEAF_PREFIX):
            raise FaultError(f"refusing to remove cgroup {path}: not one of ours")
        deadline = time.monotonic() + _GONE_TIMEOUT_SECONDS
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as error:
                # Busy while the killed processes finish exiting.
                if time.monotonic() > deadline:
                    errors.append(f"cannot remove cgroup {path}: {error.strerror}")
                    break
                await asyncio.sleep(_POLL_SECONDS)
    return errors


# The stress processes' oom_score_adj: the first the OOM killer chooses.
STRESS_OOM_SCORE_ADJ = 1000


def set_oom_score_adj(pid: int, value: int, host: HostPaths) -> None:
    """Write /proc/<pid>/oom_score_adj; FaultError if the kernel refuses (before `go`)."""
    path = host.proc(checked_pid(pid), "oom_score_adj")
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(f"{checked_int(value, -1000, 1000, 'oom_score_adj')}\n")
    except OSError as error:
        raise FaultError(f"cannot set {path} to {value}: {error.strerror}") from error


async def _kill_exactly(pid: int, started: int) -> bool:
    """SIGKILL the process (pid, started) if it still runs; whether it is gone now."""
    signal_if(pid, signal.SIGKILL, functools.partial(is_running, pid, started))
    child = _children.get(pid)
    if child is not None and child[0] == started:
        del _children[pid]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child[1].wait(), _GONE_TIMEOUT_SECONDS)
    deadline = time.monotonic() + _GONE_TIMEOUT_SECONDS
    while is_running(pid, started):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_POLL_SECONDS)
    return True


async def _spawn(netns: str, stress_args: Sequence[str]) -> tuple[int, asyncio.subprocess.Process]:
    # Started in the target's netns so that it counts among the pod's processes. Spawned
    # from the event loop's thread: PR_SET_PDEATHSIG fires when the forking thread exits.
    argv = [sys.executable, "-m", STRESS_MODULE, "--parent", str(os.getpid()), *stress_args]
    process = await asyncio.create_subprocess_exec(
        *in_netns(netns, argv),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
    )
    started = start_time(process.pid)
    if started is None:
        await process.wait()
        raise FaultError(f"the stress process exited at once: {await _stderr(process)}")
    _children[process.pid] = (started, process)
    return started, process


async def _stderr(process: asyncio.subprocess.Process) -> str:
    if process.stderr is None:
        return ""
    with contextlib.suppress(TimeoutError):
        text = await asyncio.wait_for(process.stderr.read(4096), 1.0)
        return text.decode(errors="replace").strip()
    return ""


async def _wait_ready(process: asyncio.subprocess.Process, timeout: float) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
    except TimeoutError:
        raise FaultError(f"the stress process was not ready within {timeout:g} s") from None
    if line != b"ready\n":
        code = await process.wait()
        raise FaultError(f"the stress process failed (exit code {code}): {await _stderr(process)}")


async def apply_stress(
    fault_id: str,
    workers: int,
    stress_args: Sequence[str],
    located: Located,
    host: HostPaths,
    *,
    ready_timeout: float,
) -> dict[str, Any]:
    """Start `workers` stress processes in the target pod; the record lists them exactly."""
    count = checked_int(workers, 1, 64, "workers")
    netns = checked_netns_path(located.netns, host)
    if netns_identity(netns) is None:
        raise FaultError(f"the target's network namespace {netns} is gone")
    directories = [_checked_cgroup_dir(path, host) for path in located.cgroups]
    leaf = leaf_name(fault_id)
    record: dict[str, Any] = {
        "mechanism": "stress",
        "processes": [],
        "cgroups": [],
        "cgroup_errors": [],
        "cgroup_leaves": [os.path.join(d, leaf) for d in directories if _is_cgroup_v2(d)],
    }
    try:
        spawned = []
        for _ in range(count):
            started, process = await _spawn(netns, stress_args)
            record["processes"].append({"pid": process.pid, "start": started})
            spawned.append(process)
            joined, errors = join_cgroups(process.pid, directories, leaf)
            record["cgroups"] += joined
            record["cgroup_errors"] += errors
            # The kernel's OOM killer takes the stress first, never the agent's -997.
            set_oom_score_adj(process.pid, STRESS_OOM_SCORE_ADJ, host)
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
            process.stdin.close()
        for process in spawned:
            await _wait_ready(process, ready_timeout)
    except BaseException as error:
        try:
            await rollback_stress(record, host)
        except FaultError as undo_error:
            raise FaultError(f"{error}; undoing it failed too: {undo_error}") from error
        raise
    return record


def provisional_stress(fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
    """No pids yet: the stress processes die with a keeper that dies (PDEATHSIG)."""
    directories = [_checked_cgroup_dir(path, host) for path in located.cgroups]
    leaf = leaf_name(fault_id)
    return {
        "mechanism": "stress",
        "processes": [],
        "cgroup_leaves": [os.path.join(d, leaf) for d in directories if _is_cgroup_v2(d)],
    }


async def rollback_stress(record: Mapping[str, Any], host: HostPaths) -> None:
    survivors = []
    for entry in record.get("processes", []):
        pid = checked_pid(entry.get("pid"))
        started = checked_int(entry.get("start"), 0, 2**63, "process start time")
        if not await _kill_exactly(pid, started):
            survivors.append(pid)
    errors = await _remove_leaves(record.get("cgroup_leaves", []), host)
    if survivors:
        errors.insert(0, f"stress processes {survivors} survived SIGKILL")
    if errors:
        raise FaultError("; ".join(errors))


def _still_target(pid: int, comm: str, identity: NetnsId, proc_root: str) -> bool:
    net = os.path.join(proc_root, str(pid), "ns", "net")
    return read_comm(pid, proc_root) == comm and netns_identity(net) == identity


async def kill_processes(
    signal_name: str, process_name: str | None, located: Located, host: HostPaths
) -> dict[str, Any]:
    """Signal the pod's processes (those named process_name); cannot be undone."""
    sig = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}.get(signal_name)
    if sig is None:
        raise FaultError(f"unknown signal {signal_name!r}")
    # A pidfd pins a pid of our own pid namespace: the located pids must be in it too.
    try:
        own_pid = os.readlink(os.path.join(host.proc_root, "self"))
    except OSError:
        own_pid = None
    if own_pid != str(os.getpid()):
        raise FaultError(f"ProcessKill needs {host.proc_root} to be of our pid namespace (hostPID)")
    netns = checked_netns_path(located.netns, host)
    identity = netns_identity(netns)
    if identity is None:
        raise FaultError(f"the target's network namespace {netns} is gone")
    spared = {1, os.getpid(), os.getppid()}
    killed = []
    for pid in map(checked_pid, located.pids):
        comm = read_comm(pid, host.proc_root)
        if pid in spared or comm is None or (process_name and comm != process_name):
            continue
        still_target = functools.partial(_still_target, pid, comm, identity, host.proc_root)
        if signal_if(pid, sig, still_target):
            killed.append({"pid": pid, "comm": comm})
    if not killed:
        named = f" named {process_name!r}" if process_name else ""
        raise FaultError(f"the pod has no process{named} to signal")
    return {
        "mechanism": "signal",
        "signal": signal_name,
        "killed": killed,
        "reversible": False,
        "undo": "nothing: ProcessKill is irreversible",
    }
