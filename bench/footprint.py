"""Footprint: the operator's memory and CPU, idle and under churn, and growth over a soak.

Usage: .venv/bin/python bench/footprint.py [--experiments N] [--pods N] [--runs-per-minute R]
                                           [--minutes M]
Starts its own sandbox and a real `shakeout operator`, creates N Experiments and N pods
(kwok), then keeps R runs a minute going for M minutes (runs execute one at a time,
cluster-wide: each is a 1-second ScaleWorkload). Samples the operator's resident memory
(VmRSS) and CPU time from /proc every few seconds. Baseline, measured in the same run: a
bare Python process that imports kopf and the kubernetes client and does nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

from lifecycle import REPO, kubectl, start_operator
from procfs import cpu_seconds, rss_mib  # bench/, beside this script
from scale import create_pods, create_run
from shakeout.sandbox.cluster import Sandbox

GROUP, VERSION = "shakeout.dev", "v1alpha1"
NS = "churn"


def sample(pid: int, seconds: float, every: float = 2.0) -> tuple[list[float], float]:
    """RSS samples over `seconds`, and the CPU share used meanwhile (1.0 = one core)."""
    rss = []
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        rss.append(rss_mib(pid))
        time.sleep(every)
    return rss, (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def setup(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    args: argparse.Namespace,
    nodes: list[str],
) -> None:
    create_pods(core, NS, args.pods, nodes, app="bulk")  # creates the namespace too
    apps = client.AppsV1Api()
    apps.create_namespaced_deployment(
        NS,
        {
            "metadata": {"name": "churn"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "churn"}},
                "template": {
                    "metadata": {"labels": {"app": "churn"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            },
        },
    )

    def experiment(i: int) -> None:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "experiments",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Experiment",
                "metadata": {"name": f"e{i:04d}"},
                "spec": {
                    "blastRadius": {"selector": {"matchLabels": {"app": "churn"}}},
                    "attacks": [
                        {
                            "name": "scale",
                            "type": "ScaleWorkload",
                            "durationSeconds": 1,
                            "scaleWorkload": {
                                "workload": {"kind": "Deployment", "name": "churn"},
                                "replicas": 1,
                            },
                        }
                    ],
                },
            },
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(experiment, range(args.experiments)))
    # A loaded controller manager creates the churn's pods behind the 10,000 others:
    # a run before they run would be refused (its blast radius empty).
    deadline = time.monotonic() + 600
    while running_pods(core, "app=churn") < 2:
        if time.monotonic() > deadline:
            sys.exit("the churn Deployment's pods never ran")
        time.sleep(2)


def running_pods(core: client.CoreV1Api, selector: str) -> int:
    pods = core.list_namespaced_pod(NS, label_selector=selector).items
    return sum(1 for p in pods if p.status.phase == "Running")


def churn(
    custom: client.CustomObjectsApi, args: argparse.Namespace, pid: int, refused: list[str]
) -> tuple[list[float], float, int]:
    """Runs at the given rate for the given minutes; RSS samples and CPU share meanwhile
    (the runs admission refused are added to `refused`)."""
    interval = 60.0 / args.runs_per_minute
    end = time.monotonic() + args.minutes * 60
    rss: list[float] = []
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    started = 0
    while time.monotonic() < end:
        tick = time.monotonic()
        try:
            create_run(custom, NS, f"e{started % args.experiments:04d}")
            started += 1
        except client.ApiException as err:
            # Refused by admission (the previous run still executing on a loaded machine,
            # or the churn's pods between two scalings): this tick is skipped, and counted.
            if err.status != 403:
                raise
            refused.append(str(err.body)[:300])
        rss.append(rss_mib(pid))
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))
    return rss, (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--runs-per-minute", type=float, default=20)
    parser.add_argument("--minutes", type=float, default=3)
    args = parser.parse_args()
    bare = subprocess.Popen(
        [sys.executable, "-c", "import kopf, kubernetes, time; time.sleep(3600)"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        # One node more than the bulk pods fill (1,000 a node): room for the churn's pods.
        state = box.up(nodes=max(2, args.pods // 1000 + 1), log=lambda _m: None)
        operator = None
        try:
            config.load_kube_config(config_file=str(box.kubeconfig()))
            core, custom = client.CoreV1Api(), client.CustomObjectsApi()
            for path in ("crds", "rbac", "sandbox"):
                kubectl(box, "apply", "-k", str(REPO / "deploy" / path))
            operator = start_operator(box, Path(tmp) / "operator.log", [])
            time.sleep(3)
            baseline_rss = rss_mib(bare.pid)
            idle_empty, cpu_empty = sample(operator.pid, 20)
            setup(core, custom, args, state.nodes)
            time.sleep(10)  # the operator reports on every new Experiment
            idle_loaded, cpu_loaded = sample(operator.pid, 30)
            refused: list[str] = []
            soak, cpu_churn, runs = churn(custom, args, operator.pid, refused)
            after, _ = sample(operator.pid, 10)
        finally:
            bare.kill()
            if operator is not None:
                operator.terminate()
                operator.wait(timeout=60)
            box.down(log=lambda _m: None)

    quarter = max(1, len(soak) // 4)
    early, late = statistics.median(soak[:quarter]), statistics.median(soak[-quarter:])
    print(
        f"{args.experiments} Experiments, {args.pods} pods, {runs} runs over {args.minutes:g} min "
        f"({args.runs_per_minute:g}/min); {len(refused)} refused by admission"
        + (f" (the last: {refused[-1]})" if refused else "")
        + ".\n"
    )
    rows = [
        ("idle, no objects", idle_empty, cpu_empty),
        ("idle, objects created", idle_loaded, cpu_loaded),
        ("churn", soak, cpu_churn),
        ("after churn", after, None),
    ]
    print("| state | operator RSS (median) | max | CPU (1.0 = one core) |")
    print("|---|---|---|---|")
    print(f"| baseline: bare Python, kopf and kubernetes imported | {baseline_rss:.0f} MiB | | |")
    for label, values, cpu in rows:
        share = f"{cpu:.3f}" if cpu is not None else ""
        print(
            f"| {label} | {statistics.median(values):.0f} MiB | {max(values):.0f} MiB | {share} |"
        )
    print(
        f"\nGrowth over the soak: first quarter median {early:.1f} MiB, last quarter "
        f"{late:.1f} MiB: {(late - early) / early * 100:+.1f} %. "
        f"Operator RSS / baseline: {statistics.median(soak) / baseline_rss:.1f}x."
    )


if __name__ == "__main__":
    main()
