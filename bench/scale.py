"""Scale: big blast radii, Stop All over many targets, API cost per target, status size.

Usage: .venv/bin/python bench/scale.py [--pods-a N] [--pods-b N] [--targets N ...] [--reps R]
                                       [--repeat N] [--first-fault-reps N]
Starts its own sandbox and a real `shakeout operator`. Namespace scale-a holds the blast
radius' pods, scale-b as many again (6,000 pods over two namespaces by default; `make
bench-full` goes to 10,000 targets out of 10,000 in a 20,000-pod cluster): the targets
never leave scale-a, and its pods are all that a run may list. One kwok node per 1,000
pods, the pods placed on them by hand (kwok runs whatever is bound to its nodes, whatever
their allocatable pods say; the count per node is printed with the pods' start).

Each run is a NetworkIsolation of N target pods (a label per target and one policy), the
attack whose cost grows with the targets. Measured per N, next to the watch-then-patch
baseline of bench/lifecycle.py measured in the same run:
  time to first fault (run created -> first target labelled), to all N labelled, and
  the first fault alone over --first-fault-reps more runs (each stopped right after it);
  Stop All -> every target unlabelled and the policy gone, and -> run CANCELED;
  a bare client labelling the same number of pods, then unlabelling them, next to each
  run (what "all applied" is held against);
  API writes of the run per target (the API server's own request counters, for the
  kinds a run writes), request and response bytes, the largest status seen.
And blast radius resolution: the operator's own resolve_target_pods, timed in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

from lifecycle import REPO, Watcher, baseline, kubectl, set_switch, start_operator
from shakeout.api.experiment import Attack, BlastRadius
from shakeout.api.labels import ISOLATED
from shakeout.gather.targets import resolve_target_pods
from shakeout.kube import client as k8s
from shakeout.sandbox.cluster import Sandbox
from stats import pct

GROUP, VERSION = "shakeout.dev", "v1alpha1"
WRITES = {"POST", "PATCH", "PUT", "DELETE", "CREATE", "UPDATE"}
# What a run writes; the fake nodes' own lease and status traffic is left out.
RUN_RESOURCES = {"pods", "networkpolicies", "experimentruns", "chaosswitches", "events"}
METRIC = re.compile(r"^(\w+)\{(.*)\} ([0-9.e+-]+)$")
ATTACK = Attack.model_validate({"name": "isolate", "type": "NetworkIsolation"})


class ResumingWatcher(Watcher):
    """A Watcher whose stream is opened again when it ends or fails: a loaded API server
    closes watches, and a Watcher that silently stopped listening made a 20,000-pod run
    wait out its timeout. A reopened watch sends every matching object again (the marks
    are counted by name, the runs by state: no harm), later than they changed."""

    _stopped = False

    def _run(self, fn: Any, kwargs: dict[str, Any]) -> None:
        while not self._stopped:
            with contextlib.suppress(Exception):
                self._stream(fn, kwargs)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopped = True
        super().stop()


def api_counters(box: Sandbox) -> Counter[str]:
    """The API server's request count by verb and resource, and body bytes in and out."""
    counts: Counter[str] = Counter()
    for line in kubectl(box, "get", "--raw", "/metrics").splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("resource") not in RUN_RESOURCES:
            continue
        if name == "apiserver_request_total" and fields.get("verb", "").upper() in WRITES:
            counts[f"writes:{fields['resource']}"] += int(float(value))
        elif name in ("apiserver_response_sizes_sum", "apiserver_request_body_size_bytes_sum"):
            # Not watches: a watch's bytes are counted when it ends, whichever runs it saw
            # (this benchmark's own watch of the marks would be most of a run's figure).
            if fields.get("verb") != "WATCH":
                counts["bytes"] += int(float(value))
            # By kind of request too, printed with each run (stderr): what the bytes are.
            counts[f"bytes:{name.split('_')[1]}:{fields.get('verb')}:{fields['resource']}"] += int(
                float(value)
            )
    return counts


def create_pods(
    core: client.CoreV1Api, namespace: str, count: int, nodes: list[str], app: str = "scale"
) -> None:
    """A namespace with `count` pods labelled app=`app`, spread over the kwok nodes."""
    core.create_namespace({"metadata": {"name": namespace}})

    def one(i: int) -> None:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"p{i:05d}", "labels": {"app": app}},
                # Placed by hand: the scheduler is not what this measures.
                "spec": {
                    "nodeName": nodes[i % len(nodes)],
                    "containers": [{"name": "c", "image": "x"}],
                },
            },
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def all_running(core: client.CoreV1Api, namespace: str) -> bool:
    """Whether every pod of the namespace runs: one pod that does not is enough to say no
    (reading all 10,000 every second, as client objects, slowed their start)."""
    waiting = core.list_namespaced_pod(
        namespace, label_selector="app=scale", field_selector="status.phase!=Running", limit=1
    )
    return not waiting.items


def experiment(
    custom: client.CustomObjectsApi, namespace: str, targets: int, name: str = ""
) -> str:
    name = name or f"isolate-{targets}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "blastRadius": {
                "selector": {"matchLabels": {"app": "scale"}},
                "limit": {"count": targets},
            },
            "attacks": [{"name": ATTACK.name, "type": "NetworkIsolation", "durationSeconds": 3600}],
        },
    }
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "experiments", body)
    except client.ApiException as err:
        if err.status != 409:  # already there from an earlier repetition
            raise
    return name


def create_run(custom: client.CustomObjectsApi, namespace: str, experiment_name: str) -> str:
    """Press Run: create an ExperimentRun of the Experiment; returns the run's name."""
    created = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "experimentruns",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExperimentRun",
            "metadata": {"generateName": f"{experiment_name}-"},
            "spec": {"experimentRef": {"name": experiment_name}},
        },
    )
    return str(created["metadata"]["name"])


def wait_unmarked(core: client.CoreV1Api, namespace: str) -> None:
    """Until no pod carries an isolation mark. Every 0.2 s: the marks take seconds to go,
    and this benchmark's own lists must not swell the API bytes it reports for a run."""
    while core.list_namespaced_pod(namespace, label_selector=ISOLATED, limit=1).items:
        time.sleep(0.2)


def wait_policies_gone(namespace: str) -> None:
    """Until the isolation's NetworkPolicy is gone: the fault has ended. Polled rather than
    watched, a list is the plain truth (about 10 ms apart here)."""
    networking = client.NetworkingV1Api()
    while networking.list_namespaced_network_policy(namespace).items:
        time.sleep(0.01)


def measure_run(  # noqa: PLR0917  (a benchmark's plain helper)
    box: Sandbox,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    targets: int,
    name: str = "",
) -> dict[str, float]:
    label = ISOLATED
    # The previous run's marks are removed after it ends: start from none.
    wait_unmarked(core, namespace)
    marked = ResumingWatcher(core.list_namespaced_pod, namespace=namespace, label_selector=label)
    runs = ResumingWatcher(
        custom.list_namespaced_custom_object,
        group=GROUP,
        version=VERSION,
        namespace=namespace,
        plural="experimentruns",
    )
    time.sleep(0.5)
    exp = experiment(custom, namespace, targets, name)
    before = api_counters(box)
    began = time.perf_counter()
    name = create_run(custom, namespace, exp)
    labelled: set[str] = set()

    def marked_count(count: int) -> Any:
        def reached(body: dict[str, Any]) -> bool:
            if label in (body["metadata"].get("labels") or {}):
                labelled.add(body["metadata"]["name"])
            return len(labelled) >= count

        return reached

    first = marked.wait_for(marked_count(1), timeout=120)
    all_at = marked.wait_for(marked_count(targets), timeout=600) if targets > 1 else first
    runs.wait_for(
        lambda b: (
            b["metadata"]["name"] == name
            and any(
                a.get("state") == "Applied" for a in (b.get("status") or {}).get("attacks") or []
            )
        ),
        timeout=600,
    )
    time.sleep(0.5)
    marked.drain()
    runs.drain()
    stop = time.perf_counter()
    set_switch(custom, False)
    # The fault ends when the policy goes (first); the labels are cleaned up after it.
    wait_policies_gone(namespace)
    fault_gone = time.perf_counter()
    wait_unmarked(core, namespace)
    rolled_back = time.perf_counter()
    sizes: list[int] = []

    def canceled(body: dict[str, Any]) -> bool:
        sizes.append(len(json.dumps(body)))
        return (
            body["metadata"]["name"] == name
            and (body.get("status") or {}).get("phase") == "CANCELED"
        )

    canceled_at = runs.wait_for(canceled, timeout=600)
    marked.stop()
    runs.stop()
    time.sleep(1.0)  # the last events and status writes land in the counters
    after = api_counters(box)
    set_switch(custom, True)
    writes = sum(after[k] - before[k] for k in after if k.startswith("writes:"))
    final = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "experimentruns", name)
    return {
        "first_fault": first - began,
        "all_applied": all_at - began,
        "rolled_back": rolled_back - stop,
        "canceled": canceled_at - stop,
        "fault_gone": fault_gone - stop,
        "writes": writes,
        "writes_pods": after["writes:pods"] - before["writes:pods"],
        "bytes": after["bytes"] - before["bytes"],
        **{
            key: after[key] - before[key]
            for key in after
            if key.startswith("bytes:") and after[key] - before[key] > 0
        },
        "status_bytes": max([*sizes, len(json.dumps(final))]),
    }


def first_fault_samples(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    targets: int,
    reps: int,
) -> list[tuple[float, float, float]]:
    """Run created -> first target marked, `reps` times: enough runs for a p99 of the first
    fault alone. Each run is stopped (Stop All) as soon as its first target is marked,
    while the attack is still being applied: Stop All -> policy gone and -> CANCELED are
    measured too (measure_run has those of runs stopped after every target was attacked).
    Returns (first fault, fault gone, CANCELED) per run."""
    samples = []
    for _ in range(reps):
        wait_unmarked(core, namespace)
        marked = ResumingWatcher(
            core.list_namespaced_pod, namespace=namespace, label_selector=ISOLATED
        )
        time.sleep(0.5)
        exp = experiment(custom, namespace, targets)
        began = time.perf_counter()
        name = create_run(custom, namespace, exp)
        first = marked.wait_for(lambda b: ISOLATED in (b["metadata"].get("labels") or {}), 120)
        marked.stop()
        stop = time.perf_counter()
        set_switch(custom, False)
        wait_policies_gone(namespace)
        gone = time.perf_counter()
        while (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "experimentruns", name)
            .get("status", {})
            .get("phase")
            != "CANCELED"
        ):
            time.sleep(0.01)
        samples.append((first - began, gone - stop, time.perf_counter() - stop))
        set_switch(custom, True)
    return samples


def raw_relabel(core: client.CoreV1Api, namespace: str, targets: int) -> tuple[float, float]:
    """Baseline: a bare client labels `targets` pods, then unlabels them, 32 requests in
    flight (what the operator does for NetworkIsolation, without any operator). Returns
    the seconds of each pass: the first is what "all applied" is held against."""
    names = [f"p{i:05d}" for i in range(targets)]
    passes = []
    for value in ("x", None):
        began = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(
                pool.map(
                    lambda n, v=value: core.patch_namespaced_pod(
                        n, namespace, {"metadata": {"labels": {"bench-raw": v}}}
                    ),
                    names,
                )
            )
        passes.append(time.perf_counter() - began)
    return passes[0], passes[1]


def resolution_times(namespace: str, targets: int, reps: int, detail: bool = False) -> list[float]:
    blast = BlastRadius.model_validate(
        {"selector": {"matchLabels": {"app": "scale"}}, "limit": {"count": targets}}
    )

    async def once() -> float:
        began = time.perf_counter()
        try:
            selection, pods = await resolve_target_pods(namespace, blast, "seed", detail)
            took = time.perf_counter() - began
        finally:
            # Each asyncio.run is a loop of its own, with a session of its own to close.
            await k8s.api().close()
        assert len(pods) == min(targets, selection.matched)
        return took

    return [asyncio.run(once()) for _ in range(reps)]


def main() -> None:  # noqa: PLR0915  (a benchmark script, top to bottom)
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods-a", type=int, default=3000)
    parser.add_argument("--pods-b", type=int, default=3000)
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--reps", type=int, default=10, help="baseline and resolution samples")
    parser.add_argument("--repeat", type=int, default=3, help="runs per target count")
    parser.add_argument(
        "--first-fault-reps",
        type=int,
        default=20,
        help="more runs per target count, for the first fault alone (stopped after it)",
    )
    args = parser.parse_args()
    nodes = max(2, math.ceil((args.pods_a + args.pods_b) / 1000))
    results: dict[int, list[dict[str, float]]] = {}
    first_faults: dict[int, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        state = box.up(nodes=nodes, log=lambda _m: None)
        operator = None
        try:
            config.load_kube_config(config_file=str(box.kubeconfig()))
            core, custom = client.CoreV1Api(), client.CustomObjectsApi()
            for path in ("crds", "rbac", "sandbox"):
                kubectl(box, "apply", "-k", str(REPO / "deploy" / path))
            kubectl(box, "create", "namespace", "bench")
            base = baseline(core, args.reps)
            began = time.perf_counter()
            create_pods(core, "scale-a", args.pods_a, state.nodes)
            create_pods(core, "scale-b", args.pods_b, state.nodes)
            while not (all_running(core, "scale-a") and all_running(core, "scale-b")):
                time.sleep(1)
            allocatable = core.read_node(state.nodes[0]).status.allocatable.get("pods")
            print(
                f"# {args.pods_a + args.pods_b} pods Running after "
                f"{time.perf_counter() - began:.0f} s, on {len(state.nodes)} kwok nodes "
                f"({math.ceil((args.pods_a + args.pods_b) / len(state.nodes))} a node; "
                f"allocatable pods a node: {allocatable})",
                file=sys.stderr,
            )
            # The operator's own client code, against this sandbox.
            k8s.use(k8s.Api(config_file=str(box.kubeconfig())))
            resolve = {n: resolution_times("scale-a", n, args.reps) for n in args.targets}
            whole = resolution_times("scale-a", max(args.targets), args.reps, detail=True)
            operator = start_operator(box, Path(tmp) / "operator.log", [])
            # One run first, not counted: the operator's first API calls open connections.
            measure_run(box, core, custom, "scale-a", 1, name="warm-up")
            for n in args.targets:
                for _ in range(args.repeat):
                    # The bare client next to each run: the same load on the machine.
                    label, unlabel = raw_relabel(core, "scale-a", n)
                    run = measure_run(box, core, custom, "scale-a", n)
                    results.setdefault(n, []).append(
                        {**run, "bare_label": label, "bare_unlabel": unlabel}
                    )
                    print(f"# {n} targets: {results[n][-1]}", file=sys.stderr)
                first_faults[n] = first_fault_samples(
                    core, custom, "scale-a", n, args.first_fault_reps
                )
                print(f"# {n} targets, first faults: {first_faults[n]}", file=sys.stderr)
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(timeout=60)
            box.down(log=lambda _m: None)

    floor = statistics.median(base)
    print(
        "Blast radius resolution with whole pod objects (node-level attacks, EndpointRemoval, "
        f"NodeCordon), {max(args.targets)} targets: p50 {statistics.median(whole) * 1000:.0f} "
        f"ms, p99 {pct(whole, 0.99) * 1000:.0f} ms. The resolve column: names only, listed as "
        "a Table, as for the NetworkIsolation runs measured here.\n"
    )
    print(
        f"Pods: {args.pods_a} in scale-a (the blast radius' namespace), {args.pods_b} in scale-b."
    )
    print(
        f"Baseline (watch one object, patch another): p50 {floor * 1000:.0f} ms, "
        f"p99 {pct(base, 0.99) * 1000:.0f} ms, n={len(base)}.\n"
    )
    print(
        "| targets | runs | resolve p50 / p99 | first fault p50 / max | all applied "
        "| bare client labels all | all applied / bare client "
        "| Stop All -> fault gone p50 / max | -> CANCELED p50 / max | marks removed "
        "| bare client unlabels all | writes per target | API bytes per run "
        "| largest run object |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, runs in results.items():
        res = resolve[n]

        def col(
            key: str, scale: float = 1000, unit: str = "ms", rs: list[dict[str, float]] = runs
        ) -> str:
            values = [r[key] for r in rs]
            return f"{statistics.median(values) * scale:.0f} / {max(values) * scale:.0f} {unit}"

        def mid(key: str, rs: list[dict[str, float]] = runs) -> float:
            return statistics.median([r[key] for r in rs])

        print(
            f"| {n} | {len(runs)} | {statistics.median(res) * 1000:.0f} / "
            f"{pct(res, 0.99) * 1000:.0f} ms | {col('first_fault')} "
            f"({mid('first_fault') / floor:.0f}x baseline) | {mid('all_applied'):.2f} s "
            f"| {mid('bare_label'):.2f} s | {mid('all_applied') / mid('bare_label'):.2f}x "
            f"| {col('fault_gone')} | {col('canceled')} | {mid('rolled_back'):.2f} s "
            f"| {mid('bare_unlabel'):.2f} s "
            f"| {mid('writes') / n:.2f} ({mid('writes_pods') / n:.2f} on pods) "
            f"| {mid('bytes') / 1024:.0f} KiB "
            f"| {max(r['status_bytes'] for r in runs) / 1024:.1f} KiB |"
        )

    print(
        "\nTime to first fault alone (run created -> first target marked), and Stop All "
        "flipped right after it, while the attack is still being applied:\n"
    )
    print(
        "| targets | runs | first fault p50 / p99 | p50 / baseline p50 "
        "| Stop All mid-apply -> fault gone p50 / p99 | -> CANCELED p50 / p99 |"
    )
    print("|---|---|---|---|---|---|")
    for n, samples in first_faults.items():

        def p50_p99(i: int, rows: list[tuple[float, float, float]] = samples) -> str:
            values = [row[i] for row in rows]
            return f"{statistics.median(values) * 1000:.0f} / {pct(values, 0.99) * 1000:.0f} ms"

        first_p50 = statistics.median([row[0] for row in samples])
        print(
            f"| {n} | {len(samples)} | {p50_p99(0)} | {first_p50 / floor:.0f}x "
            f"| {p50_p99(1)} | {p50_p99(2)} |"
        )


if __name__ == "__main__":
    main()
