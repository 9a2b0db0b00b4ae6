"""Supervising the sandbox's processes: free ports, start, liveness, waiting, stop.

A component runs in a session of its own, with its output in `<logs>/<name>.log`; it
outlives the process that started it, and is found again by its pid and name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


class SandboxError(RuntimeError):
    """The sandbox could not be started or used; the message says what to do."""


def free_ports(names: list[str] | tuple[str, ...], host: str) -> dict[str, int]:
    """Distinct free ports on host: all sockets stay open until every port is picked,
    or the kernel could hand the same just-closed port out twice."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return {name: int(sock.getsockname()[1]) for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def alive(pid: int, name: str) -> bool:
    """The pid runs and is still our binary (pids are reused after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}:
        return False
    if not cmdline:
        # Seen right after spawn, while the kernel is still setting up the new image.
        return True
    return name.encode() in cmdline.split(b"\0", 1)[0]


def log_file(logs: Path, name: str) -> Path:
    return logs / f"{name}.log"


def spawn(
    name: str,
    args: list[str],
    logs: Path,
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> int:
    """Start a component in a session of its own; its pid.

    env: its environment (default: ours); preexec: run in the child before the exec
    (the real node's policy engine enters a mount namespace of its own there).
    """
    with log_file(logs, name).open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `shakeout sandbox up`; `down` stops it
            cwd=cwd,
            env=env,
            preexec_fn=preexec,  # noqa: PLW1509  (only the policy engine's, async-signal-safe)
        )
    return proc.pid


def log_tail(logs: Path, name: str, lines: int = 20) -> str:
    try:
        return "\n".join(log_file(logs, name).read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, pids: Mapping[str, int], logs: Path
) -> None:
    """Poll check until it holds; SandboxError, with the log's tail, as soon as one of
    the components in pids has exited, or when the timeout runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        dead = [n for n, pid in pids.items() if not alive(pid, n)]
        if dead:
            tail = log_tail(logs, dead[0])
            raise SandboxError(f"{dead[0]} exited while waiting for {what}:\n{tail}")
        time.sleep(0.2)
    raise SandboxError(f"timed out after {timeout}s waiting for {what}; logs in {logs}")


def stop(pid: int, name: str, grace: float = 10.0) -> None:
    """SIGTERM to the component's session, SIGKILL after grace seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid, name):
        time.sleep(0.1)
    if alive(pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # Reap it if it is our own child (tests start the sandbox in-process), so that no
    # zombie is left behind by a process that ran `up` and `down` several times.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)
