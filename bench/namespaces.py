"""Concurrency by namespace: many teams' runs at once, and Stop All over all of them.

Usage: .venv/bin/python bench/namespaces.py [--namespaces N] [--targets N] [--rounds R]
Starts its own sandbox and a real `shakeout operator`, with the ChaosSwitch's
spec.concurrency: Namespace. Each of N namespaces holds a Deployment of --targets kwok
pods and an Experiment that scales it to 0 (every pod a target). Measured, R rounds:

  alone: one run by itself (namespace ns-0): run created -> its scale applied, and Stop
    All -> its scale rolled back. The baseline, in the same sandbox and the same run.
  together: N runs created at once, one per namespace: each run's created -> its scale
    applied (time to first fault); then Stop All -> each run's scale rolled back, and
    -> the last of them (every run's faults gone).

Prints a Markdown table: p50/p99 of each figure and its ratio to the alone baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from lifecycle import REPO, Watcher, kubectl, set_switch, start_operator
from shakeout.sandbox.cluster import Sandbox
from stats import pct

GROUP, VERSION = "shakeout.dev", "v1alpha1"
APP = "web"


def objects(namespace: str, targets: int) -> list[dict[str, Any]]:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": namespace},
        "spec": {
            "replicas": targets,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    experiment = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": APP, "namespace": namespace},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": APP}}},
            "attacks": [
                {
                    "name": "scale",
                    "type": "ScaleWorkload",
                    "durationSeconds": 3600,
                    "scaleWorkload": {
                        "workload": {"kind": "Deployment", "name": APP},
                        "replicas": 0,
                    },
                }
            ],
        },
    }
    return [deployment, experiment]


def create_run(custom: client.CustomObjectsApi, namespace: str) -> tuple[str, float, float]:
    """The run's name, when its create was sent and how long the create took (the
    admission webhooks' part of the first fault)."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExperimentRun",
        "metadata": {"generateName": f"{APP}-", "namespace": namespace},
        "spec": {"experimentRef": {"name": APP}},
    }
    began = time.perf_counter()
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "experimentruns", body
    )
    return str(created["metadata"]["name"]), began, time.perf_counter() - began


def wait_each(
    watcher: Watcher, namespaces: list[str], replicas: int, timeout: float = 120
) -> dict[str, float]:
    """When each namespace's Deployment was first seen with spec.replicas == `replicas`."""
    seen: dict[str, float] = {}
    deadline = time.perf_counter() + timeout
    while len(seen) < len(namespaces):
        at, body = watcher.events.get(timeout=max(0.01, deadline - time.perf_counter()))
        namespace = body["metadata"]["namespace"]
        if (
            namespace in namespaces
            and namespace not in seen
            and body["spec"]["replicas"] == replicas
        ):
            seen[namespace] = at
    return seen


def wait_ready(
    apps: client.AppsV1Api, core: client.CoreV1Api, namespaces: list[str], targets: int
) -> None:
    """Every Deployment settled at `targets` Running and Ready pods, none of them deleting
    (the last round's scale undone: a run's blast radius takes only such pods)."""
    for namespace in namespaces:
        while True:
            d = apps.read_namespaced_deployment(APP, namespace)
            s = d.status
            settled = (
                s.observed_generation == d.metadata.generation
                and s.replicas == s.ready_replicas == targets
            )
            if settled and attackable(core, namespace) == targets:
                break
            time.sleep(0.2)


def attackable(core: client.CoreV1Api, namespace: str) -> int:
    return sum(
        1
        for p in core.list_namespaced_pod(namespace, label_selector=f"app={APP}").items
        if not p.metadata.deletion_timestamp
        and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )


def wait_idle(custom: client.CustomObjectsApi) -> None:
    """No run holds a turn (every run of the last round ended)."""
    while True:
        switch = custom.get_cluster_custom_object(GROUP, VERSION, "chaosswitches", "default")
        status = switch.get("status") or {}
        if not status.get("activeRun") and not status.get("activeRuns"):
            return
        time.sleep(0.1)


@dataclass
class Apis:
    custom: client.CustomObjectsApi
    apps: client.AppsV1Api
    core: client.CoreV1Api
    # Every Deployment named APP, in every namespace.
    deployments: Watcher


@dataclass
class Figures:
    alone_fault: list[float] = field(default_factory=list)
    alone_stop: list[float] = field(default_factory=list)
    together_fault: list[float] = field(default_factory=list)
    together_stop: list[float] = field(default_factory=list)
    together_last: list[float] = field(default_factory=list)
    alone_admitted: list[float] = field(default_factory=list)
    together_admitted: list[float] = field(default_factory=list)


def one_round(
    apis: Apis, namespaces: list[str], targets: int
) -> tuple[list[float], list[float], list[float]]:
    """The runs of `namespaces` at once: first fault per run, Stop All -> rolled back per
    run, and each run's create (admitted)."""
    wait_idle(apis.custom)
    wait_ready(apis.apps, apis.core, namespaces, targets)
    apis.deployments.drain()
    with ThreadPoolExecutor(len(namespaces)) as pool:
        sent = pool.map(lambda ns: create_run(apis.custom, ns), namespaces)
        created = dict(zip(namespaces, sent, strict=True))
    applied = wait_each(apis.deployments, namespaces, 0)
    first_fault = [applied[ns] - created[ns][1] for ns in namespaces]
    time.sleep(0.3)
    apis.deployments.drain()
    began = time.perf_counter()
    set_switch(apis.custom, False)
    restored = wait_each(apis.deployments, namespaces, targets)
    set_switch(apis.custom, True)
    admitted = [created[ns][2] for ns in namespaces]
    return first_fault, [restored[ns] - began for ns in namespaces], admitted


def measure(box: Sandbox, log: Path, args: argparse.Namespace, extra: list[str]) -> Figures:
    namespaces = [f"ns-{i}" for i in range(args.namespaces)]
    config.load_kube_config(config_file=str(box.kubeconfig()))
    custom = client.CustomObjectsApi()
    for path in ("crds", "rbac"):
        kubectl(box, "apply", "-k", str(REPO / "deploy" / path))
    kubectl(box, "wait", "--for=condition=Established", "crd", "--all")
    kubectl(box, "apply", "-k", str(REPO / "deploy" / "sandbox"))
    for namespace in namespaces:
        kubectl(box, "create", "namespace", namespace)
        kubectl(box, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects(namespace, args.targets)))
    custom.patch_cluster_custom_object(
        GROUP, VERSION, "chaosswitches", "default", {"spec": {"concurrency": "Namespace"}}
    )
    operator = start_operator(box, log, extra)
    try:
        return rounds(args, namespaces, custom)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        if args.keep_log:
            args.keep_log.write_bytes(log.read_bytes())


def rounds(args: argparse.Namespace, namespaces: list[str], custom: Any) -> Figures:
    apps = client.AppsV1Api()
    watcher = Watcher(
        apps.list_deployment_for_all_namespaces, field_selector=f"metadata.name={APP}"
    )
    apis = Apis(custom, apps, client.CoreV1Api(), watcher)
    # One round of one run first, not counted: the operator's first calls open connections.
    one_round(apis, namespaces[:1], args.targets)
    figures = Figures()
    for _ in range(args.rounds):
        fault, stop, admitted = one_round(apis, namespaces[:1], args.targets)
        figures.alone_fault += fault
        figures.alone_stop += stop
        figures.alone_admitted += admitted
        fault, stop, admitted = one_round(apis, namespaces, args.targets)
        figures.together_admitted += admitted
        figures.together_fault += fault
        figures.together_stop += stop
        figures.together_last.append(max(stop))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-log", type=Path, help="copy the operator's log here")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        box.up(log=lambda _m: None)
        try:
            f = measure(box, Path(tmp) / "operator.log", args, extra)
        finally:
            box.down(log=lambda _m: None)
    n, t = args.namespaces, args.targets
    fault_floor = statistics.median(f.alone_fault)
    stop_floor = statistics.median(f.alone_stop)
    admitted_floor = statistics.median(f.alone_admitted)
    print(f"Namespace mode, {n} namespaces x {t} target pods, {args.rounds} rounds\n")
    print("| figure | n | p50 | p99 | p50 / alone p50 |")
    print("|---|---|---|---|---|")
    for label, values, floor in (
        ("alone: time to first fault (1 run, scale applied)", f.alone_fault, fault_floor),
        (
            f"together: time to first fault per run ({n} runs created at once)",
            f.together_fault,
            fault_floor,
        ),
        ("alone: the create admitted (webhooks)", f.alone_admitted, admitted_floor),
        (f"together: each create admitted ({n} at once)", f.together_admitted, admitted_floor),
        ("alone: Stop All -> its scale rolled back", f.alone_stop, stop_floor),
        (
            f"together: Stop All -> each run's scale rolled back ({n} runs)",
            f.together_stop,
            stop_floor,
        ),
        (
            f"together: Stop All -> every run's faults gone (the last of {n})",
            f.together_last,
            stop_floor,
        ),
    ):
        print(
            f"| {label} | {len(values)} | {statistics.median(values) * 1000:.0f} ms "
            f"| {pct(values, 0.99) * 1000:.0f} ms | {statistics.median(values) / floor:.1f}x |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
