"""The node agent's locators against fake /proc and cgroup trees (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shakeout.agent.node.locate import (
    LocateError,
    NetnsAnnotationLocator,
    PodRef,
    RuntimeLocator,
    locate_many,
    parse_cgroup_file,
    pod_cgroup_paths,
    pod_cgroup_prefix,
)
from shakeout.agent.node.system import FaultError, HostPaths, checked_netns_path

UID = "0a1b2c3d-1111-2222-3333-444455556666"
OTHER_UID = "0a1b2c3d-1111-2222-3333-444455557777"
U_ = UID.replace("-", "_")
CONTAINER = "cri-containerd-7f3e.scope"

SYSTEMD_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice"
SYSTEMD_V1 = "".join(
    f"{line}:{SYSTEMD_POD}/{CONTAINER}\n"
    for line in ("12:memory", "11:cpu,cpuacct", "3:pids", "1:name=systemd", "0:")
)
CGROUPFS_V2 = f"0::/kubepods/besteffort/pod{UID}/4c5d6e\n"
CGROUPFS_POD = f"/kubepods/besteffort/pod{UID}"


def test_parse_cgroup_file_reads_v1_and_v2_lines() -> None:
    lines = parse_cgroup_file(SYSTEMD_V1 + "garbage\n")
    assert [(line.hierarchy, line.controllers) for line in lines] == [
        (12, ("memory",)),
        (11, ("cpu", "cpuacct")),
        (3, ("pids",)),
        (1, ("name=systemd",)),
        (0, ()),
    ]
    assert lines[-1].path == f"{SYSTEMD_POD}/{CONTAINER}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # cgroupfs driver: burstable, besteffort and guaranteed (no QoS level) pods
        (f"/kubepods/burstable/pod{UID}/abc", f"/kubepods/burstable/pod{UID}"),
        (CGROUPFS_V2.split(":")[2].strip(), CGROUPFS_POD),
        (f"/kubepods/pod{UID}/abc", f"/kubepods/pod{UID}"),
        # systemd driver: the UID's dashes become underscores
        (f"{SYSTEMD_POD}/{CONTAINER}", SYSTEMD_POD),
        (
            f"/kubepods.slice/kubepods-pod{U_}.slice/{CONTAINER}",
            f"/kubepods.slice/kubepods-pod{U_}.slice",
        ),
        # nested under a kind node's slice
        (
            f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{U_}.slice/{CONTAINER}",
            f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{U_}.slice",
        ),
        # other pods and non-pod processes
        (f"/kubepods/burstable/pod{OTHER_UID}/abc", None),
        (f"/kubepods.slice/kubepods-pod{OTHER_UID.replace('-', '_')}.slice/x", None),
        ("/system.slice/containerd.service", None),
        (f"/kubepods/burstable/pod{UID}x/abc", None),
        ("/", None),
    ],
)
def test_pod_cgroup_prefix(path: str, expected: str | None) -> None:
    assert pod_cgroup_prefix(path, UID) == expected


def test_pod_cgroup_paths_prefers_v1_cpu_and_memory() -> None:
    assert pod_cgroup_paths(SYSTEMD_V1, UID) == [("memory", SYSTEMD_POD), ("cpu", SYSTEMD_POD)]
    assert pod_cgroup_paths(CGROUPFS_V2, UID) == [("", CGROUPFS_POD)]
    assert pod_cgroup_paths(SYSTEMD_V1, OTHER_UID) == []


def test_pod_cgroup_paths_joins_a_cpuacct_hierarchy_of_its_own() -> None:
    """Where cpu and cpuacct are mounted apart (this project's CI VM), the pod's CPU
    accounting is a hierarchy of its own: stress joins it too, one directory each."""
    apart = "".join(
        f"{line}:/kubepods/besteffort/pod{UID}/4c5d6e\n"
        for line in ("4:memory", "2:cpuacct", "1:cpu", "3:cpuset", "0:")
    )
    assert pod_cgroup_paths(apart, UID) == [
        ("memory", CGROUPFS_POD),
        ("cpuacct", CGROUPFS_POD),
        ("cpu", CGROUPFS_POD),
    ]


class FakeNode:
    """A fake /proc (and cgroup fs, and /run/netns) under a tmp dir."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.cgroup = root / "cgroup"
        self.netns = root / "netns"
        for directory in (self.proc, self.cgroup, self.netns):
            directory.mkdir()

    def process(self, pid: int, comm: str, cgroup: str = "0::/\n", net: Path | None = None) -> None:
        directory = self.proc / str(pid)
        (directory / "ns").mkdir(parents=True)
        (directory / "comm").write_text(comm + "\n")
        (directory / "cgroup").write_text(cgroup)
        if net is None:
            (directory / "ns" / "net").write_text("")
        else:
            os.link(net, directory / "ns" / "net")  # same (st_dev, st_ino): same namespace

    def cgroup_dir(self, relative: str) -> str:
        path = self.cgroup / relative.lstrip("/")
        path.mkdir(parents=True)
        return str(path)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path)


def pod(uid: str = UID, **annotations: str) -> PodRef:
    return PodRef(namespace="team-a", name="web-0", uid=uid, annotations=annotations)


def test_runtime_locator_systemd_driver_cgroup_v1(node: FakeNode) -> None:
    cpu = node.cgroup_dir(f"cpu{SYSTEMD_POD}")
    memory = node.cgroup_dir(f"memory{SYSTEMD_POD}")
    node.process(100, "pause", SYSTEMD_V1.replace(CONTAINER, "cri-containerd-sandbox.scope"))
    node.process(101, "nginx", SYSTEMD_V1)
    node.process(102, "nginx", SYSTEMD_V1.replace(U_, OTHER_UID.replace("-", "_")))
    node.process(103, "sshd", "0::/system.slice/ssh.service\n")
    node.process(104, "conmon", SYSTEMD_V1)  # CRI-O's monitor: host netns, not the pod's
    node.process(105, "worker", SYSTEMD_V1)
    located = RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod())
    # The netns of the sandbox: it lives as long as the pod, containers restart.
    assert located.netns == f"{node.proc}/100/ns/net"
    assert located.pids == (101, 105)
    assert located.cgroups == (memory, cpu)


def test_runtime_locator_cgroupfs_driver_cgroup_v2(node: FakeNode) -> None:
    unified = node.cgroup_dir(CGROUPFS_POD)
    node.process(7, "app", CGROUPFS_V2)
    located = RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod())
    # No sandbox process visible: any pod process shares the pod's netns.
    assert located.netns == f"{node.proc}/7/ns/net"
    assert located.pids == (7,)
    assert located.cgroups == (unified,)


def test_runtime_locator_finds_the_pod_dir_from_a_private_cgroup_namespace(
    node: FakeNode,
) -> None:
    # Seen from inside a container's own cgroup namespace, other cgroups are "/../..".
    pod_dir = node.cgroup_dir(SYSTEMD_POD)
    relative = f"0::/../../kubepods-burstable-pod{U_}.slice/{CONTAINER}\n"
    node.process(9, "app", relative)
    located = RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod())
    assert located.cgroups == (pod_dir,)


def test_runtime_locator_without_cgroup_dirs_still_locates(node: FakeNode) -> None:
    node.process(5, "app", CGROUPFS_V2)
    assert RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod()).cgroups == ()


def test_runtime_locator_refuses_a_pod_that_is_not_here(node: FakeNode) -> None:
    node.process(5, "app", CGROUPFS_V2)
    with pytest.raises(LocateError, match=r"team-a/web-0 .*has no processes on this node"):
        RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod(OTHER_UID))
    with pytest.raises(LocateError, match="not a pod UID"):
        RuntimeLocator(str(node.proc), str(node.cgroup)).locate(pod("../x"))


def test_runtime_locator_finds_many_pods_in_one_pass_over_proc(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.process(100, "pause", SYSTEMD_V1.replace(CONTAINER, "cri-containerd-sandbox.scope"))
    node.process(101, "nginx", SYSTEMD_V1)
    node.process(200, "app", CGROUPFS_V2.replace(UID, OTHER_UID))
    node.process(300, "sshd", "0::/system.slice/ssh.service\n")
    listings = []
    real_listdir = os.listdir

    def counted(path: str) -> list[str]:
        if path == str(node.proc):
            listings.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counted)
    absent = "0a1b2c3d-1111-2222-3333-444455558888"
    found = RuntimeLocator(str(node.proc), str(node.cgroup)).locate_many(
        [pod(), pod(OTHER_UID), pod(absent), pod("../x")]
    )
    assert len(listings) == 1  # one scan, whatever the number of pods
    mine, other = found[UID], found[OTHER_UID]
    assert not isinstance(mine, LocateError)
    assert not isinstance(other, LocateError)
    assert (mine.netns, mine.pids) == (f"{node.proc}/100/ns/net", (101,))
    assert (other.netns, other.pids) == (f"{node.proc}/200/ns/net", (200,))
    assert isinstance(found[absent], LocateError)
    assert "has no processes on this node" in str(found[absent])
    assert isinstance(found["../x"], LocateError)
    assert "not a pod UID" in str(found["../x"])


def test_locate_many_goes_one_by_one_where_a_locator_cannot_do_more(node: FakeNode) -> None:
    netns = node.netns / "kwok-web-0"
    netns.write_text("")
    node.process(30, "app", net=netns)
    locator = NetnsAnnotationLocator(str(node.netns), str(node.proc))
    found = locate_many(locator, [pod(**{"shakeout.dev/netns": "kwok-web-0"}), pod(OTHER_UID)])
    located = found[UID]
    assert not isinstance(located, LocateError)
    assert located.netns == str(netns)
    assert isinstance(found[OTHER_UID], LocateError)


def test_netns_annotation_locator(node: FakeNode) -> None:
    netns = node.netns / "kwok-web-0"
    netns.write_text("")
    node.process(30, "app", net=netns)
    node.process(31, "other")
    node.process(32, "sidecar", net=netns)
    locator = NetnsAnnotationLocator(str(node.netns), str(node.proc))
    located = locator.locate(pod(**{"shakeout.dev/netns": "kwok-web-0"}))
    assert located.netns == str(netns)
    assert located.pids == (30, 32)
    assert located.cgroups == ()


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({}, "has no shakeout.dev/netns annotation"),
        ({"shakeout.dev/netns": "../../proc/1/ns/net"}, "is not a netns name"),
        ({"shakeout.dev/netns": "Upper"}, "is not a netns name"),
        ({"shakeout.dev/netns": "absent"}, "does not exist on this node"),
    ],
)
def test_netns_annotation_locator_refuses(
    node: FakeNode, annotations: dict[str, str], message: str
) -> None:
    with pytest.raises(LocateError, match=message):
        NetnsAnnotationLocator(str(node.netns), str(node.proc)).locate(pod(**annotations))


def test_pod_ref_round_trip_and_validation() -> None:
    ref = pod(**{"a": "b"})
    assert PodRef.from_json(ref.to_json()) == ref
    with pytest.raises(LocateError):
        PodRef.from_json({"namespace": "a", "name": "b"})
    with pytest.raises(LocateError):
        PodRef.from_json({"namespace": "a", "name": "b", "uid": "c", "annotations": {"k": 1}})


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/run/netns/shakeout-t-1", True),
        ("/host/proc/123/ns/net", True),
        ("/proc/123/ns/net", False),  # not under the configured proc root
        ("/run/netns/../netns/x", False),
        ("/run/netns/x/y", False),
        ("/host/proc/0/ns/net", False),
        ("/host/proc/012/ns/net", False),
        ("/host/proc/self/ns/net", False),
        ("/host/proc/99999999/ns/net", False),
        ("/etc/passwd", False),
        (7, False),
    ],
)
def test_netns_paths_are_validated(path: object, ok: bool) -> None:
    host = HostPaths(proc_root="/host/proc")
    if ok:
        assert checked_netns_path(path, host) == path
    else:
        with pytest.raises(FaultError, match="refusing network namespace path"):
            checked_netns_path(path, host)
