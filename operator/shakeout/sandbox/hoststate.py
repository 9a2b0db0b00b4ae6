"""What the real node may change on the host, recorded before `up` and compared after `down`.

A `HostState` is a plain, JSON-able record of the host's network interfaces, nftables
ruleset, iptables tables, mount points, top-level cgroups, the host directories a
kubelet, containerd and the CNI plugins write to, and the kernel settings they touch.
`down` restores what it can from the record taken before `up`, then compares.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Kernel settings that kubelet rewrites at start-up (the real node puts them back as soon
# as the node is Ready: kubelet sets them only once).
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Recorded before `up` and compared after `down`: kubelet's, those the CNI bridge plugin
# turns on (ip_forward), and those kube-proxy could touch (route_localnet, conntrack,
# br_netfilter).
SYSCTLS = (
    *KUBELET_SYSCTLS,
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.default.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Per-interface settings that ip_forward rewrites on every existing interface.
IFACE_SYSCTLS = ("forwarding", "route_localnet")
# Directories whose entries are recorded: the real node's components write into them
# (kubelet hard-codes /var/lib/kubelet/device-plugins; containerd's shims use
# /run/containerd; libcni caches in /var/lib/cni; iptables takes /run/xtables.lock).
WATCHED_DIRS = ("/run", "/var/lib", "/var/log", "/etc", "/opt")
# The entries of WATCHED_DIRS that `down` removes when they were not there before `up`.
# Nothing else is ever deleted: an unexpected new entry is only reported.
REMOVABLE = (
    "/run/containerd",
    "/run/netns",
    "/run/xtables.lock",
    "/run/containers",
    "/run/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/lib/containers",
    "/var/lib/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni",
    "/opt/containerd",
    "/opt/cni",
)


def _run(*args: str) -> str:
    """stdout of a command, or "" when the tool is missing or fails."""
    if shutil.which(args[0]) is None:
        return ""
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> bool:
    try:
        sysctl_path(name).write_text(value)
    except OSError:
        return False
    return True


def interfaces() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []


def mounts() -> list[str]:
    """Mount points, in mount order (so the reverse is a safe unmount order)."""
    points: list[str] = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            points.append(point)
    except OSError:
        pass
    return points


def cgroups() -> list[str]:
    """The top-level cgroups of every mounted hierarchy (`memory/kubepods`, ...)."""
    found: list[str] = []
    try:
        hierarchies = sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return found
    for hierarchy in hierarchies:
        try:
            children = sorted(c.name for c in hierarchy.iterdir() if c.is_dir())
        except OSError:
            continue
        found += [f"{hierarchy.name}/{c}" for c in children]
    return found


def _entries(directory: str) -> list[str]:
    try:
        return sorted(f"{directory}/{e}" for e in os.listdir(directory))
    except OSError:
        return []


def nft_ruleset() -> str:
    return _run("nft", "list", "ruleset")


def nft_tables() -> list[str]:
    """`family name` of every nftables table (iptables-nft's tables are among them)."""
    return sorted(
        " ".join(line.split()[1:3])
        for line in _run("nft", "list", "tables").splitlines()
        if line.startswith("table ")
    )


def iptables_tables() -> dict[str, str]:
    """iptables-save and ip6tables-save (the nft backend), without counters or comments."""
    out = {}
    for tool in ("iptables-save", "ip6tables-save"):
        text = _run(tool)
        out[tool] = "\n".join(
            line.split(" [", 1)[0] if line.startswith(":") else line
            for line in text.splitlines()
            if not line.startswith("#")
        )
    return out


@dataclass
class HostState:
    interfaces: list[str] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)
    nft_ruleset: str = ""
    iptables: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    sysctls: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def capture(cls) -> HostState:
        ifaces = interfaces()
        names = list(SYSCTLS)
        for iface in (i for i in ifaces if "." not in i):
            names += [f"net.ipv4.conf.{iface}.{s}" for s in IFACE_SYSCTLS]
        entries: list[str] = []
        for directory in WATCHED_DIRS:
            entries += _entries(directory)
        return cls(
            interfaces=ifaces,
            nft_tables=nft_tables(),
            nft_ruleset=nft_ruleset(),
            iptables=iptables_tables(),
            mounts=mounts(),
            cgroups=cgroups(),
            entries=entries,
            sysctls={name: read_sysctl(name) for name in names},
        )

    @classmethod
    def load(cls, path: Path) -> HostState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    def differences(
        self, after: HostState, relevant: Callable[[str], bool] = lambda _item: True
    ) -> list[str]:
        """What `after` has that this record has not (and the reverse), one line each.

        relevant: which added or removed interfaces, mounts, cgroups and paths count (on a
        shared machine, other programs create and delete their own while the node runs).
        """
        diff: list[str] = []

        def sets(
            what: str, before: list[str], now: list[str], counts: Callable[[str], bool] = relevant
        ) -> None:
            added = sorted(i for i in set(now) - set(before) if counts(i))
            gone = sorted(i for i in set(before) - set(now) if counts(i))
            if added:
                diff.append(f"{what} added: {', '.join(added)}")
            if gone:
                diff.append(f"{what} gone: {', '.join(gone)}")

        sets("interfaces", self.interfaces, after.interfaces)
        sets("nft tables", self.nft_tables, after.nft_tables, lambda _table: True)
        if self.nft_ruleset != after.nft_ruleset and self.nft_tables == after.nft_tables:
            diff.append("nft ruleset changed")
        for tool, text in self.iptables.items():
            if after.iptables.get(tool, "") != text:
                diff.append(f"{tool} changed")
        sets("mounts", self.mounts, after.mounts)
        sets("cgroups", self.cgroups, after.cgroups)
        sets("host paths", self.entries, after.entries)
        for name, value in self.sysctls.items():
            parts = name.split(".")
            if name.startswith("net.ipv4.conf.") and parts[3] not in [
                *after.interfaces,
                "all",
                "default",
            ]:
                continue  # an interface that went away took its settings with it
            now = after.sysctls.get(name, read_sysctl(name))
            if now != value:
                diff.append(f"sysctl {name}: {value} before, {now} now")
        return diff
