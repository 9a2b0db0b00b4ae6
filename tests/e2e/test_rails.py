"""Blast-radius rails: protected namespaces are never attacked; cluster-wide caps hold."""

from __future__ import annotations

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    replicas,
    scale_experiment,
    scheduled_style_run,
    wait_phase,
)


def bypassing_webhook_run(cluster: Cluster, experiment: str, namespace: str) -> str:
    """A run the webhook lets through unchecked (as it does scheduled runs): the operator's
    own re-check is all that stands between it and the namespace."""
    return scheduled_style_run(cluster, experiment, namespace, name=f"{experiment}-bypass")


def test_a_protected_namespace_is_never_attacked(ready: Cluster, namespace: str) -> None:
    ready.kubectl("label", "namespace", namespace, "shakeout.dev/protected=true")
    deployment(ready, "vault", replicas=2, namespace=namespace)
    scale_experiment(ready, "vault", "vault", to=0, namespace=namespace)
    _, refused = create_run(ready, "vault", user=None, namespace=namespace, check=False)
    assert refused.returncode != 0
    assert f"namespace {namespace} is protected" in refused.stderr
    name = bypassing_webhook_run(ready, "vault", namespace)
    status = wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, namespace=namespace)
    assert (status["phase"], status["reason"]) == ("FAILED", "NamespaceProtected")
    assert replicas(ready, "vault", namespace=namespace) == 2


def test_system_namespaces_are_never_attacked(ready: Cluster) -> None:
    deployment(ready, "dns", replicas=1, namespace="kube-system")
    scale_experiment(ready, "dns", "dns", to=0, namespace="kube-system")
    _, refused = create_run(ready, "dns", user=None, namespace="kube-system", check=False)
    assert refused.returncode != 0
    assert "namespace kube-system is protected" in refused.stderr
    assert replicas(ready, "dns", namespace="kube-system") == 1


def test_opt_in_mode_and_target_caps(ready: Cluster) -> None:
    deployment(ready, "capped", replicas=3)
    scale_experiment(ready, "capped", "capped", to=1, duration=1)
    try:
        ready.merge_patch("chaosswitch", "default", {"spec": {"caps": {"maxTargets": 2}}})
        _, refused = create_run(ready, "capped", check=False)
        assert refused.returncode != 0
        assert "over the cluster-wide cap of 2" in refused.stderr
        ready.merge_patch(
            "chaosswitch", "default", {"spec": {"caps": None, "namespaceMode": "OptIn"}}
        )
        _, refused = create_run(ready, "capped", check=False)
        assert f"namespace {TEAM} has not opted in" in refused.stderr
        ready.kubectl("label", "namespace", TEAM, "shakeout.dev/chaos=enabled")
        name, _ = create_run(ready, "capped")
        status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"})
        assert status["phase"] == "COMPLETED", status
    finally:
        ready.merge_patch(
            "chaosswitch", "default", {"spec": {"caps": None, "namespaceMode": "OptOut"}}
        )
        ready.kubectl("label", "namespace", TEAM, "shakeout.dev/chaos-")


def test_a_rail_set_during_the_warm_up_fails_the_run_before_any_attack(
    ready: Cluster, namespace: str
) -> None:
    deployment(ready, "warm", replicas=2, namespace=namespace)
    scale_experiment(ready, "warm", "warm", to=0, warm_up=3, namespace=namespace)
    name, _ = create_run(ready, "warm", user=None, namespace=namespace)
    wait_phase(ready, name, {"PREPARED"}, namespace=namespace)
    ready.kubectl("label", "namespace", namespace, "shakeout.dev/protected=true")
    status = wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, namespace=namespace)
    assert (status["phase"], status["reason"]) == ("FAILED", "NamespaceProtected"), status
    assert f"namespace {namespace} is protected" in status["message"]
    assert status["attacks"][0]["state"] == "Skipped"
    assert replicas(ready, "warm", namespace=namespace) == 2


def test_the_blast_radius_takes_only_running_scheduled_pods(ready: Cluster, namespace: str) -> None:
    deployment(ready, "live", replicas=2, namespace=namespace)
    # Same labels, never scheduled (no node has this label): Pending, not a target.
    ready.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pending", "namespace": namespace, "labels": {"app": "live"}},
            "spec": {
                "nodeSelector": {"shakeout.dev/no-such-node": "true"},
                "containers": [{"name": "c", "image": "nginx"}],
            },
        }
    )
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "live", "namespace": namespace},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "live"}}},
                "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 1}],
            },
        }
    )
    name, _ = create_run(ready, "live", user=None, namespace=namespace)
    status = wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, namespace=namespace)
    assert status["phase"] == "COMPLETED", status
    assert (status["targets"]["matched"], status["targets"]["selected"]) == (2, 2), status
    assert "pending" not in status["targets"]["names"]
    assert status["attacks"][0]["targets"] == 2
    pending = ready.get("pod", "pending", "-n", namespace)
    assert "deletionTimestamp" not in pending["metadata"]
    assert pending["status"]["phase"] == "Pending"
    # A blast radius of nothing but Pending pods has no targets: refused, nothing stored.
    ready.kubectl("scale", "deployment", "live", "-n", namespace, "--replicas=0")
    eventually(
        lambda: len(ready.get("pods", "-n", namespace, "-l", "app=live")["items"]) == 1,
        what="only the Pending pod left",
    )
    _, refused = create_run(ready, "live", user=None, namespace=namespace, check=False)
    assert refused.returncode != 0
    assert "resolves to no pods" in refused.stderr
