"""Time to first fault and Stop All latency, against a raw watch-then-patch baseline.

Usage: .venv/bin/python bench/lifecycle.py [REPETITIONS] [STOP_ALL_TARGETS]
Starts its own sandbox (in a temporary directory) and a real `shakeout operator`.
Prints a Markdown table: p50/p99 of each figure and its ratio to the baseline measured in
the same run. The baseline is the floor any operator pays: a client that watches one
object and patches another when it changes, timed from the change to the patch seen by a
second watch.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from shakeout.sandbox.cluster import Sandbox
from stats import pct  # bench/stats.py, beside this script

REPO = Path(__file__).resolve().parents[1]
NS = "bench"

# A benchmark stopped with `kill` (SIGTERM) ends as on an error: Python's default for
# SIGTERM skips the `finally` blocks that bring the benchmark's sandbox down. Every bench
# script imports this module.
signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


class Watcher:
    """Records, in a queue, the monotonic time of each event a watch delivers."""

    def __init__(self, fn: Any, **kwargs: Any) -> None:
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(fn, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Any, kwargs: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the sandbox going down ends the stream
            self._stream(fn, kwargs)

    def _stream(self, fn: Any, kwargs: dict[str, Any]) -> None:
        # Plain JSON, not the client's models: building a V1Pod per event would make this
        # process, on the same cores, a load on what it measures.
        for event in self._watch.stream(fn, deserialize=False, **kwargs):
            self.events.put((time.perf_counter(), event["object"]))

    def wait_for(self, predicate: Any, timeout: float = 30) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            at, body = self.events.get(timeout=max(0.01, deadline - time.perf_counter()))
            if predicate(body):
                return at

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def stop(self) -> None:
        """End the watch (at its next event): a finished measurement stops listening."""
        self._watch.stop()
        self.drain()


def kubectl(box: Sandbox, *args: str, stdin: str | None = None) -> str:
    return box.kubectl(*args, stdin=stdin).stdout


def baseline(core: client.CoreV1Api, reps: int) -> list[float]:
    """Watch ConfigMap `trigger`, patch `target` on each change; time change -> patch seen."""
    for name in ("trigger", "target"):
        core.create_namespaced_config_map(NS, {"metadata": {"name": name}, "data": {"n": "0"}})

    def reactor() -> None:
        with contextlib.suppress(Exception):  # the sandbox going down ends the stream
            react()

    def react() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_config_map, NS, field_selector="metadata.name=trigger"
        ):
            n = event["object"].data["n"]
            core.patch_namespaced_config_map("target", NS, {"data": {"n": n}})

    threading.Thread(target=reactor, daemon=True).start()
    seen = Watcher(
        core.list_namespaced_config_map, namespace=NS, field_selector="metadata.name=target"
    )
    time.sleep(1)
    out = []
    for i in range(1, reps + 1):
        seen.drain()
        began = time.perf_counter()
        core.patch_namespaced_config_map("trigger", NS, {"data": {"n": str(i)}})
        at = seen.wait_for(lambda b, i=i: (b.get("data") or {}).get("n") == str(i))
        out.append(at - began)
    return out


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }


def experiment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": name}}},
            "attacks": [
                {
                    "name": "scale",
                    "type": "ScaleWorkload",
                    "durationSeconds": 3600,
                    "scaleWorkload": {
                        "workload": {"kind": "Deployment", "name": name},
                        "replicas": 0,
                    },
                }
            ],
        },
    }


def wait_idle(custom: client.CustomObjectsApi) -> None:
    while True:
        switch = custom.get_cluster_custom_object(
            "shakeout.dev", "v1alpha1", "chaosswitches", "default"
        )
        if not (switch.get("status") or {}).get("activeRun"):
            return
        time.sleep(0.1)


def run_once(custom: client.CustomObjectsApi, exp: str) -> str:
    body = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {"generateName": f"{exp}-", "namespace": NS},
        "spec": {"experimentRef": {"name": exp}},
    }
    created = custom.create_namespaced_custom_object(
        "shakeout.dev", "v1alpha1", NS, "experimentruns", body
    )
    return str(created["metadata"]["name"])


def set_switch(custom: client.CustomObjectsApi, enabled: bool) -> None:
    custom.patch_cluster_custom_object(
        "shakeout.dev", "v1alpha1", "chaosswitches", "default", {"spec": {"enabled": enabled}}
    )


def start_operator(box: Sandbox, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    # The operator's namespace (its runs' rollback records), as deploy/ creates it.
    box.kubectl("create", "namespace", "shakeout-system", check=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "KUBECONFIG": str(box.kubeconfig()),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    with log.open("wb") as out:
        operator = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "shakeout"),
                "operator",
                f"--liveness=http://127.0.0.1:{port}/healthz",
                "--webhook-port=0",
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # Two minutes: importing kopf, the kubernetes client and pydantic takes 15-20 s of a
    # machine loaded ten times over its 2 cores.
    deadline = time.monotonic() + 120
    while True:
        if operator.poll() is not None:
            sys.exit(f"the operator exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                operator.kill()  # not left behind: the caller never gets to stop it
                sys.exit("the operator did not become healthy in 120 s")
            time.sleep(0.1)
    while box.kubectl(
        "get", "validatingwebhookconfiguration", "shakeout.dev", check=False
    ).returncode:
        time.sleep(0.2)
    return operator


def measure_first_fault(
    box: Sandbox,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    reps: int,
) -> list[float]:
    """Run created -> the workload's replicas changed (no warm-up, no checks)."""
    manifest = yaml.safe_dump_all([deployment("one", 1), experiment("one")])
    kubectl(box, "apply", "-f", "-", stdin=manifest)
    kubectl(box, "rollout", "status", "-n", NS, "deployment/one", "--timeout=60s")
    scaled = Watcher(
        apps.list_namespaced_deployment, namespace=NS, field_selector="metadata.name=one"
    )
    out = []
    # One run first, not counted: the operator's first API calls open connections.
    for i in range(reps + 1):
        wait_idle(custom)
        scaled.drain()
        began = time.perf_counter()
        name = run_once(custom, "one")
        at = scaled.wait_for(lambda b: b["spec"]["replicas"] == 0)
        if i > 0:
            out.append(at - began)
        custom.patch_namespaced_custom_object(
            "shakeout.dev", "v1alpha1", NS, "experimentruns", name, {"spec": {"cancel": True}}
        )
        scaled.wait_for(lambda b: b["spec"]["replicas"] == 1)
        # The scale-down deletes the pod, maybe after the run is over: the next run needs
        # the replacement to target, with the old one gone.
        while not settled(apps.read_namespaced_deployment("one", NS)) or (
            ready_pods(core, "one") != 1
        ):
            time.sleep(0.05)
    return out


def settled(deployment: Any) -> bool:
    """The Deployment's controller has caught up: every replica it wants exists and is ready."""
    status = deployment.status
    return bool(
        status.observed_generation == deployment.metadata.generation
        and status.replicas == status.ready_replicas == deployment.spec.replicas
    )


def ready_pods(core: client.CoreV1Api, app: str) -> int:
    return sum(
        1
        for p in core.list_namespaced_pod(NS, label_selector=f"app={app}").items
        if not p.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )


def measure_stop_all(
    *,
    box: Sandbox,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    reps: int,
    targets: int,
) -> tuple[list[float], list[float]]:
    """Switch flipped -> workload restored, and -> run CANCELED."""
    manifest = yaml.safe_dump_all([deployment("many", targets), experiment("many")])
    kubectl(box, "apply", "-f", "-", stdin=manifest)
    many = Watcher(
        apps.list_namespaced_deployment, namespace=NS, field_selector="metadata.name=many"
    )
    runs = Watcher(
        custom.list_namespaced_custom_object,
        group="shakeout.dev",
        version="v1alpha1",
        namespace=NS,
        plural="experimentruns",
    )
    restored_after, canceled_after = [], []
    for _ in range(reps):
        wait_idle(custom)
        # Every target pod back and Ready: a Deployment reports itself rolled out before
        # the pods of the last scale-down are gone.
        while ready_pods(core, "many") != targets:
            time.sleep(0.2)
        name = run_once(custom, "many")
        many.wait_for(lambda b: b["spec"]["replicas"] == 0)
        time.sleep(0.2)
        many.drain()
        runs.drain()
        began = time.perf_counter()
        set_switch(custom, False)
        restored = many.wait_for(lambda b: b["spec"]["replicas"] == targets)
        done = runs.wait_for(
            lambda b, n=name: (
                b["metadata"]["name"] == n and (b.get("status") or {}).get("phase") == "CANCELED"
            )
        )
        restored_after.append(restored - began)
        canceled_after.append(done - began)
        set_switch(custom, True)
    return restored_after, canceled_after


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    targets = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        box.up(log=lambda _m: None)
        operator = None
        try:
            config.load_kube_config(config_file=str(box.kubeconfig()))
            core, apps, custom = client.CoreV1Api(), client.AppsV1Api(), client.CustomObjectsApi()
            kubectl(box, "apply", "-k", str(REPO / "deploy" / "crds"))
            kubectl(box, "apply", "-k", str(REPO / "deploy" / "rbac"))
            kubectl(box, "wait", "--for=condition=Established", "crd", "--all")
            kubectl(box, "apply", "-k", str(REPO / "deploy" / "sandbox"))
            kubectl(box, "create", "namespace", NS)
            base = baseline(core, reps)
            operator = start_operator(box, Path(tmp) / "operator.log", sys.argv[3:])
            first_fault = measure_first_fault(box, core, apps, custom, reps)
            stop_all, canceled = measure_stop_all(
                box=box,
                core=core,
                apps=apps,
                custom=custom,
                reps=max(5, reps // 2),
                targets=targets,
            )
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(timeout=30)
            box.down(log=lambda _m: None)

    floor = statistics.median(base)
    print("| figure | n | p50 | p99 | p50 / baseline p50 |")
    print("|---|---|---|---|---|")
    for label, values in (
        ("baseline: watch one object, patch another (raw client)", base),
        ("time to first fault (run created -> scale applied, 1 target, no warm-up)", first_fault),
        (f"Stop All -> scale rolled back ({targets} target pods)", stop_all),
        (f"Stop All -> run CANCELED ({targets} target pods)", canceled),
    ):
        print(
            f"| {label} | {len(values)} | {statistics.median(values) * 1000:.0f} ms "
            f"| {pct(values, 0.99) * 1000:.0f} ms | {statistics.median(values) / floor:.1f}x |"
        )


if __name__ == "__main__":
    main()
