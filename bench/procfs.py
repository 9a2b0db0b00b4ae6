"""A process's resident memory and CPU time, read from /proc (Linux), for the benchmarks.
A process gone meanwhile (a short-lived tool, a controller that exited) reads as 0."""

from __future__ import annotations

import os
from pathlib import Path


def rss_mib(pid: int) -> float:
    """VmRSS in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
