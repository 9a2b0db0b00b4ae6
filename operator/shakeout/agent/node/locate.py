"""From a pod to its network namespace, processes and cgroup directories on this node.

Two locators: RuntimeLocator for real nodes (kubelet's cgroup paths in /proc), and
NetnsAnnotationLocator for kwok and test nodes only (see docs/node-agent.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shakeout.agent.node.system import NETNS_NAME, HostPaths, read_comm

ANNOTATION_NETNS = "shakeout.dev/netns"
# Kubernetes pod UIDs are UUIDs; static pods' UIDs are 32 hex digits.
POD_UID = re.compile(r"^[0-9a-fA-F][0-9a-fA-F-]{7,63}$")
# The sandbox process of every pod; it holds the network namespace but is no workload.
SANDBOX_COMM = "pause"
# CRI-O's container monitors sit in the pod's cgroup, but in the host's network namespace.
RUNTIME_HELPER_COMMS = frozenset({"conmon"})
# The cgroup v1 controllers whose pod cgroups stress processes join: CPU time and its
# accounting, and memory.
STRESS_CONTROLLERS = ("cpu", "cpuacct", "memory")
# How deep the pod directory may sit under a hierarchy when it has to be searched for.
_SEARCH_DEPTH = 5

NetnsId = tuple[int, int]


class LocateError(Exception):
    """The pod cannot be found on this node; the message says why."""


@dataclass(frozen=True)
class PodRef:
    """The target pod as the agent daemon knows it from the API."""

    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.name} (uid {self.uid})"

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "annotations": dict(self.annotations),
        }

    @classmethod
    def from_json(cls, data: object) -> PodRef:
        if not isinstance(data, Mapping):
            raise LocateError("pod must be an object with namespace, name, uid, annotations")
        texts = [data.get(key) for key in ("namespace", "name", "uid")]
        annotations = data.get("annotations") or {}
        if not all(isinstance(text, str) for text in texts) or not isinstance(annotations, Mapping):
            raise LocateError("pod needs string namespace, name and uid, annotations an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
            raise LocateError("pod annotations must map strings to strings")
        return cls(str(texts[0]), str(texts[1]), str(texts[2]), dict(annotations))


# The one annotation a locator reads, and the longest value kept of it: a pod's other
# annotations (up to 256 KiB, written by its team) never reach the keeper's journal.
MAX_ANNOTATION_CHARS = 256


def kept_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """Of a pod's annotations, only what a locator needs (ANNOTATION_NETNS, bounded)."""
    value = annotations.get(ANNOTATION_NETNS)
    if isinstance(value, str) and len(value) <= MAX_ANNOTATION_CHARS:
        return {ANNOTATION_NETNS: value}
    return {}


@dataclass(frozen=True)
class Located:
    """Where a pod lives on this node."""

    netns: str  # path of its network namespace
    pids: tuple[int, ...]  # its workload processes (the sandbox "pause" process left out)
    cgroups: tuple[str, ...] = ()  # its pod-level cgroup directories; may be empty

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "pids": list(self.pids), "cgroups": list(self.cgroups)}


class Locator(Protocol):
    def locate(self, pod: PodRef) -> Located: ...


# --- pure parsing --------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupLine:
    """One line of /proc/<pid>/cgroup: `hierarchy-id:controllers:path`."""

    hierarchy: int
    controllers: tuple[str, ...]
    path: str


def parse_cgroup_file(text: str) -> list[CgroupLine]:
    lines = []
    for raw in text.splitlines():
        hierarchy, sep1, rest = raw.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and hierarchy.isdigit()):
            continue
        names = tuple(name for name in controllers.split(",") if name)
        lines.append(CgroupLine(int(hierarchy), names, path))
    return lines


def pod_component_matches(component: str, uid: str) -> bool:
    """Whether a cgroup path component is the pod-level directory of the pod `uid`.

    cgroupfs driver: `pod<uid>`; systemd driver: `kubepods[-<qos>]-pod<uid>.slice`, where
    the UID's dashes become underscores (a dash separates systemd slice levels), or with
    a prefix when kubelet's cgroup root is nested (kind: `kubelet-kubepods-…`).
    """
    if component == f"pod{uid}":
        return True
    return "kubepods" in component and component.endswith(f"-pod{uid.replace('-', '_')}.slice")


def pod_cgroup_prefix(path: str, uid: str) -> str | None:
    """The path up to and including the pod-level component, or None if not this pod's."""
    parts = [part for part in path.split("/") if part]
    for index, part in enumerate(parts):
        if pod_component_matches(part, uid):
            return "/" + "/".join(parts[: index + 1])
    return None


def pod_cgroup_paths(cgroup_text: str, uid: str) -> list[tuple[str, str]]:
    """(hierarchy, pod-level path) pairs from one /proc/<pid>/cgroup of a pod process.

    cgroup v1: one pair per hierarchy holding cpu, cpuacct or memory, named by the first
    of them it holds (its directory under the cgroup root). cpuacct counts: it is usually
    mounted with cpu ("cpu,cpuacct"), but where it is a hierarchy of its own, a stress
    process outside the pod's cpuacct cgroup would burn CPU that the pod's own counters
    (what cAdvisor and `kubectl top` read) never show. Only when there are none (a pure
    cgroup v2 node), the unified hierarchy (""). On hybrid nodes the v2 line exists too,
    but the controllers that matter live in v1.
    """
    v1: list[tuple[str, str]] = []
    v2: list[tuple[str, str]] = []
    for line in parse_cgroup_file(cgroup_text):
        prefix = pod_cgroup_prefix(line.path, uid)
        if prefix is None:
            continue
        if line.hierarchy == 0 and not line.controllers:
            v2.append(("", prefix))
        joined = [name for name in STRESS_CONTROLLERS if name in line.controllers]
        if joined:
            v1.append((joined[0], prefix))
    return v1 or v2


def is_pod_process(cgroup_text: str, uid: str) -> bool:
    # A substring test first: most processes on a node belong to other pods or none.
    if uid not in cgroup_text and uid.replace("-", "_") not in cgroup_text:
        return False
    return any(pod_cgroup_prefix(line.path, uid) for line in parse_cgroup_file(cgroup_text))


def find_dir_named(base: str, name: str, depth: int = _SEARCH_DEPTH) -> str | None:
    """base/.../name, searched breadth-first through kubelet's directories only."""
    level = [base]
    for _ in range(depth):
        following = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.name == name:
                    return entry.path
                if entry.name.startswith("kube") or entry.name in ("burstable", "besteffort"):
                    following.append(entry.path)
        level = following
    return None


def pod_cgroup_dirs(cgroup_text: str, uid: str, cgroup_root: str) -> tuple[str, ...]:
    """The existing pod-level cgroup directories of the pod, from one of its processes."""
    dirs: list[str] = []
    for hierarchy, prefix in pod_cgroup_paths(cgroup_text, uid):
        base = os.path.join(cgroup_root, hierarchy) if hierarchy else cgroup_root
        if ".." in prefix.split("/"):
            # The reader sits in a private cgroup namespace, so the path is relative to
            # it; the pod directory is looked up by name under the host's hierarchy.
            found = find_dir_named(base, prefix.rsplit("/", 1)[-1])
        else:
            found = base + prefix
        if found and os.path.isdir(found) and found not in dirs:
            dirs.append(found)
    return tuple(dirs)


def list_pids(proc_root: str) -> list[int]:
    try:
        names = os.listdir(proc_root)
    except OSError as error:
        raise LocateError(f"cannot list processes in {proc_root}: {error}") from error
    return sorted(int(name) for name in names if name.isascii() and name.isdigit())


def netns_identity(path: str) -> NetnsId | None:
    """(st_dev, st_ino) of a network namespace file, or None if it does not exist."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino


def pids_in_netns(proc_root: str, identity: NetnsId) -> list[int]:
    """The processes whose network namespace is the one with this identity."""
    pids = []
    for pid in list_pids(proc_root):
        try:
            if netns_identity(os.path.join(proc_root, str(pid), "ns", "net")) == identity:
                pids.append(pid)
        except OSError:
            continue  # e.g. a kernel thread, or a process we may not inspect
    return pids


def resolve_netns(paths: Sequence[str], identity: NetnsId) -> str | None:
    """The first path that still names the network namespace `identity`, or None.

    None means the namespace is gone, or at least no longer reachable through anything
    the fault recorded (the pod and its processes are gone), so its rules went with it.
    """
    for path in paths:
        if netns_identity(path) == identity:
            return path
    return None


def _iter_pod_processes(proc_root: str, uids: Sequence[str]) -> Iterator[tuple[str, int, str, str]]:
    """(pod uid, pid, comm, cgroup text) of every process of the pods `uids`: one pass
    over /proc whatever their number (a pass costs tens of ms on a busy node)."""
    for pid in list_pids(proc_root):
        try:
            with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8") as file:
                text = file.read()
        except OSError:
            continue  # the process exited while we looked
        uid = next((uid for uid in uids if is_pod_process(text, uid)), None)
        if uid is not None:
            comm = read_comm(pid, proc_root)
            if comm is not None and comm not in RUNTIME_HELPER_COMMS:
                yield uid, pid, comm, text


# --- locators ------------------------------------------------------------------------


class RuntimeLocator:
    """Production: the pod's processes are those in kubelet's cgroup of the pod's UID.

    Needs the host's /proc (hostPID) and, for cgroup placement, the host's cgroup fs.
    """

    def __init__(self, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.host = HostPaths(proc_root=proc_root, cgroup_root=cgroup_root)

    def locate(self, pod: PodRef) -> Located:
        located = self.locate_many([pod])[pod.uid]
        if isinstance(located, LocateError):
            raise located
        return located

    def locate_many(self, pods: Sequence[PodRef]) -> dict[str, Located | LocateError]:
        """Each pod by its UID, found in one pass over /proc: where it lives, or why not."""
        results: dict[str, Located | LocateError] = {}
        wanted = []
        for pod in pods:
            if POD_UID.fullmatch(pod.uid):
                wanted.append(pod)
            else:
                results[pod.uid] = LocateError(f"{pod}: not a pod UID")
        found: dict[str, list[tuple[int, str, str]]] = {pod.uid: [] for pod in wanted}
        if wanted:
            for uid, pid, comm, text in _iter_pod_processes(self.host.proc_root, list(found)):
                found[uid].append((pid, comm, text))
        for pod in wanted:
            try:
                results[pod.uid] = self._located(pod, found[pod.uid])
            except LocateError as error:
                results[pod.uid] = error
        return results

    def _located(self, pod: PodRef, found: list[tuple[int, str, str]]) -> Located:
        if not found:
            raise LocateError(
                f"{pod} has no processes on this node (no cgroup under "
                f"{self.host.proc_root}/*/cgroup names pod{pod.uid})"
            )
        workload = [(pid, text) for pid, comm, text in found if comm != SANDBOX_COMM]
        sandbox = [pid for pid, comm, _ in found if comm == SANDBOX_COMM]
        # The sandbox holds the network namespace as long as the pod lives, while
        # containers restart; any pod process shares the same namespace.
        netns_pid = sandbox[0] if sandbox else found[0][0]
        netns = self.host.proc(netns_pid, "ns", "net")
        if netns_identity(netns) is None:
            raise LocateError(f"{pod}: process {netns_pid} exited while it was located")
        cgroup_text = workload[0][1] if workload else found[0][2]
        return Located(
            netns=netns,
            pids=tuple(pid for pid, _ in workload),
            cgroups=pod_cgroup_dirs(cgroup_text, pod.uid, self.host.cgroup_root),
        )


class NetnsAnnotationLocator:
    """kwok and test nodes only: the annotation shakeout.dev/netns names the pod's netns.

    Unsafe on real nodes: whoever may annotate a pod could point the attack at any named
    network namespace on the node.
    """

    def __init__(self, netns_dir: str = "/run/netns", proc_root: str = "/proc") -> None:
        self.host = HostPaths(proc_root=proc_root, netns_dir=netns_dir)

    def locate(self, pod: PodRef) -> Located:
        name = pod.annotations.get(ANNOTATION_NETNS)
        if name is None:
            raise LocateError(f"{pod} has no {ANNOTATION_NETNS} annotation")
        if not NETNS_NAME.fullmatch(name):
            raise LocateError(f"{pod}: {ANNOTATION_NETNS}={name!r} is not a netns name")
        path = os.path.join(self.host.netns_dir, name)
        identity = netns_identity(path)
        if identity is None:
            raise LocateError(f"{pod}: network namespace {path} does not exist on this node")
        return Located(netns=path, pids=tuple(pids_in_netns(self.host.proc_root, identity)))


LOCATORS = ("runtime", "netns-annotation")


def locate_many(locator: Locator, pods: Sequence[PodRef]) -> dict[str, Located | LocateError]:
    """Each pod by its UID: where it lives, or why it cannot be found. One pass over
    /proc for all of them where the locator can (RuntimeLocator), else one by one."""
    many = getattr(locator, "locate_many", None)
    if many is not None:
        return dict(many(pods))
    results: dict[str, Located | LocateError] = {}
    for pod in pods:
        try:
            results[pod.uid] = locator.locate(pod)
        except LocateError as error:
            results[pod.uid] = error
    return results


def make_locator(kind: str, host: HostPaths) -> Locator:
    if kind == "runtime":
        return RuntimeLocator(proc_root=host.proc_root, cgroup_root=host.cgroup_root)
    if kind == "netns-annotation":
        return NetnsAnnotationLocator(netns_dir=host.netns_dir, proc_root=host.proc_root)
    raise ValueError(f"unknown locator {kind!r}; one of {', '.join(LOCATORS)}")
