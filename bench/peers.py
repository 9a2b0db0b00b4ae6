"""Peers: shakeout beside a bare client, Chaos Mesh and Chaos Toolkit, on one sandbox.

Usage: .venv/bin/python bench/peers.py [--targets 1 100 1000] [--reps 3] [--full] [--plot PNG]
Needs `tools/peers/build.sh` (Chaos Mesh's chaos-controller-manager, built from its Go
module, with its CRDs; Chaos Toolkit and chaostoolkit-kubernetes in a venv of their own).
Starts its own sandbox (kwok nodes), a real `shakeout operator` and Chaos Mesh's
controller-manager beside it, outside the cluster, its webhooks registered by URL.

Every tool attacks the same Deployment (namespace `peers`, label app=target, N replicas),
one label selector, grace period 0:
  floor         a bare Python client: list, then 32 deletes at a time;
  shakeout      `kubectl create` of an ExperimentRun (one PodDelete attack);
  Chaos Mesh    `kubectl apply` of a PodChaos (action pod-kill, mode all);
  Chaos Toolkit `chaos run` of an experiment calling chaosk8s.pod.actions.terminate_pods.
A watcher (one pod watch, from the list's resourceVersion) records when each target got
its deletionTimestamp (or was deleted): the first fault and all targets attacked, timed
from just before the tool is started (the kubectl or chaos process included).

Stop latency, on a reversible attack both controllers run on kwok pods: Chaos Mesh's
PodChaos pod-failure (it patches each target's container image to a pause image; stopped
by deleting the PodChaos, which patches the images back: fault gone when every target has
its image again) and our NetworkIsolation (a label per target and one NetworkPolicy;
stopped by Stop All, the ChaosSwitch patched to enabled=false: fault gone when the policy
is deleted, the labels removed after it). The floor for both: a bare client patching the N
targets, 32 at a time. Chaos Toolkit has no stop (a `chaos run` ends its own actions) and
no NetworkChaos runs here (Chaos Mesh's needs its chaos-daemon on a real node).

Memory: each controller's peak resident set (VmRSS from /proc, sampled every 0.2 s) while it
attacks; for Chaos Toolkit, the `chaos` process's. CPU: the controller's CPU seconds over
its runs, per target attacked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from lifecycle import REPO, kubectl, set_switch, start_operator, wait_idle
from procfs import cpu_seconds, rss_mib  # bench/, beside this script
from shakeout.api.labels import ISOLATED
from shakeout.certs import make_serving_cert
from shakeout.sandbox.cluster import Sandbox

NS = "peers"
APP = "target"
SELECTOR = f"app={APP}"
GROUP, VERSION = "shakeout.dev", "v1alpha1"
PAUSE = "pause-for-pod-failure"  # Chaos Mesh's pod-failure image (POD_FAILURE_PAUSE_IMAGE)
Body = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Processes: resident memory and CPU from /proc


class PeakRss:
    """The peak VmRSS of a process (by pid, or whatever `pid()` returns) while in use."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self.peak = 0.0
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self._pid()
            if pid:
                self.peak = max(self.peak, rss_mib(pid))
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# The watcher


class PodTimes:
    """Watches the target pods from `resource_version`; records, per pod name in `names`, the
    first time an event satisfies `hit(type, pod)`."""

    def __init__(
        self,
        core: client.CoreV1Api,
        names: Iterable[str],
        resource_version: str,
        hit: Callable[[str, Body], bool],
    ) -> None:
        self.names = set(names)
        self.times: dict[str, float] = {}
        self.done = threading.Event()
        self._hit = hit
        self._watch = watch.Watch()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, args=(core, resource_version), daemon=True
        )
        self._thread.start()

    def _run(self, core: client.CoreV1Api, resource_version: str) -> None:
        """Watches until stopped, resumed from the last resourceVersion seen when the stream
        fails or ends: on a loaded machine the API server's watch cache may not yet have the
        list's resourceVersion ("too large resource version"), and a watch can time out."""
        while not self._stopped:
            try:
                for event in self._watch.stream(
                    core.list_namespaced_pod,
                    NS,
                    label_selector=SELECTOR,
                    resource_version=resource_version,
                    deserialize=False,
                    timeout_seconds=600,
                ):
                    at = time.perf_counter()
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        raise RuntimeError(event)  # ERROR: resume from where we were
                    body = event["object"]
                    resource_version = body["metadata"]["resourceVersion"]
                    name = body["metadata"]["name"]
                    if (
                        name in self.names
                        and name not in self.times
                        and self._hit(event["type"], body)
                    ):
                        self.times[name] = at
                        if len(self.times) == len(self.names):
                            self.done.set()
            except Exception:  # noqa: BLE001  (a failed stream is resumed, or the sandbox is gone)
                time.sleep(0.2)
            self._watch = watch.Watch()

    def wait(self, timeout: float) -> tuple[float, float]:
        """(first, last) hit times; raises if not every target was hit in time."""
        if not self.done.wait(timeout):
            self.stop()
            raise TimeoutError(f"{len(self.times)}/{len(self.names)} targets after {timeout} s")
        self.stop()
        return min(self.times.values()), max(self.times.values())

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def deleted(kind: str, pod: Body) -> bool:
    return kind == "DELETED" or bool(pod["metadata"].get("deletionTimestamp"))


def list_targets(core: client.CoreV1Api) -> tuple[list[Body], str]:
    """The live target pods (JSON, not the client's models: 5,000 V1Pods take seconds)."""
    response = core.list_namespaced_pod(NS, label_selector=SELECTOR, _preload_content=False)
    body = json.loads(response.data)
    live = [p for p in body["items"] if not p["metadata"].get("deletionTimestamp")]
    return live, body["metadata"]["resourceVersion"]


# ---------------------------------------------------------------------------------------------
# The workload


def deployment(replicas: int) -> Body:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {"containers": [{"name": "c", "image": "workload"}]},
            },
        },
    }


def wait_workload(core: client.CoreV1Api, replicas: int, timeout: float = 900) -> None:
    """Until exactly `replicas` target pods exist, all Running and Ready, none deleting, with
    their own image (no pod-failure left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = json.loads(
            core.list_namespaced_pod(NS, label_selector=SELECTOR, _preload_content=False).data
        )
        pods = body["items"]
        if len(pods) == replicas and all(
            not p["metadata"].get("deletionTimestamp")
            and p["status"].get("phase") == "Running"
            and p["spec"]["containers"][0]["image"] == "workload"
            and ISOLATED not in (p["metadata"].get("labels") or {})
            for p in pods
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Deployment did not settle at {replicas} pods")


# ---------------------------------------------------------------------------------------------
# The tools


@dataclass
class Peers:
    box: Sandbox
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    tmp: Path
    ctk_venv: Path
    operator: subprocess.Popen[bytes] | None = None
    chaos_mesh: subprocess.Popen[bytes] | None = None
    ctk_pid: int | None = None
    seq: int = 0
    ctk: subprocess.Popen[bytes] | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32))

    def name(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    # -- PodDelete, one per tool; each returns when the tool has been started --------------

    def floor_delete(self, _n: int) -> None:
        pods, _ = list_targets(self.core)
        list(
            self.pool.map(
                lambda p: self.core.delete_namespaced_pod(
                    p["metadata"]["name"], NS, grace_period_seconds=0, _preload_content=False
                ),
                pods,
            )
        )

    def shakeout_delete(self, n: int) -> None:
        self._shakeout_run(f"delete-{n}")

    def chaos_mesh_delete(self, _n: int) -> None:
        kubectl(self.box, "apply", "-f", "-", stdin=yaml.safe_dump(pod_chaos("pod-kill")))

    def ctk_delete(self, _n: int) -> None:
        experiment = self.tmp / "ctk-experiment.json"
        experiment.write_text(json.dumps(ctk_experiment()))
        env = {**os.environ, "KUBECONFIG": str(self.box.kubeconfig())}
        with (self.tmp / "ctk.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    str(self.ctk_venv / "bin" / "chaos"),
                    "--no-version-check",
                    "--settings",
                    str(self.tmp / "ctk-settings.yaml"),
                    "--log-file",
                    str(self.tmp / "chaostoolkit.log"),
                    "run",
                    "--journal-path",
                    str(self.tmp / "journal.json"),
                    str(experiment),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        self.ctk_pid = process.pid
        self.ctk = process

    def cleanup_delete(self, tool: str) -> None:
        """After a PodDelete: the tool done, its objects gone."""
        if tool == "shakeout":
            wait_idle(self.custom)
        elif tool == "Chaos Mesh":
            kubectl(self.box, "delete", "podchaos", "-n", NS, "--all", "--wait=true")
        elif tool == "Chaos Toolkit":
            assert self.ctk is not None
            if self.ctk.wait(timeout=600) != 0:
                sys.exit(f"chaos run failed: {(self.tmp / 'ctk.log').read_text()[-3000:]}")
            self.ctk_pid = None

    # -- the reversible attack --------------------------------------------------------------

    def floor_fail(self, _n: int) -> None:
        pods, _ = list_targets(self.core)
        self.floor_patch([p["metadata"]["name"] for p in pods], PAUSE)

    def floor_patch(self, names: list[str], image: str) -> None:
        body = {"spec": {"containers": [{"name": "c", "image": image}]}}
        list(
            self.pool.map(
                lambda n: self.core.patch_namespaced_pod(n, NS, body, _preload_content=False),
                names,
            )
        )

    def shakeout_isolate(self, n: int) -> None:
        self._shakeout_run(f"isolate-{n}")

    def shakeout_stop(self) -> None:
        set_switch(self.custom, False)

    def chaos_mesh_fail(self, _n: int) -> None:
        kubectl(self.box, "apply", "-f", "-", stdin=yaml.safe_dump(pod_chaos("pod-failure")))

    def chaos_mesh_stop(self) -> None:
        kubectl(self.box, "delete", "podchaos", "-n", NS, "--all", "--wait=false")

    def _shakeout_run(self, experiment: str) -> None:
        run = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExperimentRun",
            "metadata": {"name": self.name(experiment), "namespace": NS},
            "spec": {"experimentRef": {"name": experiment}},
        }
        kubectl(self.box, "create", "-f", "-", stdin=yaml.safe_dump(run))


def pod_chaos(action: str) -> Body:
    spec: Body = {
        "action": action,
        "mode": "all",
        "selector": {"namespaces": [NS], "labelSelectors": {"app": APP}},
    }
    if action == "pod-kill":
        spec["gracePeriod"] = 0
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "PodChaos",
        "metadata": {"name": action, "namespace": NS},
        "spec": spec,
    }


def ctk_experiment() -> Body:
    return {
        "version": "1.0.0",
        "title": "Delete the target pods",
        "description": "PodDelete with one label selector, grace period 0",
        "method": [
            {
                "type": "action",
                "name": "terminate-pods",
                "provider": {
                    "type": "python",
                    "module": "chaosk8s.pod.actions",
                    "func": "terminate_pods",
                    "arguments": {
                        "label_selector": SELECTOR,
                        "ns": NS,
                        "all": True,
                        "grace_period": 0,
                    },
                },
            }
        ],
    }


def shakeout_experiments(n: int) -> list[Body]:
    blast = {"selector": {"matchLabels": {"app": APP}}, "limit": {"count": n}}

    def one(name: str, attack: Body) -> Body:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"blastRadius": blast, "attacks": [attack]},
        }

    return [
        one(
            f"delete-{n}",
            {
                "name": "kill",
                "type": "PodDelete",
                "durationSeconds": 1,
                "podDelete": {"gracePeriodSeconds": 0},
            },
        ),
        one(
            f"isolate-{n}",
            {"name": "isolate", "type": "NetworkIsolation", "durationSeconds": 3600},
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Chaos Mesh's controller-manager, outside the cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_chaos_mesh(box: Sandbox, binary: Path, tmp: Path) -> subprocess.Popen[bytes]:
    """Chaos Mesh's controller-manager as its chart runs it, but on this machine: every
    controller and webhook on (the defaults), leader election off (one replica), the
    namespace-permission webhook off (SECURITY_MODE=false: we act as cluster admin), its
    mutating and validating PodChaos webhooks registered by URL with our own CA."""
    box.kubectl("create", "namespace", "chaos-mesh", check=False)
    cert = make_serving_cert(tmp / "chaos-mesh-certs", ("127.0.0.1",))
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(box.kubeconfig()),
        "NAMESPACE": "chaos-mesh",
        "CERTS_DIR": str(cert.certfile.parent),
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "ENABLE_LEADER_ELECTION": "false",
        "SECURITY_MODE": "false",
        "POD_FAILURE_PAUSE_IMAGE": PAUSE,
    }
    log = tmp / "chaos-mesh.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp
        )
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"Chaos Mesh exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        time.sleep(0.1)
    else:
        sys.exit(f"Chaos Mesh's webhook server did not start:\n{log.read_text()[-3000:]}")
    ca = b64encode(cert.cafile.read_bytes()).decode()
    rules = [
        {
            "apiGroups": ["chaos-mesh.org"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["podchaos"],
        }
    ]

    def hook(kind: str) -> Body:
        short = kind[0].lower()
        verb = "mutate" if kind == "Mutating" else "validate"
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": f"{kind}WebhookConfiguration",
            "metadata": {"name": f"chaos-mesh-{short}"},
            "webhooks": [
                {
                    "name": f"{short}podchaos.kb.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/{verb}-chaos-mesh-org-v1alpha1-podchaos",
                        "caBundle": ca,
                    },
                    "rules": rules,
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1", "v1beta1"],
                    "timeoutSeconds": 5,
                }
            ],
        }

    kubectl(
        box, "apply", "-f", "-", stdin=yaml.safe_dump_all([hook("Mutating"), hook("Validating")])
    )
    return process


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Row:
    """One tool at one size: samples of each figure."""

    first: list[float] = field(default_factory=list)
    all: list[float] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)  # stop -> fault gone
    marks: list[float] = field(default_factory=list)  # ours: stop -> every label removed
    rss: float = 0.0
    cpu_per_target: float | None = None


def attack_once(
    peers: Peers, n: int, start: Callable[[int], None], hit: Callable[[str, Body], bool]
) -> tuple[float, float] | None:
    pods, rv = list_targets(peers.core)
    assert len(pods) == n, (len(pods), n)
    times = PodTimes(peers.core, [p["metadata"]["name"] for p in pods], rv, hit)
    began = time.perf_counter()
    start(n)
    try:
        first, last = times.wait(timeout=max(120, n * 0.2))
    except TimeoutError as err:  # reported, left out of the figures; the bench goes on
        print(f"# {n} targets: {err}", file=sys.stderr)
        return None
    return first - began, last - began


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_deletes(  # noqa: PLR0917  (a benchmark's plain helper)
    peers: Peers, tool: str, start: Callable[[int], None], n: int, reps: int, pid: int | None
) -> Row:
    """PodDelete `reps` times. CPU: the controller's, or the `chaos` processes' (the only
    children this process reaps meanwhile)."""
    row = Row()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    children0 = children_cpu()
    watched = (lambda: peers.ctk_pid) if tool == "Chaos Toolkit" else (lambda: pid)
    with PeakRss(watched) as peak:
        for _ in range(reps):
            timed = attack_once(peers, n, start, deleted)
            if timed:
                row.first.append(timed[0])
                row.all.append(timed[1])
            peers.cleanup_delete(tool)
            wait_workload(peers.core, n)
    row.rss = peak.peak
    if pid:
        row.cpu_per_target = (cpu_seconds(pid) - cpu0) / (reps * n)
    elif tool == "Chaos Toolkit":
        row.cpu_per_target = (children_cpu() - children0) / (reps * n)
    return row


def networkpolicies(namespace: str) -> int:
    return len(client.NetworkingV1Api().list_namespaced_network_policy(namespace).items)


def measure_reversible(peers: Peers, tool: str, n: int, reps: int, pid: int | None) -> Row:
    row = Row()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start, faulted = {
        "floor": (peers.floor_fail, image_is(PAUSE)),
        "shakeout": (peers.shakeout_isolate, labelled),
        "Chaos Mesh": (peers.chaos_mesh_fail, image_is(PAUSE)),
    }[tool]
    with PeakRss(lambda: pid) as peak:
        for _ in range(reps):
            pods, _ = list_targets(peers.core)
            names = [p["metadata"]["name"] for p in pods]
            timed = attack_once(peers, n, start, lambda _k, p: faulted(p))
            if timed:
                row.first.append(timed[0])
                row.all.append(timed[1])
            if tool == "shakeout":  # the run has every target: wait for its Applied
                while not attack_applied(peers.custom):
                    time.sleep(0.05)
            _, rv = list_targets(peers.core)
            healed = PodTimes(peers.core, names, rv, lambda _k, p: not faulted(p))
            began = time.perf_counter()
            if tool == "floor":
                peers.floor_patch(names, "workload")
                _, last = healed.wait(600)
                row.gone.append(last - began)
            elif tool == "shakeout":
                peers.shakeout_stop()
                while networkpolicies(NS):
                    time.sleep(0.01)
                row.gone.append(time.perf_counter() - began)
                _, last = healed.wait(600)
                row.marks.append(last - began)
                wait_idle(peers.custom)
                set_switch(peers.custom, True)
            else:
                peers.chaos_mesh_stop()
                _, last = healed.wait(600)
                row.gone.append(last - began)
                kubectl(peers.box, "wait", "--for=delete", "podchaos/pod-failure", "-n", NS)
            wait_workload(peers.core, n)
    row.rss = peak.peak
    if pid:
        row.cpu_per_target = (cpu_seconds(pid) - cpu0) / (reps * n)
    return row


def image_is(image: str) -> Callable[[Body], bool]:
    return lambda pod: pod["spec"]["containers"][0]["image"] == image


def labelled(pod: Body) -> bool:
    return ISOLATED in (pod["metadata"].get("labels") or {})


def attack_applied(custom: client.CustomObjectsApi) -> bool:
    runs = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "experimentruns")["items"]
    return any(
        a.get("state") == "Applied"
        for r in runs
        if r["spec"]["experimentRef"]["name"].startswith("isolate-")
        and (r.get("status") or {}).get("phase") not in ("SUCCEEDED", "CANCELED", "FAILED")
        for a in (r.get("status") or {}).get("attacks") or []
    )


# ---------------------------------------------------------------------------------------------
# Output


def span(values: list[float]) -> str:
    if not values:
        return "—"
    p50 = statistics.median(values)
    if len(values) == 1:
        return f"{p50:.2f} s"
    return f"{p50:.2f} s ({min(values):.2f}-{max(values):.2f})"


def ratio(values: list[float], floor: list[float]) -> str:
    if not values or not floor:
        return "—"
    return f"{statistics.median(values) / statistics.median(floor):.1f}x"


DELETE_TOOLS = ["floor", "shakeout", "Chaos Mesh", "Chaos Toolkit"]
STOP_TOOLS = ["floor", "shakeout", "Chaos Mesh"]
LABELS = {
    ("delete", "floor"): "bare Python client (list, 32 deletes at a time)",
    ("delete", "shakeout"): "shakeout (`kubectl create` of an ExperimentRun, PodDelete)",
    ("delete", "Chaos Mesh"): "Chaos Mesh (`kubectl apply` of a PodChaos pod-kill)",
    ("delete", "Chaos Toolkit"): "Chaos Toolkit (`chaos run`, terminate_pods)",
    ("stop", "floor"): "bare Python client (32 image patches at a time, and back)",
    ("stop", "shakeout"): "shakeout NetworkIsolation, Stop All",
    ("stop", "Chaos Mesh"): "Chaos Mesh PodChaos pod-failure, PodChaos deleted",
}


def table(results: dict[tuple[int, str, str], Row], sizes: list[int]) -> str:
    lines = [
        "| targets | attack, tool | first fault p50 (min-max) | vs floor "
        "| all attacked p50 (min-max) | vs floor | stop -> fault gone p50 (min-max) | vs floor "
        "| peak RSS | CPU per target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for kind, tools in (("delete", DELETE_TOOLS), ("stop", STOP_TOOLS)):
            floor = results.get((n, kind, "floor"))
            for tool in tools:
                row = results.get((n, kind, tool))
                if row is None or floor is None:
                    continue
                gone = span(row.gone)
                if row.marks:
                    gone += f"; labels removed {span(row.marks)}"
                rss = f"{row.rss:.0f} MiB" if row.rss else "—"
                cpu = f"{row.cpu_per_target * 1000:.1f} ms" if row.cpu_per_target else "—"
                lines.append(
                    f"| {n:,} | {LABELS[kind, tool]} | {span(row.first)} "
                    f"| {ratio(row.first, floor.first)} | {span(row.all)} "
                    f"| {ratio(row.all, floor.all)} | {gone} | {ratio(row.gone, floor.gone)} "
                    f"| {rss} | {cpu} |"
                )
    return "\n".join(lines)


def plot(results: dict[tuple[int, str, str], Row], sizes: list[int], path: Path) -> None:
    """First fault (PodDelete) and stop latency against target count, one line per tool."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for tool in DELETE_TOOLS:
        xs = [
            n for n in sizes if (n, "delete", tool) in results and results[n, "delete", tool].first
        ]
        left.plot(
            xs,
            [statistics.median(results[n, "delete", tool].first) for n in xs],
            marker="o",
            label=tool,
        )
    for tool in STOP_TOOLS:
        xs = [n for n in sizes if (n, "stop", tool) in results and results[n, "stop", tool].gone]
        right.plot(
            xs,
            [statistics.median(results[n, "stop", tool].gone) for n in xs],
            marker="o",
            label=LABELS["stop", tool].split(" (")[0].replace(", ", ": "),
        )
    left.set_title("PodDelete: time to the first fault (p50)")
    right.set_title("Stop -> fault gone (p50)")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("targets")
        axes.set_ylabel("seconds")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"# plot written to {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------


def peer_dirs() -> dict[str, Path]:
    out = subprocess.run(
        ["bash", str(REPO / "tools" / "peers" / "build.sh"), "--print"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: Path(v) for k, v in (line.split("=", 1) for line in out.split())}


def main() -> None:  # noqa: PLR0912, PLR0915  (a benchmark script, top to bottom)
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--reps", type=int, default=3, help="runs per tool and size")
    parser.add_argument("--full", action="store_true", help="1, 100, 1,000 and 5,000 targets")
    parser.add_argument("--plot", type=Path, help="write a PNG of the latencies here")
    parser.add_argument("--no-stop", action="store_true", help="leave out the stop latency")
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=["shakeout", "chaos-mesh", "chaostoolkit"],
        default=["shakeout", "chaos-mesh", "chaostoolkit"],
        help="the tools beside the floor (all by default)",
    )
    args = parser.parse_args()
    sizes = sorted({*args.targets, *([1, 100, 1000, 5000] if args.full else [])})
    dirs = peer_dirs()
    binary = dirs["CHAOS_MESH_BIN"] / "chaos-controller-manager"
    want_cm, want_ctk = "chaos-mesh" in args.tools, "chaostoolkit" in args.tools
    if (want_cm and not binary.exists()) or (
        want_ctk and not (dirs["CTK_VENV"] / "bin" / "chaos").exists()
    ):
        sys.exit("build the peers first: bash tools/peers/build.sh")
    results: dict[tuple[int, str, str], Row] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        box = Sandbox(tmp / "sandbox")
        box.up(nodes=max(2, math.ceil(max(sizes) / 1000)), log=lambda _m: None)
        peers = None
        try:
            config.load_kube_config(config_file=str(box.kubeconfig()))
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = 32  # 32 requests in flight for the floor
            client.Configuration.set_default(configuration)
            core, custom = client.CoreV1Api(), client.CustomObjectsApi()
            for path in ("crds", "rbac", "sandbox"):
                kubectl(box, "apply", "-k", str(REPO / "deploy" / path))
            kubectl(box, "create", "namespace", NS)
            peers = Peers(box, core, custom, tmp, dirs["CTK_VENV"])
            peers.operator = start_operator(box, tmp / "operator.log", [])
            pids = {"shakeout": peers.operator.pid}
            if want_cm:
                # 3 MB of CRDs: too big for the client-side apply's last-applied annotation.
                kubectl(box, "apply", "--server-side", "-f", str(binary.parent / "crd.yaml"))
                peers.chaos_mesh = start_chaos_mesh(box, binary, tmp)
                pids["Chaos Mesh"] = peers.chaos_mesh.pid
            deletes = {"floor": peers.floor_delete}
            if "shakeout" in args.tools:
                deletes["shakeout"] = peers.shakeout_delete
            if want_cm:
                deletes["Chaos Mesh"] = peers.chaos_mesh_delete
            if want_ctk:
                deletes["Chaos Toolkit"] = peers.ctk_delete
            stops = [t for t in STOP_TOOLS if t in deletes]
            kubectl(box, "apply", "-f", "-", stdin=yaml.safe_dump(deployment(sizes[0])))
            for i, n in enumerate(sizes):
                kubectl(box, "apply", "-f", "-", stdin=yaml.safe_dump_all(shakeout_experiments(n)))
                kubectl(box, "scale", "-n", NS, "deployment", APP, f"--replicas={n}")
                wait_workload(core, n)
                print(f"# {n} targets Running", file=sys.stderr)
                for tool, start in deletes.items():
                    if i == 0:  # one run first, not counted: connections, caches
                        measure_deletes(peers, tool, start, n, 1, pids.get(tool))
                    row = measure_deletes(peers, tool, start, n, args.reps, pids.get(tool))
                    results[n, "delete", tool] = row
                    print(f"# {n} {tool} delete: {row}", file=sys.stderr)
                if args.no_stop:
                    continue
                for tool in stops:
                    if i == 0:
                        measure_reversible(peers, tool, n, 1, pids.get(tool))
                    row = measure_reversible(peers, tool, n, args.reps, pids.get(tool))
                    results[n, "stop", tool] = row
                    print(f"# {n} {tool} stop: {row}", file=sys.stderr)
                # The table so far: a run cut short still leaves its figures.
                print(table(results, sizes), file=sys.stderr)
        finally:
            if peers is not None:
                for process in (peers.operator, peers.chaos_mesh):
                    if process is not None:
                        process.terminate()
                        try:
                            process.wait(timeout=15)
                        except subprocess.TimeoutExpired:  # Chaos Mesh lingers on SIGTERM
                            process.kill()
                            process.wait()
                for log in ("operator.log", "chaos-mesh.log", "ctk.log"):
                    with contextlib.suppress(OSError):
                        (REPO / ".cache").mkdir(exist_ok=True)
                        (REPO / ".cache" / f"peers-{log}").write_bytes((tmp / log).read_bytes())
            box.down(log=lambda _m: None)

    print(
        f"Peers on one sandbox: {args.reps} runs per tool and size, the Deployment `{APP}` on "
        "kwok nodes, grace period 0 for every tool. p50 (min-max); ratios of p50s to the "
        "bare client measured in the same run.\n"
    )
    print(table(results, sizes))
    if args.plot:
        plot(results, sizes, args.plot)


if __name__ == "__main__":
    main()
