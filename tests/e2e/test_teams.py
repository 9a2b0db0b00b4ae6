"""Teams are namespaces: members run and write findings; anyone may cancel; no one else."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cluster
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    patch_run_as,
    replicas,
    scale_experiment,
    wait_phase,
)


def test_only_members_change_a_run_but_anyone_may_cancel(ready: Cluster) -> None:
    deployment(ready, "team1")
    scale_experiment(ready, "team1", "team1", to=1, duration=120)
    # carol is in no team: RBAC refuses her the Run button in team-a.
    _, refused = create_run(ready, "team1", user="carol", check=False)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower()
    name, _ = create_run(ready, "team1", user="alice")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    # bob (team-b) may not write team-a's findings...
    denied = patch_run_as(ready, "bob", name, {"spec": {"findings": "not mine"}})
    assert denied is not None
    assert "only members of the team" in denied
    assert "spec.findings" in denied
    # ...but may cancel, and alice may write findings.
    assert patch_run_as(ready, "bob", name, {"spec": {"cancel": True}}) is None
    status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
    assert status["phase"] == "CANCELED"
    assert status["canceledBy"]["username"] == "bob"
    ready.merge_patch(
        "experimentrun",
        name,
        {"spec": {"findings": "ok", "actionRequired": "No"}},
        namespace=TEAM,
        user="alice",
    )
    assert replicas(ready, "team1") == 3


def test_non_members_stay_out_without_the_operators_webhooks(ready: Cluster) -> None:
    """The rule that keeps non-members to cancel is an in-process admission policy of the
    API server (deploy/rbac/run-changes-policy.yaml): it holds with the operator's
    webhook configurations deleted."""
    deployment(ready, "team3", replicas=1)
    scale_experiment(ready, "team3", "team3", to=1, duration=1)
    name, _ = create_run(ready, "team3", user="alice")
    wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"})
    with ready.without("validatingwebhookconfiguration"):
        for user in ("bob", "carol"):
            denied = patch_run_as(ready, user, name, {"spec": {"findings": f"{user} was here"}})
            assert denied is not None
            assert "only members of the team" in denied
        ready.merge_patch(
            "experimentrun",
            name,
            {"spec": {"actionRequired": "Yes"}},
            namespace=TEAM,
            user="alice",
        )
    assert "findings" not in ready.get("experimentrun", name, "-n", TEAM)["spec"]


def test_the_operator_rechecks_the_recorded_creator(ready: Cluster) -> None:
    """Defence in depth: with both webhooks gone (the validating one refuses a creator
    written by hand), a creator recorded by hand who may not run experiments here gets a
    run that attacks nothing."""
    deployment(ready, "team2", replicas=2)
    scale_experiment(ready, "team2", "team2", to=0, duration=30)
    with (
        ready.without("validatingwebhookconfiguration"),
        ready.without("mutatingwebhookconfiguration"),
    ):
        forged = json.dumps({"username": "carol", "groups": ["system:authenticated"]})
        ready.create(
            {
                "apiVersion": "shakeout.dev/v1alpha1",
                "kind": "ExperimentRun",
                "metadata": {
                    "name": "team2-forged",
                    "namespace": TEAM,
                    "annotations": {"shakeout.dev/started-by": forged},
                },
                "spec": {"experimentRef": {"name": "team2"}},
            }
        )
        status = wait_phase(ready, "team2-forged", {"FAILED", "COMPLETED", "CANCELED"})
    assert (status["phase"], status["reason"]) == ("FAILED", "Unauthorized")
    assert "carol, who created the run, may not run experiments" in status["message"]
    assert replicas(ready, "team2") == 2
