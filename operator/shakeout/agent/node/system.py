"""Node tools without a shell: validated arguments, subprocesses, /proc reads, exact signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Linux never hands out pids above PID_MAX_LIMIT (2**22 on 64-bit kernels).
PID_MAX = 4_194_304
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
NETNS_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
COMMAND_TIMEOUT_SECONDS = 10.0
# Tools print their errors in the C locale, so that messages can be matched.
_C_LOCALE_ENV = {**os.environ, "LC_ALL": "C", "LANG": "C"}


class FaultError(Exception):
    """A fault could not be applied or rolled back; the message says why, for people."""


def _checked_root(path: str, what: str) -> str:
    if not path.startswith("/") or os.path.normpath(path) != path or "\n" in path:
        raise ValueError(f"{what} must be an absolute, normalized path, got {path!r}")
    return path


@dataclass(frozen=True)
class HostPaths:
    """Where this node's /proc, named network namespaces and cgroups are mounted."""

    proc_root: str = "/proc"
    netns_dir: str = "/run/netns"
    cgroup_root: str = "/sys/fs/cgroup"

    def __post_init__(self) -> None:
        _checked_root(self.proc_root, "proc root")
        _checked_root(self.netns_dir, "netns dir")
        _checked_root(self.cgroup_root, "cgroup root")

    def proc(self, pid: int, *parts: str) -> str:
        return os.path.join(self.proc_root, str(checked_pid(pid)), *parts)


def checked_int(value: object, low: int, high: int, what: str) -> int:
    """value if it is an int in low..high (bool is not an int here), else FaultError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def checked_pid(pid: object) -> int:
    return checked_int(pid, 1, PID_MAX, "pid")


def checked_ifname(name: object) -> str:
    # A leading dash could be read as an option by tc or ip.
    if not isinstance(name, str) or not IFNAME.fullmatch(name) or name.startswith("-"):
        raise FaultError(f"refusing network interface name {name!r}")
    return name


def checked_netns_path(path: object, host: HostPaths) -> str:
    """path if it is <netns_dir>/<name> or <proc_root>/<pid>/ns/net, else FaultError."""
    if isinstance(path, str):
        directory, _, name = path.rpartition("/")
        if directory == host.netns_dir and NETNS_NAME.fullmatch(name):
            return path
        prefix = host.proc_root.rstrip("/") + "/"
        if path.startswith(prefix) and path.endswith("/ns/net"):
            pid = path[len(prefix) : -len("/ns/net")]
            if pid.isascii() and pid.isdigit() and not pid.startswith("0") and int(pid) <= PID_MAX:
                return path
    raise FaultError(
        f"refusing network namespace path {path!r}: only {host.netns_dir}/<name> "
        f"or {host.proc_root}/<pid>/ns/net"
    )


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv run inside the network namespace `netns` (a path checked by checked_netns_path)."""
    return ["nsenter", f"--net={netns}", "--", *argv]


@dataclass(frozen=True)
class Completed:
    """A finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        return self.stderr.strip() or self.stdout.strip() or f"exit code {self.returncode}"


async def run(
    argv: Sequence[str], *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT_SECONDS
) -> Completed:
    """Run argv (never through a shell); FaultError if it cannot start or takes too long."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_C_LOCALE_ENV,
        )
    except FileNotFoundError as error:
        raise FaultError(f"{argv[0]} is not installed on this node") from error
    try:
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise FaultError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    return Completed(
        tuple(argv),
        process.returncode if process.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def stat_fields(pid: int, proc_root: str = "/proc") -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None when the process is gone."""
    text = _read_text(os.path.join(proc_root, str(pid), "stat"))
    if text is None or ")" not in text:
        return None
    # comm (field 2) may hold spaces and parentheses; it ends at the last ')'.
    return text[text.rindex(")") + 1 :].split()


def start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot."""
    fields = stat_fields(pid, proc_root)
    return int(fields[19]) if fields and len(fields) > 19 else None


def is_running(pid: int, started: int, proc_root: str = "/proc") -> bool:
    """Whether the process that started at `started` still lives (a zombie is dead)."""
    fields = stat_fields(pid, proc_root)
    return (
        fields is not None
        and len(fields) > 19
        and int(fields[19]) == started
        and fields[0] not in ("Z", "X")
    )


def read_comm(pid: int, proc_root: str = "/proc") -> str | None:
    text = _read_text(os.path.join(proc_root, str(pid), "comm"))
    return text.rstrip("\n") if text is not None else None


def signal_if(pid: int, sig: signal.Signals, still_target: Callable[[], bool]) -> bool:
    """Send sig to pid only if still_target() holds after pinning the process with a pidfd.

    The pidfd refers to the process that had the pid when it was opened: if the pid is
    reused afterwards, still_target() sees the new process and the signal is not sent,
    or the pidfd's process is gone and pidfd_send_signal fails. No other process is hit.
    """
    try:
        pidfd = os.pidfd_open(checked_pid(pid))
    except ProcessLookupError:
        return False
    try:
        if not still_target():
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
