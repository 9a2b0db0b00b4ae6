"""SEC-02 and SEC-10, played by the attackers: a run's metadata is the operator's to
decide with, who started or canceled it cannot be forged, a run that vanishes mid-run is
still rolled back, and a run's report is for its team only.

Each refusal is made by the API server's own policy (deploy/rbac/run-changes-policy.yaml),
so the attacks are played with the operator's webhooks deleted as well."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    patch_run_as,
    replicas,
    scale_experiment,
    wait_phase,
)

RECORDS = ("configmaps", "-n", "shakeout-system", "-l", "shakeout.dev/rollback-record")
OWNER = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "name": "gone",
    "uid": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
}


@pytest.fixture(params=["webhooks", "no webhooks"])
def webhooks(request: pytest.FixtureRequest) -> bool:
    """Whether the operator's webhooks stay in place for the attacks (else both
    configurations are deleted: without_webhooks)."""
    return bool(request.param == "webhooks")


@contextmanager
def without_webhooks(cluster: Cluster, deleted: bool) -> Iterator[None]:
    with ExitStack() as stack:
        if deleted:
            stack.enter_context(cluster.without("validatingwebhookconfiguration"))
            stack.enter_context(cluster.without("mutatingwebhookconfiguration"))
        yield


def live_run(cluster: Cluster, app: str) -> str:
    deployment(cluster, app)
    scale_experiment(cluster, app, app, to=1, duration=120)
    name, _ = create_run(cluster, app, user="alice")
    wait_phase(cluster, name, {"ATTACKS_STARTED"}, timeout=30)
    assert replicas(cluster, app) == 1
    return name


def refused(cluster: Cluster, user: str, *args: str) -> str:
    """kubectl as `user`, which the API server must refuse; its message."""
    result = cluster.kubectl(*args, user=user, check=False)
    assert result.returncode != 0, f"{user} was allowed: kubectl {' '.join(args)}"
    return result.stderr


def refused_patch(cluster: Cluster, user: str, name: str, body: dict[str, Any]) -> str:
    message = patch_run_as(cluster, user, name, body)
    assert message is not None, f"{user} was allowed to patch {name} with {body}"
    return message


def patch(name: str, body: dict[str, Any]) -> tuple[str, ...]:
    return ("patch", "experimentrun", name, "-n", TEAM, "--type=merge", "-p", json.dumps(body))


def test_nobody_but_the_operator_hides_strands_or_prunes_a_run(
    ready: Cluster, webhooks: bool
) -> None:
    app = "meta-w" if webhooks else "meta-n"
    name = live_run(ready, app)
    with without_webhooks(ready, deleted=not webhooks):
        # (Patches, as carol may not read the run: SEC-10.)
        for user in ("carol", "alice"):  # an outsider, and a member of the team
            # 2a: hiding the live run from the operator's watch.
            hide = {"metadata": {"labels": {"shakeout.dev/finished": "true"}}}
            message = refused_patch(ready, user, name, hide)
            assert "shakeout-run-changes" in message
            # 2b: the finalizer stripped, then a dangling owner for the garbage collector.
            refused_patch(ready, user, name, {"metadata": {"finalizers": None}})
            # 2c: someone else's run made a schedule's, to be pruned.
            schedule = {"shakeout.dev/trigger": "schedule", "shakeout.dev/experiment": app}
            refused_patch(ready, user, name, {"metadata": {"labels": schedule}})
            # kopf's own bookkeeping under the operator's prefix.
            kopf_state = {"shakeout.dev/last-handled-configuration": "{}"}
            refused_patch(ready, user, name, {"metadata": {"annotations": kopf_state}})
        outsider = refused_patch(ready, "carol", name, {"metadata": {"ownerReferences": [OWNER]}})
        assert "may cancel a run (spec.cancel: true) and nothing else" in outsider
        refused_patch(ready, "carol", name, {"metadata": {"labels": {"innocent": "true"}}})
        # 2d: a forged canceller, with or without a cancel.
        forged = json.dumps({"username": "alice", "groups": ["team-a", "system:authenticated"]})
        stamp = {"shakeout.dev/canceled-by": forged}
        message = refused_patch(ready, "carol", name, {"metadata": {"annotations": stamp}})
        assert "records who canceled the run" in message
        # Nothing of that reached the run: it is still live, watched, and its attack applied.
        meta = ready.get("experimentrun", name, "-n", TEAM)["metadata"]
        assert "shakeout.dev/finished" not in (meta.get("labels") or {})
        assert meta["finalizers"] == ["shakeout.dev/finalizer"]
        assert replicas(ready, app) == 1
        # A cancel with a forged canceller: the webhook records the requester over it; without
        # the webhook the policy refuses it, and carol's cancel must name herself.
        forged_cancel = {"spec": {"cancel": True}, "metadata": {"annotations": stamp}}
        if not webhooks:
            message = refused_patch(ready, "carol", name, forged_cancel)
            assert "naming the requesting user (carol)" in message
            mine = json.dumps(
                {"username": "carol", "groups": ["system:authenticated"]}, separators=(",", ":")
            )
            forged_cancel["metadata"] = {"annotations": {"shakeout.dev/canceled-by": mine}}
        assert patch_run_as(ready, "carol", name, forged_cancel) is None
        status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
        assert (status["phase"], status["canceledBy"]["username"]) == ("CANCELED", "carol")
        assert replicas(ready, app) == 3


def test_a_member_cannot_start_a_run_in_someone_elses_name(ready: Cluster, webhooks: bool) -> None:
    deployment(ready, "meta-forge", replicas=1)
    scale_experiment(ready, "meta-forge", "meta-forge", to=0, duration=1)
    forged = json.dumps({"username": "bob", "groups": ["team-a", "system:authenticated"]})
    run = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {
            "name": f"meta-forge-{int(webhooks)}",
            "namespace": TEAM,
            "annotations": {"shakeout.dev/started-by": forged},
        },
        "spec": {"experimentRef": {"name": "meta-forge"}},
    }
    with without_webhooks(ready, deleted=not webhooks):
        result = ready.create(run, user="alice", check=webhooks)
    if webhooks:
        # The webhook records the requester over whatever the creator wrote.
        created = ready.get("experimentrun", run["metadata"]["name"], "-n", TEAM)
        recorded = json.loads(created["metadata"]["annotations"]["shakeout.dev/started-by"])
        assert recorded["username"] == "alice"
        wait_phase(ready, run["metadata"]["name"], {"COMPLETED", "FAILED", "CANCELED"})
    else:
        assert result.returncode != 0
        assert "records who created the run" in result.stderr
        assert replicas(ready, "meta-forge") == 1


def test_an_outsider_cancels_a_run_by_name_but_cannot_read_it(ready: Cluster) -> None:
    """SEC-10: a run's report (findings, targets, who started it, the Experiment snapshot)
    is for those who may view its namespace; anyone may still stop it, by the name the
    switch shows everyone."""
    name = live_run(ready, "meta-read")
    for args in (
        ("get", "experimentrun", name, "-n", TEAM),
        ("get", "experimentruns", "-n", TEAM),
        ("get", "experimentruns", "-A"),
    ):
        assert "forbidden" in refused(ready, "carol", *args).lower()
    holder = ready.get("chaosswitch", "default")["status"]["activeRun"]
    assert (holder["namespace"], holder["name"]) == (TEAM, name)
    assert patch_run_as(ready, "carol", name, {"spec": {"cancel": True}}) is None
    status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
    assert status["phase"] == "CANCELED"
    assert ready.kubectl("get", "experimentrun", name, "-n", TEAM, user="alice").returncode == 0
    assert replicas(ready, "meta-read") == 3


def records(cluster: Cluster) -> list[dict[str, Any]]:
    return list(cluster.get(*RECORDS)["items"])


def vanish(cluster: Cluster, name: str) -> None:
    """What only a cluster admin may still do: the finalizer stripped and the run deleted
    (or a namespace force-deleted): the run's own status, its journal, is gone."""
    cluster.kubectl(*patch(name, {"metadata": {"finalizers": None}}))
    cluster.kubectl("delete", "experimentrun", name, "-n", TEAM, "--wait=true")


def test_a_run_that_vanishes_mid_attack_is_rolled_back(ready: Cluster) -> None:
    name = live_run(ready, "meta-gone")
    (record,) = records(ready)
    assert json.loads(record["data"]["status"])["attacks"][0]["state"] == "Applied"
    vanish(ready, name)
    eventually(lambda: replicas(ready, "meta-gone") == 3, timeout=15, what="the scale restored")
    eventually(lambda: not records(ready), timeout=15, what="the record gone")
    eventually(
        lambda: not (ready.get("chaosswitch", "default").get("status") or {}).get("activeRun"),
        timeout=15,
        what="the lock released",
    )
    reasons = [
        e["reason"]
        for e in ready.get("events", "-n", TEAM)["items"]
        if e["involvedObject"].get("name") == name
    ]
    assert "RunDeleted" in reasons


def test_a_run_that_vanishes_while_the_operator_is_down_is_rolled_back_at_its_start(
    ready: Cluster, live_operator: Operator
) -> None:
    name = live_run(ready, "meta-down")
    live_operator.kill()
    vanish(ready, name)
    assert replicas(ready, "meta-down") == 1  # nobody rolled it back yet
    live_operator.start()
    eventually(lambda: replicas(ready, "meta-down") == 3, timeout=30, what="the scale restored")
    eventually(lambda: not records(ready), timeout=15, what="the record gone")
    assert "rolled back 1 run(s) whose object vanished mid-run" in live_operator.output()


def test_a_live_run_labelled_finished_is_taken_back_into_the_watch(
    ready: Cluster, live_operator: Operator
) -> None:
    """Where the policy is absent (or a cluster admin labels it), a live run labelled
    finished leaves the operator's watch: the operator takes it back at its next sweep
    (here: its start), and a cancel reaches it again."""
    name = live_run(ready, "meta-hide")
    ready.kubectl("label", "experimentrun", name, "-n", TEAM, "shakeout.dev/finished=true")
    live_operator.kill()
    live_operator.start()
    eventually(
        lambda: (
            "shakeout.dev/finished"
            not in (ready.get("experimentrun", name, "-n", TEAM)["metadata"].get("labels") or {})
        ),
        timeout=30,
        what="the label taken off",
    )
    assert patch_run_as(ready, "bob", name, {"spec": {"cancel": True}}) is None
    status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=20)
    assert status["phase"] == "CANCELED"
    assert replicas(ready, "meta-hide") == 3
