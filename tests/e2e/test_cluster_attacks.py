"""A team member plays the attacker against the rails of issue #13 (SEC-04, SEC-15,
SEC-27): NodeCordon without the admin's allowance, a pod pinned to a control-plane node,
an admin's work on a node undone by a rollback, a scale down that deletes volumes, a
concurrent scale clobbered by a rollback, a run that holds the lock too long. Each refusal
holds at admission and, with the validating webhook deleted, at pick-up."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    pinned_deployment,
    replicas,
    scale_experiment,
    wait_phase,
)

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
WORKER, OTHER = "kwok-node-0", "kwok-node-1"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"


@contextlib.contextmanager
def rails(cluster: Cluster, spec: dict[str, Any]) -> Iterator[None]:
    """The switch's rails set by the admin for the block, removed afterwards."""
    cluster.merge_patch("chaosswitch", "default", {"spec": spec})
    try:
        yield
    finally:
        cluster.merge_patch("chaosswitch", "default", {"spec": dict.fromkeys(spec)})


def cordon_experiment(
    cluster: Cluster, name: str, app: str, duration: int = 3, namespace: str = TEAM
) -> None:
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": app}}},
                "attacks": [{"name": "cordon", "type": "NodeCordon", "durationSeconds": duration}],
            },
        }
    )


def unschedulable(cluster: Cluster, node: str) -> bool:
    return bool(cluster.get("node", node).get("spec", {}).get("unschedulable"))


def bypassing_run(cluster: Cluster, experiment: str) -> str:
    """alice's run stored with the validating webhook deleted (the mutating one records
    her): the operator's pick-up is all that checks it."""
    body = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {"name": f"{experiment}-{uuid.uuid4().hex[:5]}", "namespace": TEAM},
        "spec": {"experimentRef": {"name": experiment}},
    }
    with cluster.without("validatingwebhookconfiguration"):
        cluster.create(body, user="alice")
    return str(body["metadata"]["name"])


def test_alice_cannot_cordon_without_the_admins_allowance(ready: Cluster) -> None:
    pinned_deployment(ready, "cord-deny", WORKER)
    cordon_experiment(ready, "cord-deny", "cord-deny")
    _, refused = create_run(ready, "cord-deny", check=False)
    assert refused.returncode != 0
    assert "not allowed for namespace team-a" in refused.stderr
    assert "spec.clusterScopedAttacks.namespaces" in refused.stderr
    # Nor can she allow herself: every rail of the switch is the admins'.
    allow = {"spec": {"clusterScopedAttacks": {"namespaces": [TEAM]}}}
    patched = ready.merge_patch("chaosswitch", "default", allow, user="alice", check=False)
    assert patched.returncode != 0
    assert "shakeout-rails-admin" in patched.stderr
    # Allowed for another team only: still refused, at pick-up too.
    with rails(ready, {"clusterScopedAttacks": {"namespaces": ["team-b"]}}):
        name = bypassing_run(ready, "cord-deny")
        status = wait_phase(ready, name, TERMINAL)
    assert (status["phase"], status["reason"]) == ("FAILED", "ClusterScopeNotAllowed"), status
    assert status.get("attacks", []) == [] or all(
        a["state"] in ("Pending", "Skipped") for a in status["attacks"]
    )
    assert not unschedulable(ready, WORKER)


def test_a_control_plane_node_and_a_pinned_pods_node_are_never_cordoned(ready: Cluster) -> None:
    pinned_deployment(ready, "cord-cp", WORKER)
    ready.kubectl("label", "node", OTHER, f"{CONTROL_PLANE}=")
    # alice pins a pod to the control-plane node herself (spec.nodeName: no scheduler).
    ready.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cord-cp-pinned", "namespace": TEAM, "labels": {"app": "cord-cp"}},
            "spec": {"nodeName": OTHER, "containers": [{"name": "c", "image": "nginx"}]},
        },
        user="alice",
    )
    try:
        eventually(
            lambda: (
                ready.get("pod", "cord-cp-pinned", "-n", TEAM)["status"].get("phase") == "Running"
            ),
            what="the pinned pod Running",
        )
        cordon_experiment(ready, "cord-cp", "cord-cp", duration=5)
        allow = {"clusterScopedAttacks": {"namespaces": [TEAM]}, "caps": {"maxNodes": 2}}
        with rails(ready, allow):
            name, _ = create_run(ready, "cord-cp")
            status = wait_phase(ready, name, {"ATTACKS_STARTED", *TERMINAL})
            assert status["attacks"][0]["nodes"] == [WORKER], status
            eventually(lambda: unschedulable(ready, WORKER), what=f"{WORKER} cordoned")
            assert not unschedulable(ready, OTHER)
            status = wait_phase(ready, name, TERMINAL)
            assert status["phase"] == "COMPLETED", status
            assert not unschedulable(ready, WORKER)
            assert not unschedulable(ready, OTHER)
            # Not a control-plane node any more: the pinned pod still does not choose it.
            ready.kubectl("label", "node", OTHER, f"{CONTROL_PLANE}-")
            name, _ = create_run(ready, "cord-cp")
            status = wait_phase(ready, name, TERMINAL)
            assert status["phase"] == "COMPLETED", status
            assert status["attacks"][0]["nodes"] == [WORKER], status
    finally:
        ready.kubectl("label", "node", OTHER, f"{CONTROL_PLANE}-", check=False)
        ready.kubectl("delete", "pod", "cord-cp-pinned", "-n", TEAM, "--wait=false")
        for node in (WORKER, OTHER):
            ready.kubectl("uncordon", node)


def test_a_node_an_admin_works_on_during_the_run_stays_cordoned(ready: Cluster) -> None:
    pinned_deployment(ready, "cord-admin", WORKER)
    cordon_experiment(ready, "cord-admin", "cord-admin", duration=6)
    try:
        with rails(ready, {"clusterScopedAttacks": {"namespaces": [TEAM]}}):
            name, _ = create_run(ready, "cord-admin")
            wait_phase(ready, name, {"ATTACKS_STARTED"})
            eventually(lambda: unschedulable(ready, WORKER), what=f"{WORKER} cordoned")
            # The admin drains it for maintenance: `kubectl cordon` is a no-op on a
            # cordoned node, the drain's taint is not.
            ready.kubectl("cordon", WORKER)
            ready.kubectl("taint", "node", WORKER, "example.com/maintenance=drain:NoSchedule")
            status = wait_phase(ready, name, TERMINAL)
        assert status["phase"] == "COMPLETED", status
        assert unschedulable(ready, WORKER)  # the admin's now, not undone under them
        assert "left cordoned: kwok-node-0" in status["attacks"][0]["message"]
        node = ready.get("node", WORKER)
        assert "shakeout.dev/cordoned-by" not in (node["metadata"].get("annotations") or {})
    finally:
        ready.kubectl("taint", "node", WORKER, "example.com/maintenance-", check=False)
        ready.kubectl("uncordon", WORKER)


def test_a_statefulset_scale_down_that_deletes_volumes_is_refused(ready: Cluster) -> None:
    deployment(ready, "dbfront", replicas=1)
    ready.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": TEAM},
            "spec": {
                "replicas": 3,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "persistentVolumeClaimRetentionPolicy": {
                    "whenScaled": "Delete",
                    "whenDeleted": "Retain",
                },
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "postgres"}]},
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        }
    )

    def experiment(accept: bool) -> None:
        parameters: dict[str, Any] = {"workload": {"kind": "StatefulSet", "name": "db"}}
        parameters["replicas"] = 1
        if accept:
            parameters["acceptDataLoss"] = True
        ready.apply(
            {
                "apiVersion": "shakeout.dev/v1alpha1",
                "kind": "Experiment",
                "metadata": {"name": "db-scale", "namespace": TEAM},
                "spec": {
                    "blastRadius": {"selector": {"matchLabels": {"app": "dbfront"}}},
                    "attacks": [
                        {
                            "name": "scale",
                            "type": "ScaleWorkload",
                            "durationSeconds": 1,
                            "scaleWorkload": parameters,
                        }
                    ],
                },
            }
        )

    experiment(accept=False)
    _, refused = create_run(ready, "db-scale", check=False)
    assert refused.returncode != 0
    assert "whenScaled is Delete" in refused.stderr
    name = bypassing_run(ready, "db-scale")
    status = wait_phase(ready, name, TERMINAL)
    assert (status["phase"], status["reason"]) == ("FAILED", "DataLossNotAccepted"), status
    sts = ready.get("statefulset", "db", "-n", TEAM)
    assert sts["spec"]["replicas"] == 3
    # Accepted: the Experiment and the run say it is irreversible.
    experiment(accept=True)
    exp = eventually(
        lambda: (
            e
            if (e := ready.get("experiment", "db-scale", "-n", TEAM))
            .get("status", {})
            .get("attacks")
            and e["status"]["attacks"][0]["reversible"] is False
            else None
        ),
        what="the Experiment's status calling the scale irreversible",
    )
    assert exp["status"]["attacks"][0]["name"] == "scale"
    ready.kubectl("delete", "statefulset", "db", "-n", TEAM, "--wait=false")


def test_a_concurrent_scale_is_not_clobbered_by_the_rollback(ready: Cluster) -> None:
    deployment(ready, "hpa", replicas=3)
    scale_experiment(ready, "hpa", "hpa", to=1, duration=8, min_ready=0)
    name, _ = create_run(ready, "hpa")
    wait_phase(ready, name, {"ATTACKS_STARTED"})
    eventually(lambda: replicas(ready, "hpa") == 1, what="scaled to 1")
    ready.kubectl("scale", "deployment", "hpa", "-n", TEAM, "--replicas=4")  # an SRE
    status = wait_phase(ready, name, TERMINAL)
    assert status["phase"] == "COMPLETED", status
    assert replicas(ready, "hpa") == 4
    attack = status["attacks"][0]
    assert attack["state"] == "RolledBack", attack
    assert "left at 4 replicas: someone else scaled it" in attack["message"]


def test_a_run_longer_than_the_cap_is_refused(ready: Cluster) -> None:
    deployment(ready, "long", replicas=2)
    scale_experiment(ready, "long", "long", to=1, duration=3, warm_up=3)
    with rails(ready, {"maxRunSeconds": 5}):
        _, refused = create_run(ready, "long", check=False)
        assert refused.returncode != 0
        assert "the run would last 6 s" in refused.stderr
        assert "spec.maxRunSeconds" in refused.stderr
        name = bypassing_run(ready, "long")
        status = wait_phase(ready, name, TERMINAL)
    assert (status["phase"], status["reason"]) == ("FAILED", "RunTooLong"), status
    assert replicas(ready, "long") == 2
    # The admin's cap as the message says it, and nothing else of the switch changed.
    switch = ready.get("chaosswitch", "default")
    assert "maxRunSeconds" not in switch["spec"], json.dumps(switch["spec"])
