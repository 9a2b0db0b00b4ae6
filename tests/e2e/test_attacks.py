"""The API-level attacks of the catalogue: applied, observed, rolled back, observed gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from shakeout.api.labels import ISOLATED
from shakeout.attacks.cluster import ClusterAttacks
from shakeout.kube import client as k8s
from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.invariants import assert_clean
from tests.e2e.runs import TEAM, create_run, deployment, set_switch, wait_phase

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


def experiment(
    cluster: Cluster,
    name: str,
    app: str,
    attacks: list[dict[str, Any]],
    limit: dict[str, int] | None = None,
) -> None:
    blast: dict[str, Any] = {"selector": {"matchLabels": {"app": app}}}
    if limit:
        blast["limit"] = limit
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": TEAM},
            "spec": {"blastRadius": blast, "attacks": attacks},
        }
    )


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    items = cluster.get("pods", "-n", TEAM, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_network_isolation_denies_the_targets_and_rollback_deletes_the_policy(
    ready: Cluster,
) -> None:
    deployment(ready, "iso", replicas=3)
    experiment(
        ready,
        "iso",
        "iso",
        [
            {
                "name": "cut",
                "type": "NetworkIsolation",
                "durationSeconds": 4,
                "networkIsolation": {"direction": "Ingress"},
            }
        ],
        limit={"count": 2},
    )
    name, _ = create_run(ready, "iso")
    status = wait_phase(ready, name, {"ATTACKS_STARTED", *TERMINAL}, timeout=30)
    assert status["phase"] == "ATTACKS_STARTED", status
    policies = eventually(
        lambda: ready.get("networkpolicies", "-n", TEAM)["items"], what="the NetworkPolicy"
    )
    assert len(policies) == 1
    policy = policies[0]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in policy["spec"]  # no rule: every ingress is denied
    (label, value), *_ = policy["spec"]["podSelector"]["matchLabels"].items()
    isolated = eventually(lambda: pods(ready, f"{label}={value}"), what="labelled targets")
    assert len(isolated) == 2  # the blast radius' limit, not every matching pod
    assert {p["metadata"]["name"] for p in isolated} <= {
        p["metadata"]["name"] for p in pods(ready, "app=iso")
    }
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert status["phase"] == "COMPLETED", status
    attack = status["attacks"][0]
    assert (attack["state"], attack["reversible"], attack["targets"]) == ("RolledBack", True, 2)
    # The policy is gone with the rollback; the marks go right after the run ends.
    assert ready.get("networkpolicies", "-n", TEAM)["items"] == []
    eventually(lambda: pods(ready, label) == [], what="the marks removed from every pod")


def test_endpoint_removal_takes_targets_out_of_their_service_and_restores_them(
    ready: Cluster,
) -> None:
    ready.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ep", "namespace": TEAM},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "ep"}},
                "template": {
                    "metadata": {"labels": {"app": "ep", "serving": "yes"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        }
    )
    ready.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ep", "namespace": TEAM},
            "spec": {"selector": {"app": "ep", "serving": "yes"}, "ports": [{"port": 80}]},
        }
    )
    eventually(lambda: len(pods(ready, "app=ep,serving=yes")) == 2, timeout=60, what="2 pods")
    before = {p["metadata"]["name"] for p in pods(ready, "app=ep")}
    experiment(
        ready,
        "ep",
        "ep",
        [{"name": "drain", "type": "EndpointRemoval", "durationSeconds": 4}],
        limit={"count": 1},
    )
    name, _ = create_run(ready, "ep")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    out = eventually(lambda: pods(ready, "app=ep,!serving"), what="a pod out of the Service")
    assert len(out) == 1
    removed = json.loads(out[0]["metadata"]["annotations"]["shakeout.dev/removed-labels"])
    assert removed["labels"] == {"serving": "yes"}  # app stays: the ReplicaSet selects it
    # The ReplicaSet still owns both pods: nothing was replaced.
    assert {p["metadata"]["name"] for p in pods(ready, "app=ep")} == before
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert status["phase"] == "COMPLETED", status
    assert status["attacks"][0]["state"] == "RolledBack"
    back = pods(ready, "app=ep,serving=yes")
    assert {p["metadata"]["name"] for p in back} == before
    assert all(
        "shakeout.dev/removed-labels" not in (p["metadata"].get("annotations") or {}) for p in back
    )


def test_endpoint_removal_fails_when_the_owner_selects_the_service_labels(
    ready: Cluster,
) -> None:
    deployment(ready, "ep2", replicas=1)  # the Service and the ReplicaSet select app=ep2
    ready.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ep2", "namespace": TEAM},
            "spec": {"selector": {"app": "ep2"}, "ports": [{"port": 80}]},
        }
    )
    experiment(ready, "ep2", "ep2", [{"name": "drain", "type": "EndpointRemoval"}])
    name, _ = create_run(ready, "ep2")
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "AttackFailed"), status
    assert "selects every label its Services select" in status["message"]
    assert len(pods(ready, "app=ep2")) == 1  # untouched, nothing replaced


ALLOW_CORDONS = {"spec": {"clusterScopedAttacks": {"namespaces": [TEAM]}}}
NO_CORDONS = {"spec": {"clusterScopedAttacks": None}}


@pytest.fixture
def cordons(ready: Cluster) -> Iterator[Cluster]:
    """NodeCordon allowed in TEAM by the admin (refused everywhere by default)."""
    ready.merge_patch("chaosswitch", "default", ALLOW_CORDONS)
    yield ready
    ready.merge_patch("chaosswitch", "default", NO_CORDONS)


def test_node_cordon_cordons_the_targets_nodes_and_uncordons_them(cordons: Cluster) -> None:
    ready = cordons
    deployment(ready, "cord", replicas=1)
    (pod,) = pods(ready, "app=cord")
    node = pod["spec"]["nodeName"]
    experiment(
        ready, "cord", "cord", [{"name": "cordon", "type": "NodeCordon", "durationSeconds": 3}]
    )
    name, _ = create_run(ready, "cord")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(
        lambda: ready.get("node", node).get("spec", {}).get("unschedulable"),
        what=f"{node} cordoned",
    )
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert status["phase"] == "COMPLETED", status
    after = ready.get("node", node)
    assert not after.get("spec", {}).get("unschedulable")
    assert "shakeout.dev/cordoned-by" not in (after["metadata"].get("annotations") or {})


def test_a_node_cordoned_by_someone_else_stays_cordoned_after_rollback(cordons: Cluster) -> None:
    ready = cordons
    deployment(ready, "cord2", replicas=1)
    (pod,) = pods(ready, "app=cord2")
    node = pod["spec"]["nodeName"]
    ready.kubectl("cordon", node)
    try:
        experiment(
            ready, "cord2", "cord2", [{"name": "c", "type": "NodeCordon", "durationSeconds": 1}]
        )
        name, _ = create_run(ready, "cord2")
        status = wait_phase(ready, name, TERMINAL, timeout=60)
        assert status["phase"] == "COMPLETED", status
        assert ready.get("node", node)["spec"].get("unschedulable") is True  # not ours to undo
    finally:
        ready.kubectl("uncordon", node)


def test_marks_left_by_an_ended_run_are_swept_at_operator_start(
    ready: Cluster, live_operator: Operator
) -> None:
    # As an operator killed between a run's end and its cleanup would leave them.
    deployment(ready, "swept", replicas=2)
    for pod in pods(ready, "app=swept"):
        ready.kubectl(
            "label",
            "pod",
            pod["metadata"]["name"],
            "-n",
            TEAM,
            "shakeout.dev/isolated=00000000-0000-0000-0000-000000000000",
        )
    assert len(pods(ready, "shakeout.dev/isolated")) == 2
    live_operator.stop()
    live_operator.start()
    eventually(lambda: pods(ready, "shakeout.dev/isolated") == [], what="the marks swept")


def test_unmarking_never_removes_another_runs_mark(ready: Cluster) -> None:
    """A run's cleanup races the next run's marking: the removal is conditional."""
    deployment(ready, "marks", replicas=1)
    (pod,) = pods(ready, "app=marks")
    name = pod["metadata"]["name"]
    ready.kubectl("label", "pod", name, "-n", TEAM, "shakeout.dev/isolated=next-run")
    k8s.use(k8s.Api(config_file=str(ready.admin_kubeconfig)))
    # The previous run's cleanup listed the pod while it still carried its mark.
    asyncio.run(ClusterAttacks(TEAM, run_uid="previous-run").unmark_pod(name))
    labels = ready.get("pod", name, "-n", TEAM)["metadata"]["labels"]
    assert labels["shakeout.dev/isolated"] == "next-run"
    asyncio.run(ClusterAttacks(TEAM, run_uid="next-run").unmark_pod(name))
    assert "shakeout.dev/isolated" not in ready.get("pod", name, "-n", TEAM)["metadata"]["labels"]


def test_stop_all_while_an_attack_is_being_applied_halts_it(ready: Cluster) -> None:
    """Stop All arriving while 1,000 targets are being isolated ends the fault at once:
    no further target is attacked (it does not wait for the other 999), the targets
    already marked are released, and nothing is left behind."""
    targets = 1000
    nodes = [n["metadata"]["name"] for n in ready.get("nodes")["items"]]
    ready.create(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"halt-{i:04d}",
                        "namespace": TEAM,
                        "labels": {"app": "halt"},
                    },
                    "spec": {
                        "nodeName": nodes[i % len(nodes)],
                        "containers": [{"name": "c", "image": "x"}],
                    },
                }
                for i in range(targets)
            ],
        },
        timeout=300,
    )
    try:
        experiment(
            ready,
            "halt",
            "halt",
            [{"name": "cut", "type": "NetworkIsolation", "durationSeconds": 600}],
        )
        name, _ = create_run(ready, "halt")
        eventually(lambda: pods(ready, ISOLATED), interval=0.05, what="the first target marked")
        set_switch(ready, False)
        status = wait_phase(ready, name, TERMINAL, timeout=60)
        assert (status["phase"], status["reason"]) == ("CANCELED", "StoppedAll"), status
        attack = status["attacks"][0]
        assert attack["state"] == "RolledBack", attack
        assert 0 < attack["targets"] < targets, attack  # halted partway through
        print(f"\nStop All mid-apply: {attack['targets']} of {targets} targets attacked")
        assert_clean(ready, TEAM, timeout=60)
    finally:
        set_switch(ready, True)
        ready.kubectl("delete", "pods", "-n", TEAM, "-l", "app=halt", "--wait=false", timeout=300)
