"""What `shakeout agent` was started with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class AgentOptions:
    node: str
    namespace: str = "shakeout-system"
    lease_duration: float = 6.0
    renew_interval: float = 2.0
    locator: str = "runtime"
    journal: Path = Path("/var/lib/shakeout/journal.json")
    proc_root: str = "/proc"
    netns_dir: str = "/run/netns"
    # cgroup v2 in a container: the host's cgroup namespace (e.g. /proc/1/ns/cgroup with
    # hostPID), so that stress processes can join the target pod's cgroup.
    cgroup_namespace: str | None = None
    resync: float = 10.0
    # While an apply goes on, the run is read again at most this often (seconds): a stop
    # that reached neither the watch nor a resync yet halts it all the same.
    recheck: float = 0.5
    # Targets handed to the keeper in one command (one /proc scan, two journal saves,
    # applied side by side); a stop is seen between two such batches.
    apply_batch: int = 16
    # Per-node stress caps (the keeper refuses beyond them, per target).
    max_stress_workers: int = _env_int("SHAKEOUT_AGENT_MAX_STRESS_WORKERS", 16)
    max_stress_mib: int = _env_int("SHAKEOUT_AGENT_MAX_STRESS_MIB", 4096)
    # How often the keeper retries a rollback that failed.
    retry_seconds: float = 10.0
