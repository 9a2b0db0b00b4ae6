"""The invariant checker: what the runs' status says, compared with what is really there.

After runs end, nothing of theirs may remain applied: replica counts back, no
NetworkPolicy or isolation label, no label removed for EndpointRemoval, no node cordoned
by a run, every NodeAttack closed, no nftables table in the targets' network namespaces,
and the lock released.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tests.e2e.conftest import Cluster

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
OPEN_ATTACK_STATES = {"Pending", "Applying", "Applied", "RollingBack"}

# Quick samples in `make test`; the full counts with SHAKEOUT_RELIABILITY=full
# (`make reliability`).
FULL = os.environ.get("SHAKEOUT_RELIABILITY") == "full"


def scaled(quick: int, full: int) -> int:
    return full if FULL else quick


def violations(
    cluster: Cluster,
    namespace: str,
    replicas: dict[str, int] | None = None,
    netns: list[Any] | None = None,
) -> list[str]:
    """Every way in which reality differs from 'all runs over, everything rolled back'."""
    return [
        *_runs(cluster, namespace),
        *_replicas(cluster, namespace, replicas or {}),
        *_api_faults(cluster, namespace),
        *_node_faults(cluster, namespace, netns or []),
        *_lock(cluster),
    ]


def _runs(cluster: Cluster, namespace: str) -> list[str]:
    found = []
    for run in cluster.get("experimentruns", "-n", namespace)["items"]:
        status = run.get("status") or {}
        name = run["metadata"]["name"]
        if status.get("phase") not in TERMINAL:
            found.append(f"run {name} is {status.get('phase')}, not terminal")
        found += [
            f"run {name}: attack {a['name']} left {a['state']}"
            for a in status.get("attacks") or []
            if a["state"] in OPEN_ATTACK_STATES
        ]
    return found


def _replicas(cluster: Cluster, namespace: str, replicas: dict[str, int]) -> list[str]:
    found = []
    for name, count in replicas.items():
        actual = cluster.get("deployment", name, "-n", namespace)["spec"]["replicas"]
        if actual != count:
            found.append(f"deployment {name} has {actual} replicas, not {count}")
    return found


def _api_faults(cluster: Cluster, namespace: str) -> list[str]:
    found = [
        f"NetworkPolicy {p['metadata']['name']} left behind"
        for p in cluster.get("networkpolicies", "-n", namespace)["items"]
        if "shakeout.dev/run-uid" in (p["metadata"].get("labels") or {})
    ]
    for pod in cluster.get("pods", "-n", namespace)["items"]:
        meta = pod["metadata"]
        if "shakeout.dev/isolated" in (meta.get("labels") or {}):
            found.append(f"pod {meta['name']} still marked shakeout.dev/isolated")
        if "shakeout.dev/removed-labels" in (meta.get("annotations") or {}):
            found.append(f"pod {meta['name']} still out of its endpoints")
    found += [
        f"node {n['metadata']['name']} still cordoned by a run"
        for n in cluster.get("nodes")["items"]
        if "shakeout.dev/cordoned-by" in (n["metadata"].get("annotations") or {})
    ]
    return found


def _node_faults(cluster: Cluster, namespace: str, netns: list[Any]) -> list[str]:
    found = []
    for obj in cluster.get("nodeattacks", "-n", namespace)["items"]:
        phase = (obj.get("status") or {}).get("phase")
        reversible = obj["spec"]["attack"]["type"] not in ("ProcessKill", "PodDelete")
        if phase in ("Applying", "Applied") and reversible:
            found.append(f"NodeAttack {obj['metadata']['name']} is {phase}")
    for ns in netns:
        tables = ns.exec("nft", "list", "tables").stdout
        if "shakeout_" in tables:
            found.append(f"nftables tables left in {ns.name}: {tables.strip()}")
    return found


def _lock(cluster: Cluster) -> list[str]:
    switch = cluster.get("chaosswitch", "default")
    if (switch.get("status") or {}).get("activeRun"):
        return [f"the lock is held: {json.dumps(switch['status']['activeRun'])}"]
    return []


def assert_clean(
    cluster: Cluster,
    namespace: str,
    replicas: dict[str, int] | None = None,
    netns: list[Any] | None = None,
    timeout: float = 20,
) -> None:
    """No violation, within `timeout` (marks are cleaned up just after a run ends)."""
    deadline = time.monotonic() + timeout
    while True:
        found = violations(cluster, namespace, replicas, netns)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == [], found
