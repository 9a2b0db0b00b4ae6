"""Node-level attacks on the real node: first fault, Stop All, and the agent's footprint.

Usage (root): .venv/bin/python bench/realnode.py [REPETITIONS] [PODS] [ATTACKS...]
(`make bench-real-node`). Brings up a sandbox with the real node (`realnode-0`) in a state
directory of its own, starts the operator and a node agent for the real node as host
processes (as `make run` does), creates real pods of the busybox image on the node, and
measures, observing the node itself (the nftables tables in each pod's network namespace,
read over netlink every millisecond):

* run created -> the NetworkBlackhole's table present in the target pod's namespace;
* Stop All (ChaosSwitch `default` patched enabled=false) -> the table gone;
* the same fault applied and removed by the agent's own fault layer
  (`shakeout.agent.node.faults`, in this process) and by a bare `nsenter nft -f`: the
  baseline, measured in the same run;
* the agent's resident memory and CPU share (daemon and keeper, from /proc) idle and while
  holding PODS x ATTACKS faults (one run of ATTACKS PacketLoss attacks on every pod, one
  nftables table each; default 3 then 5: 120 and 200 faults on 40 pods).

Prints Markdown tables; the sandbox goes down at the end (also on failure) and the host is
compared with its state before.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from lifecycle import Watcher, start_operator  # bench/, beside this script
from procfs import cpu_seconds, rss_mib  # bench/, beside this script
from shakeout.agent.node import faults, nft
from shakeout.agent.node.locate import PodRef, RuntimeLocator
from shakeout.api.attacks import AttackType, Direction
from shakeout.sandbox import realnode
from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox
from shakeout.sandbox.hoststate import HostState
from stats import pct

REPO = Path(__file__).resolve().parents[1]
NS = "nodebench"
GROUP, VERSION = "shakeout.dev", "v1alpha1"
POLL = 0.001  # seconds between two reads of a namespace's tables

# -- nftables tables over netlink, in a pod's network namespace ------------------------------

_CLONE_NEWNET = 0x40000000
_NETLINK_NETFILTER = 12
_NFT_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NFTA_TABLE_NAME = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def netlink_in(netns: str) -> socket.socket:
    """A netfilter netlink socket of the namespace `netns` (made in a thread that entered it:
    a socket belongs to the namespace it was created in, wherever it is used)."""
    made: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            target = os.open(netns, os.O_RDONLY)
            try:
                _setns(target)  # this thread only; it ends right after
            finally:
                os.close(target)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER))
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            made.append(err)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class Tables:
    """The nftables tables of one network namespace, read with one netlink dump."""

    def __init__(self, netns: str) -> None:
        self.sock = netlink_in(netns)
        self.sock.bind((0, 0))
        self.seq = 0

    def names(self) -> list[str]:
        self.seq += 1
        header = struct.pack("=IHHII", 20, _NFT_GETTABLE, _NLM_F_REQUEST | _NLM_F_DUMP, self.seq, 0)
        self.sock.send(header + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0))
        names: list[str] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_DONE:
                    return names
                if kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        raise OSError(-code, "nftables dump")
                    return names
                at = offset + 20  # nlmsghdr, nfgenmsg
                while at + 4 <= offset + length:
                    size, attr = struct.unpack_from("=HH", data, at)
                    if size < 4:
                        break
                    if attr & 0x3FFF == _NFTA_TABLE_NAME:
                        names.append(data[at + 4 : at + size].rstrip(b"\0").decode())
                    at += (size + 3) & ~3
                offset += (length + 3) & ~3

    def shakeout(self) -> int:
        return sum(1 for name in self.names() if name.startswith("shakeout_"))

    def close(self) -> None:
        self.sock.close()


def until(predicate: Callable[[], bool], timeout: float = 60) -> float:
    """Poll every POLL s; the perf_counter time the predicate first held."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError("not within the timeout")
        time.sleep(POLL)


# -- the cluster ------------------------------------------------------------------------------


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    # No readiness probe: a blackholed pod stays Ready, so every run finds its target.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "nodeSelector": {realnode.LABEL: "true"},
            "tolerations": [{"key": realnode.LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": realnode.HTTPD_IMAGE,
                    "imagePullPolicy": "Never",
                    "securityContext": {"runAsUser": 65534, "runAsNonRoot": True},
                }
            ],
        },
    }


def experiment(name: str, app: str, count: int, attacks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": app}}, "limit": {"count": count}},
            "attacks": attacks,
        },
    }


def start_run(custom: client.CustomObjectsApi, exp: str) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExperimentRun",
        "metadata": {"generateName": f"{exp}-", "namespace": NS},
        "spec": {"experimentRef": {"name": exp}},
    }
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, "experimentruns", body)
    return str(created["metadata"]["name"])


def set_switch(custom: client.CustomObjectsApi, enabled: bool) -> None:
    custom.patch_cluster_custom_object(
        GROUP, VERSION, "chaosswitches", "default", {"spec": {"enabled": enabled}}
    )


def wait_idle(custom: client.CustomObjectsApi, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        switch = custom.get_cluster_custom_object(GROUP, VERSION, "chaosswitches", "default")
        if not (switch.get("status") or {}).get("activeRun"):
            return
        time.sleep(0.1)
    raise TimeoutError("a run stayed active")


def start_agent(box: Sandbox, work: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(box.kubeconfig())}
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "shakeout"),
            "agent",
            f"--node={realnode.NAME}",
            "--locator=runtime",
            f"--journal={work / 'agent-journal.json'}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    coordination = client.CoordinationV1Api()
    for _ in range(600):
        if agent.poll() is not None:
            sys.exit(f"the agent exited:\n{(work / 'agent.log').read_text()[-3000:]}")
        with contextlib.suppress(client.ApiException):
            lease = coordination.read_namespaced_lease(
                f"shakeout-agent-{realnode.NAME}", "shakeout-system"
            )
            if lease.spec.holder_identity:
                return agent
        time.sleep(0.2)
    sys.exit("the agent never took its Lease")


def ready_pods(core: client.CoreV1Api, app: str) -> list[Any]:
    return [
        p
        for p in core.list_namespaced_pod(NS, label_selector=f"app={app}").items
        if p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def tables_of(pods: list[Any]) -> list[Tables]:
    locator = RuntimeLocator()
    return [Tables(locator.locate(PodRef(NS, p.metadata.name, p.metadata.uid)).netns) for p in pods]


# -- the agent's footprint from /proc ----------------------------------------------------------


def family(pid: int) -> list[int]:
    """pid and its descendants (the agent daemon, its keeper, stress or tools running)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def footprint(agent: int, seconds: float) -> dict[str, float]:
    """RSS (max over the window) and CPU share (of one core) of the daemon and its keeper."""
    keeper = [p for p in family(agent) if p != agent and b"keeper" in cmdline(p)]
    start_cpu = {p: cpu_seconds(p) for p in (agent, *keeper)}
    began = time.perf_counter()
    rss: dict[str, float] = {"daemon": 0.0, "keeper": 0.0}
    while time.perf_counter() - began < seconds:
        rss["daemon"] = max(rss["daemon"], rss_mib(agent))
        rss["keeper"] = max(rss["keeper"], sum(rss_mib(p) for p in keeper))
        time.sleep(0.5)
    wall = time.perf_counter() - began
    daemon_cpu = cpu_seconds(agent) - start_cpu[agent]
    keeper_cpu = sum(cpu_seconds(p) - start_cpu[p] for p in keeper)
    return {
        "daemon_rss": rss["daemon"],
        "keeper_rss": rss["keeper"],
        "daemon_cpu": daemon_cpu / wall,
        "keeper_cpu": keeper_cpu / wall,
    }


# -- the measurements --------------------------------------------------------------------------


def baseline(target: Any, tables: Tables, reps: int) -> tuple[list[float], ...]:
    """The same fault through the agent's fault layer, and through a bare nsenter nft."""
    import asyncio

    located = RuntimeLocator().locate(PodRef(NS, target.metadata.name, target.metadata.uid))
    layer_on, layer_off, bare_on, bare_off = [], [], [], []
    for i in range(reps + 1):
        fault_id = f"bench/{i}/{target.metadata.uid}"
        began = time.perf_counter()
        record = asyncio.run(faults.apply(fault_id, AttackType.NETWORK_BLACKHOLE, {}, located))
        on = until(lambda: tables.shakeout() == 1)
        began_off = time.perf_counter()
        asyncio.run(faults.rollback(AttackType.NETWORK_BLACKHOLE, record))
        off = until(lambda: tables.shakeout() == 0)
        script = nft.ruleset(nft.table_name(fault_id), Direction.BOTH, 100)
        argv = ["nsenter", f"--net={located.netns}", "--", "nft"]
        bare = time.perf_counter()
        subprocess.run([*argv, "-f", "-"], input=script.encode(), check=True)
        bare_seen = until(lambda: tables.shakeout() == 1)
        bare_del = time.perf_counter()
        table = nft.table_name(fault_id)
        subprocess.run([*argv, "delete", "table", "inet", table], check=True)
        bare_gone = until(lambda: tables.shakeout() == 0)
        if i > 0:  # the first, not counted: imports and page cache
            layer_on.append(on - began)
            layer_off.append(off - began_off)
            bare_on.append(bare_seen - bare)
            bare_off.append(bare_gone - bare_del)
    return layer_on, layer_off, bare_on, bare_off


def first_marks(
    runs: Watcher, attacks: Watcher, name: str, began: float, marks: dict[str, list[float]]
) -> None:
    """From the events seen so far: when each step of the run was first seen after began."""
    seen: dict[str, float] = {}
    while not runs.events.empty():
        at, body = runs.events.get_nowait()
        phase = (body.get("status") or {}).get("phase")
        if body["metadata"]["name"] == name and phase:
            seen.setdefault(f"run {phase} (bench's watch)", at)
    while not attacks.events.empty():
        at, body = attacks.events.get_nowait()
        if body["spec"]["runName"] != name:
            continue
        seen.setdefault("NodeAttack created (bench's watch)", at)
        if (body.get("status") or {}).get("phase") == "Applied":
            seen.setdefault("NodeAttack Applied (the agent's report)", at)
    for label, at in seen.items():
        marks.setdefault(label, []).append(at - began)


def first_fault_and_stop(
    custom: client.CustomObjectsApi, tables: Tables, target_ip: str, reps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """run created -> table present; Stop All -> table gone; with the API events between."""
    attacks = Watcher(custom.list_cluster_custom_object, group=GROUP, version=VERSION,
                      plural="nodeattacks")  # fmt: skip
    switches = Watcher(custom.list_cluster_custom_object, group=GROUP, version=VERSION,
                       plural="chaosswitches")  # fmt: skip
    runs = Watcher(custom.list_namespaced_custom_object, group=GROUP, version=VERSION,
                   namespace=NS, plural="experimentruns")  # fmt: skip
    out: dict[str, list[float]] = {k: [] for k in ("first", "stop", "switch_seen", "canceled")}
    marks: dict[str, list[float]] = {}
    time.sleep(1)
    for i in range(reps + 1):
        wait_idle(custom)
        attacks.drain()
        runs.drain()
        began = time.perf_counter()
        name = start_run(custom, "one")
        returned = time.perf_counter()
        seen = until(lambda: tables.shakeout() == 1)
        if i == 0:
            # Once: the table is the fault (the host's connect to the pod fails).
            with socket.socket() as probe:
                probe.settimeout(0.5)
                assert probe.connect_ex((target_ip, 8080)) != 0, "blackholed pod answered"
        time.sleep(0.5)
        if i > 0:  # the first, not counted: the operator's and agent's first API calls
            first_marks(runs, attacks, name, began, marks)
            marks.setdefault("its create call returned (admission)", []).append(returned - began)
        switches.drain()
        runs.drain()
        stop = time.perf_counter()
        set_switch(custom, False)
        gone = until(lambda: tables.shakeout() == 0)
        switch_seen = switches.wait_for(lambda b: b["spec"].get("enabled") is False)
        done = runs.wait_for(
            lambda b, n=name: (
                b["metadata"]["name"] == n and (b.get("status") or {}).get("phase") == "CANCELED"
            )
        )
        set_switch(custom, True)
        if i > 0:
            out["first"].append(seen - began)
            out["stop"].append(gone - stop)
            out["switch_seen"].append(switch_seen - stop)
            out["canceled"].append(done - stop)
    for w in (attacks, switches, runs):
        w.stop()
    return out, marks


def keeper_floor(
    pods: list[Any], attacks: int, tables: list[Tables], work: Path
) -> dict[str, float]:
    """The keeper's own work for PODS x ATTACKS faults, in this process (no daemon, no API,
    no pipe): FaultHolder.apply_batch as the daemon sends it (each attack's targets in
    batches of AgentOptions.apply_batch, one batch after another), then rollback_all; and
    its parts."""
    import asyncio

    from shakeout.agent.node.holder import FaultHolder
    from shakeout.agent.node.journal import Journal
    from shakeout.agent.node.locate import locate_many
    from shakeout.agent.node.system import HostPaths
    from shakeout.agent.options import AgentOptions

    locator = RuntimeLocator()
    journal = work / "bench-journal.json"
    holder = FaultHolder(Journal(journal), 3600.0, locator, HostPaths())
    refs = [PodRef(NS, p.metadata.name, p.metadata.uid) for p in pods]
    size = AgentOptions(node="-").apply_batch
    batches = [
        [
            {"id": f"bench/loss-{k}/{ref.uid}", "type": "PacketLoss",
             "parameters": {"percent": k + 1, "direction": "Ingress"}, "pod": ref.to_json()}
            for ref in refs[start : start + size]
        ]
        for k in range(attacks)
        for start in range(0, len(refs), size)
    ]  # fmt: skip
    faults = sum(len(batch) for batch in batches)

    async def apply_all() -> float:
        began = time.perf_counter()
        for batch in batches:
            results = await holder.apply_batch(batch)
            assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:1]
        return time.perf_counter() - began

    async def rollback_all() -> float:
        began = time.perf_counter()
        await holder.rollback_all("bench")
        return time.perf_counter() - began

    applied = asyncio.run(apply_all())
    assert sum(t.shakeout() for t in tables) == faults, "the keeper's faults not seen"
    began = time.perf_counter()
    holder.journal.save(holder.entries)
    save = time.perf_counter() - began
    began = time.perf_counter()
    for ref in refs:
        locator.locate(ref)
    locate = (time.perf_counter() - began) / len(refs)
    began = time.perf_counter()
    locate_many(locator, refs)
    locate_all = time.perf_counter() - began
    rolled = asyncio.run(rollback_all())
    assert sum(t.shakeout() for t in tables) == 0, "the keeper's faults not gone"
    journal.unlink(missing_ok=True)
    return {
        "faults": faults,
        "batch": size,
        "apply_each": applied / faults,
        "rollback_each": rolled / faults,
        "journal_save_full": save,
        "locate_each": locate,
        "locate_all": locate_all,
        "pods": len(refs),
    }


def run_phase(custom: client.CustomObjectsApi, name: str) -> str:
    run = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "experimentruns", name)
    return str((run.get("status") or {}).get("phase") or "")


def holding(
    custom: client.CustomObjectsApi, agent: int, tables: list[Tables], attacks: int, window: float
) -> dict[str, Any]:
    """One run of `attacks` PacketLoss attacks on every pod: the agent's footprint while it
    holds them all (or, when the run ends first, how many it held at most, and why)."""
    wanted = len(tables) * attacks
    wait_idle(custom)
    began = time.perf_counter()
    name = start_run(custom, f"many-{attacks}")
    first = until(lambda: any(t.shakeout() for t in tables), timeout=120)
    peak, peak_at, peak_rss = 0, began, 0.0
    while True:
        held_now = sum(t.shakeout() for t in tables)
        if held_now > peak:
            peak, peak_at = held_now, time.perf_counter()
            peak_rss = rss_mib(agent) + sum(rss_mib(p) for p in family(agent) if p != agent)
        if held_now == wanted:
            break
        if run_phase(custom, name) in ("FAILED", "CANCELED", "COMPLETED"):
            break
        time.sleep(0.05)
    result: dict[str, Any] = {
        "faults": wanted,
        "peak": peak,
        "first": first - began,
        "all": peak_at - began,
        "peak_rss": peak_rss,
    }
    if peak == wanted:
        time.sleep(2)
        result["held"] = footprint(agent, window)
        stop = time.perf_counter()
        set_switch(custom, False)
        gone = until(lambda: sum(t.shakeout() for t in tables) == 0, timeout=300)
        result["all_gone"] = gone - stop
        set_switch(custom, True)
    else:
        run = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "experimentruns", name)
        status = run.get("status") or {}
        result["ended"] = f"{status.get('phase')} {status.get('reason')}: {status.get('message')}"
        until(lambda: sum(t.shakeout() for t in tables) == 0, timeout=300)
    wait_idle(custom)
    return result


def ms(values: list[float], q: float | None = None) -> str:
    value = statistics.median(values) if q is None else pct(values, q)
    return f"{value * 1000:.0f} ms"


@contextlib.contextmanager
def real_node_sandbox(work: Path) -> Iterator[Sandbox]:
    before = HostState.capture()
    box = Sandbox(work / "sandbox")
    try:
        box.up(log=lambda m: print(f"[sandbox] {m}", file=sys.stderr), real_node=True)
        yield box
    finally:
        box.down(log=lambda m: print(f"[sandbox] {m}", file=sys.stderr))
        diff = before.differences(HostState.capture(), relevant=realnode.is_ours)
        print(f"[sandbox] host after down: {diff or 'restored'}", file=sys.stderr)


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    n_pods = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    sizes = [int(a) for a in sys.argv[3:]] or [3, 5]  # attacks per pod of each holding run
    window = 20.0
    if os.geteuid() != 0:
        sys.exit("the real node needs root: sudo make bench-real-node")
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    work = cache_root() / f"sandbox-nodebench-{checkout}"
    work.mkdir(parents=True, exist_ok=True)
    operator = agent = None
    opened: list[Tables] = []
    with real_node_sandbox(work) as box:
        try:
            config.load_kube_config(config_file=str(box.kubeconfig()))
            core, custom = client.CoreV1Api(), client.CustomObjectsApi()
            for path in ("crds", "rbac"):
                box.kubectl("apply", "-k", str(REPO / "deploy" / path))
            box.kubectl("wait", "--for=condition=Established", "crd", "--all")
            box.kubectl("apply", "-k", str(REPO / "deploy" / "sandbox"))
            box.kubectl("create", "namespace", NS)
            operator = start_operator(box, work / "operator.log", [])
            agent = start_agent(box, work)
            pods = [pod("one", {"app": "one"})]
            pods += [pod(f"web-{i}", {"app": "web"}) for i in range(n_pods)]
            blackhole = {"name": "blackhole", "type": "NetworkBlackhole", "durationSeconds": 3600}
            manifest = [*pods, experiment("one", "one", 1, [blackhole])]
            for size in sizes:
                loss = [
                    {"name": f"loss-{k}", "type": "PacketLoss", "durationSeconds": 3600,
                     "packetLoss": {"percent": k + 1, "direction": "Ingress"}}
                    for k in range(size)
                ]  # fmt: skip
                manifest.append(experiment(f"many-{size}", "web", n_pods, loss))
            box.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(manifest))
            box.kubectl("wait", "pod", "--all", "-n", NS, "--for=condition=Ready",
                        "--timeout=300s")  # fmt: skip
            (one,) = ready_pods(core, "one")
            one_tables = tables_of([one])[0]
            opened.append(one_tables)
            base = baseline(one, one_tables, reps)
            timed, marks = first_fault_and_stop(custom, one_tables, one.status.pod_ip, reps)
            report_latency(reps, base, timed, marks)
            web_tables = tables_of(ready_pods(core, "web"))
            opened.extend(web_tables)
            idle = footprint(agent.pid, window)
            floor = keeper_floor(ready_pods(core, "web"), sizes[0], web_tables, work)
            print(
                f"keeper floor, {floor['faults']} faults in this process, batches of "
                f"{floor['batch']}: apply {floor['apply_each'] * 1000:.1f} ms a fault, "
                f"rollback_all {floor['rollback_each'] * 1000:.1f} ms a fault (locate "
                f"{floor['locate_each'] * 1000:.1f} ms a pod one by one, "
                f"{floor['locate_all'] * 1000:.1f} ms for all {floor['pods']} in one pass; "
                f"one journal save at {floor['faults']} faults "
                f"{floor['journal_save_full'] * 1000:.1f} ms)",
                flush=True,
            )
            held = [holding(custom, agent.pid, web_tables, size, window) for size in sizes]
            report_footprint(idle, held)
        finally:
            for t in opened:
                t.close()
            for proc in (agent, operator):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=60)


def report_latency(
    reps: int,
    base: tuple[list[float], ...],
    timed: dict[str, list[float]],
    marks: dict[str, list[float]],
) -> None:
    layer_on, layer_off, bare_on, bare_off = base
    print(f"| figure (real node, {reps} runs) | p50 | p99 | p50 / baseline p50 |")
    print("|---|---|---|---|")
    rows = (
        ("baseline: NetworkBlackhole applied by the agent's fault layer", layer_on, layer_on),
        ("baseline: removed by the agent's fault layer", layer_off, layer_off),
        ("bare `nsenter nft -f` (table seen)", bare_on, layer_on),
        ("bare `nsenter nft delete table` (table gone)", bare_off, layer_off),
        *(
            (f"run created -> {label}", values, layer_on)
            for label, values in sorted(marks.items(), key=lambda m: statistics.median(m[1]))
        ),
        ("**run created -> nft table in the pod's netns**", timed["first"], layer_on),
        ("Stop All -> ChaosSwitch event seen (bench's watch)", timed["switch_seen"], layer_off),
        ("**Stop All -> nft table gone**", timed["stop"], layer_off),
        ("Stop All -> run CANCELED", timed["canceled"], layer_off),
    )
    for label, values, floor in rows:
        ratio = statistics.median(values) / statistics.median(floor)
        print(f"| {label} | {ms(values)} | {ms(values, 0.99)} | {ratio:.1f}x |")
    print(flush=True)


def report_footprint(idle: dict[str, float], held: list[dict[str, Any]]) -> None:
    full = [h for h in held if "held" in h]
    print("| agent | idle | " + " | ".join(f"holding {h['faults']} faults" for h in full) + " |")
    print("|---|---|" + "---|" * len(full))
    for key, label, unit in (
        ("daemon_rss", "daemon RSS", "MiB"),
        ("keeper_rss", "keeper RSS", "MiB"),
        ("daemon_cpu", "daemon CPU (share of one core)", "%"),
        ("keeper_cpu", "keeper CPU (share of one core)", "%"),
    ):
        scale = 100 if unit == "%" else 1
        cells = [f"{idle[key] * scale:.1f} {unit}"]
        cells += [f"{h['held'][key] * scale:.1f} {unit}" for h in full]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for h in held:
        line = (
            f"{h['faults']} faults wanted: first after {h['first'] * 1000:.0f} ms, "
            f"{h['peak']} held {h['all']:.2f} s after the run's creation "
            f"(daemon + keeper RSS then {h['peak_rss']:.1f} MiB)"
        )
        if "all_gone" in h:
            line += f"; Stop All -> all gone after {h['all_gone'] * 1000:.0f} ms"
        else:
            line += f"; the run ended first: {h['ended']}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
