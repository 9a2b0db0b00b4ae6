"""A team member plays the attacker against the run admission (SEC-20, SEC-21, SEC-23):
a label does not skip the checks, a hand-written creator is not trusted, and deleting an
Experiment keeps the reports of its scheduled runs."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    scale_experiment,
    schedule_now,
    wait_phase,
)

STARTED_BY = "shakeout.dev/started-by"


def run(
    experiment: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {
            "name": f"{experiment}-{uuid.uuid4().hex[:5]}",
            "namespace": TEAM,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"experimentRef": {"name": experiment}},
    }


def test_alice_labelling_her_run_scheduled_is_checked_like_any_run(ready: Cluster) -> None:
    """A run of an Experiment that does not exist is refused (ExperimentNotFound, or an
    earlier check): with the trigger label too. Nothing is stored."""
    _, plain = create_run(ready, "no-such-experiment", check=False)
    assert plain.returncode != 0
    assert "denied the request" in plain.stderr

    body = run("no-such-experiment", labels={"shakeout.dev/trigger": "schedule"})
    labelled = ready.create(body, user="alice", check=False)

    assert labelled.returncode != 0, "the trigger label skipped the admission checks"
    # The operator's label is refused by the API server's policy before any webhook.
    assert "nobody else may set, change or remove them: label shakeout.dev/trigger" in (
        labelled.stderr
    )
    name = body["metadata"]["name"]
    assert ready.kubectl("get", "experimentrun", name, "-n", TEAM, check=False).returncode != 0


def test_a_hand_written_creator_is_not_trusted_without_the_mutating_webhook(
    ready: Cluster,
) -> None:
    deployment(ready, "forge1", replicas=1)
    scale_experiment(ready, "forge1", "forge1", to=0, duration=1)
    bob = json.dumps({"username": "bob", "groups": ["team-a"]})
    with ready.without("mutatingwebhookconfiguration"):
        forged = ready.create(
            run("forge1", annotations={STARTED_BY: bob}), user="alice", check=False
        )
        assert forged.returncode != 0
        # The API server's policy refuses it (the validating webhook would too).
        assert "naming the requesting user (alice)" in forged.stderr

        missing = ready.create(run("forge1"), user="alice", check=False)
        assert missing.returncode != 0
        assert "who started the run is not recorded" in missing.stderr

        # Both webhooks gone: a run without a recorded creator is stored, and the operator
        # refuses it at pick-up instead of skipping the membership check.
        with ready.without("validatingwebhookconfiguration"):
            body = run("forge1")
            ready.create(body, user="alice")
    name = body["metadata"]["name"]
    status = wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, timeout=30)
    assert (status["phase"], status["reason"]) == ("FAILED", "Unauthorized")
    assert "who started the run is not recorded" in status["message"]
    assert status.get("attacks", []) == []


def test_deleting_an_experiment_keeps_its_scheduled_runs(ready: Cluster) -> None:
    deployment(ready, "cron9", replicas=1)
    scale_experiment(ready, "cron9", "cron9", to=1, duration=1, min_ready=0)
    schedule_now(ready, "cron9")

    def scheduled() -> list[dict[str, Any]]:
        selector = "shakeout.dev/experiment=cron9"
        return list(ready.get("experimentruns", "-n", TEAM, "-l", selector)["items"])

    runs = eventually(scheduled, timeout=20, interval=0.5, what="a scheduled run")
    name = runs[0]["metadata"]["name"]
    assert "ownerReferences" not in runs[0]["metadata"]
    assert runs[0]["metadata"]["annotations"].get(STARTED_BY)  # the operator, recorded
    wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, timeout=60)
    ready.merge_patch(
        "experimentrun", name, {"spec": {"findings": "kept after the Experiment"}}, namespace=TEAM
    )

    ready.kubectl("delete", "experiment", "cron9", "-n", TEAM)
    time.sleep(5)  # the garbage collector deletes owned objects within moments

    kept = ready.get("experimentrun", name, "-n", TEAM)
    assert kept["spec"]["findings"] == "kept after the Experiment"
    assert "deletionTimestamp" not in kept["metadata"]
