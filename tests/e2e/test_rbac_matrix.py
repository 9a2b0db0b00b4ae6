"""Who may do what (team members run their team's experiments; any authenticated user may
cancel any run and flip the ChaosSwitch), as a matrix of identities and actions, run
twice: with the operator's webhooks in place, and with its ValidatingWebhookConfiguration
deleted.
Zero unauthorized actions and zero false refusals, both times."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.runs import create_run, deployment, scale_experiment, wait_phase

# (user, action, namespace, allowed)
MATRIX = [
    ("alice", "run", "team-a", True),
    ("bob", "run", "team-a", False),
    ("carol", "run", "team-a", False),
    ("bob", "run", "team-b", True),
    ("alice", "run", "team-b", False),
    ("alice", "findings", "team-a", True),
    ("bob", "findings", "team-a", False),
    ("carol", "findings", "team-a", False),
    ("bob", "cancel", "team-a", True),
    ("carol", "cancel", "team-a", True),
    ("carol", "switch", "", True),
    ("bob", "delete", "team-a", False),
]


@pytest.fixture(params=["webhooks", "no-validating-webhook"])
def setup(request: pytest.FixtureRequest, ready: Cluster) -> Iterator[Cluster]:
    for team in ("team-a", "team-b"):
        deployment(ready, "matrix", replicas=1, namespace=team)
        scale_experiment(ready, "matrix", "matrix", to=1, duration=600, namespace=team)
    if request.param == "webhooks":
        yield ready
        return
    with ready.without("validatingwebhookconfiguration"):
        yield ready


def attempt(cluster: Cluster, user: str, action: str, namespace: str, target: str) -> bool:
    """Try the action for real as the user; True if the API server accepted it."""
    if action == "run":
        # Server-side dry-run: authorization and admission run in full, nothing is stored.
        body = {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"generateName": "matrix-", "namespace": namespace},
            "spec": {"experimentRef": {"name": "matrix"}},
        }
        result = cluster.create(body, user=user, check=False, extra=["--dry-run=server"])
        return result.returncode == 0
    if action == "findings":
        patch = {"spec": {"findings": f"by {user}"}}
    elif action == "cancel":
        patch = {"spec": {"cancel": True}}
    elif action == "switch":
        result = cluster.merge_patch(
            "chaosswitch", "default", {"spec": {"enabled": True}}, user=user, check=False
        )
        return result.returncode == 0
    else:
        result = cluster.kubectl(
            "delete",
            "experimentrun",
            target,
            "-n",
            namespace,
            "--dry-run=server",
            user=user,
            check=False,
        )
        return result.returncode == 0
    result = cluster.merge_patch(
        "experimentrun", target, patch, namespace=namespace, user=user, check=False
    )
    return result.returncode == 0


def test_access_matrix(setup: Cluster) -> None:
    target, _ = create_run(setup, "matrix", user="alice")
    wait_phase(setup, target, {"ATTACKS_STARTED"}, timeout=30)
    # A run in progress would (rightly) refuse more runs: cancel it first, then try runs.
    outcomes = {}
    for user, action, namespace, allowed in MATRIX:
        if action != "run":
            outcomes[(user, action, namespace)] = (
                attempt(setup, user, action, namespace, target),
                allowed,
            )
    wait_phase(setup, target, {"CANCELED"}, timeout=15)
    for user, action, namespace, allowed in MATRIX:
        if action == "run":
            outcomes[(user, action, namespace)] = (
                attempt(setup, user, action, namespace, target),
                allowed,
            )
    wrong = {k: v for k, v in outcomes.items() if v[0] != v[1]}
    assert wrong == {}, "(done, expected) per (user, action, namespace)"
