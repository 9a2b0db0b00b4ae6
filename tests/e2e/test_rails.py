"""Blast-radius rails: protected namespaces are never attacked; cluster-wide caps hold."""

from __future__ import annotations

from tests.e2e.conftest import Cluster
from tests.e2e.runs import TEAM, create_run, deployment, replicas, scale_experiment, wait_phase


def bypassing_webhook_run(cluster: Cluster, experiment: str, namespace: str) -> str:
    """A run the webhook lets through unchecked (as it does scheduled runs): the operator's
    own re-check is all that stands between it and the namespace."""
    name = f"{experiment}-bypass"
    cluster.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"shakeout.dev/trigger": "schedule"},
            },
            "spec": {"experimentRef": {"name": experiment}},
        }
    )
    return name


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
