"""A rollback is never given up: while the API server refuses it, the run stays live,
keeps the lock and says the rollback is pending; it ends once the fault is undone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import TEAM, create_run, deployment, replicas, scale_experiment, wait_phase

POLICY = "e2e-refuse-restore"


@contextmanager
def restore_refused(cluster: Cluster, workload: str) -> Iterator[None]:
    """An admission policy that refuses to scale `workload` back up: what a policy engine
    that is restarting, or a brown-out, does to a rollback."""
    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["deployments/scale"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": (
                            f"object.metadata.name != '{workload}' || object.spec.replicas < 2"
                        ),
                        "message": "e2e: scaling back up is refused for now",
                    }
                ],
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {
                "policyName": POLICY,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": TEAM}}
                },
            },
        }
    )
    try:
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", POLICY, check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", POLICY, check=False)


def condition(status: dict[str, object], kind: str) -> dict[str, str] | None:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    return next((c for c in conditions if c["type"] == kind), None)


def test_a_refused_rollback_is_retried_until_the_fault_is_gone(ready: Cluster) -> None:
    deployment(ready, "stuck", replicas=3)
    scale_experiment(ready, "stuck", "stuck", to=1, duration=2)
    with restore_refused(ready, "stuck"):
        # The policy takes effect once the API server has loaded it.
        eventually(
            lambda: (
                ready.kubectl(
                    "scale", "deployment", "stuck", "-n", TEAM, "--replicas=3", check=False
                ).returncode
                != 0
            ),
            what="the policy in force",
        )
        name, _ = create_run(ready, "stuck")
        status = wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
        pending = eventually(
            lambda: (
                (c := condition(run_status(ready, name), "RollbackPending"))
                and c["status"] == "True"
                and c
            ),
            timeout=30,
            what="the rollback pending",
        )
        assert "scaling back up is refused" in pending["message"]
        time.sleep(3)  # retried meanwhile, never given up
        status = run_status(ready, name)
        assert status["phase"] == "ATTACKS_STARTED", status
        assert replicas(ready, "stuck") == 1  # the fault is still in place: the run is live
        switch = ready.get("chaosswitch", "default")
        assert switch["status"]["activeRun"]["name"] == name  # and keeps the lock
        reasons = {e["reason"]: e["type"] for e in run_events(ready, name)}
        assert reasons.get("RollbackPending") == "Warning"
    # The policy is gone: the next retry (30 s apart at most) undoes the fault.
    status = wait_phase(ready, name, {"FAILED", "CANCELED", "COMPLETED"}, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "RollbackFailed"), status
    assert "retried until it succeeded" in status["message"]
    assert replicas(ready, "stuck") == 3
    assert status["attacks"][0]["state"] == "RolledBack"
    done = condition(status, "RollbackPending")
    assert done is not None
    assert done["status"] == "False"


def run_status(cluster: Cluster, name: str) -> dict[str, object]:
    return dict(cluster.get("experimentrun", name, "-n", TEAM).get("status") or {})


def run_events(cluster: Cluster, name: str) -> list[dict[str, str]]:
    items: list[dict[str, str]] = cluster.get(
        "events", "-n", TEAM, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items
