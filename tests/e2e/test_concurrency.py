"""Concurrency (issue #16): one run per cluster (the default) or one per namespace; never two
runs on one pod, node or workload; scheduled runs wait their turn up to their bound; Stop
All stops every run in every namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    pinned_deployment,
    race_creates,
    replicas,
    run_status,
    scale_experiment,
    scheduled_style_run,
    set_switch,
    the_one_executed,
    wait_phase,
)
from tests.e2e.test_cluster_attacks import WORKER, cordon_experiment, rails, unschedulable
from tests.unit.test_docs import examples

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
TEAM_B = "team-b"  # bob is a member, alice is not
# The ChaosSwitch examples of docs/lifecycle.md and docs/api.md: this module applies them.
DOC_SWITCHES = [
    (f, d)
    for f, d in examples()
    if isinstance(d, dict) and d.get("kind") == "ChaosSwitch" and "concurrency" in d["spec"]
]
NAMESPACE_MODE = {k: v for k, v in DOC_SWITCHES[0][1]["spec"].items() if k != "enabled"}


@pytest.fixture(scope="module")
def workloads(crds: Cluster) -> None:
    """One workload per team, shared by the tests of this module."""
    deployment(crds, "conc-a", replicas=2)
    deployment(crds, "conc-b", replicas=2, namespace=TEAM_B)
    scale_experiment(crds, "conc-a", "conc-a", duration=30)
    scale_experiment(crds, "conc-b", "conc-b", duration=30, namespace=TEAM_B)


@pytest.fixture
def teams(ready: Cluster, workloads: None) -> Iterator[Cluster]:
    yield ready
    set_switch(ready, True)


@pytest.fixture(scope="module")
def waiting_experiment(crds: Cluster, workloads: None) -> None:
    """An Experiment whose scheduled runs wait up to 60 s (its cron is once a year, so the
    scheduler creates none itself during the test: the test creates them as it would)."""
    scale_experiment(crds, "conc-wait", "conc-a", duration=1)
    crds.merge_patch(
        "experiment",
        "conc-wait",
        {"spec": {"schedule": {"cron": "0 0 1 1 *", "maxWaitSeconds": 60}}},
        namespace=TEAM,
    )


def holders(cluster: Cluster) -> list[dict[str, Any]]:
    status = cluster.get("chaosswitch", "default").get("status") or {}
    return list(status.get("activeRuns") or [])


def cancel(cluster: Cluster, name: str, namespace: str = TEAM) -> None:
    cluster.merge_patch("experimentrun", name, {"spec": {"cancel": True}}, namespace=namespace)


def test_namespace_mode_runs_two_teams_at_once_and_stop_all_stops_both(
    teams: Cluster, waiting_experiment: None
) -> None:
    # The docs' examples: accepted as they stand, and the mode this test sets.
    assert {f for f, _ in DOC_SWITCHES} == {"lifecycle.md", "api.md"}
    assert NAMESPACE_MODE == {"concurrency": "Namespace"}
    for name, example in DOC_SWITCHES:
        assert example["spec"] == DOC_SWITCHES[0][1]["spec"], name
        applied = teams.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(example), check=False
        )
        assert applied.returncode == 0, f"{name}: {applied.stderr}"
    # Cluster mode (the default): bob's run is refused while alice's executes.
    first, _ = create_run(teams, "conc-a")
    wait_phase(teams, first, {"ATTACKS_STARTED"}, timeout=30)
    _, refused = create_run(teams, "conc-b", user="bob", namespace=TEAM_B, check=False)
    assert refused.returncode != 0
    assert f"{TEAM}/{first} holds the cluster-wide lock" in refused.stderr, refused.stderr
    cancel(teams, first)
    wait_phase(teams, first, TERMINAL, timeout=30)
    with rails(teams, NAMESPACE_MODE):
        a, _ = create_run(teams, "conc-a")
        b, _ = create_run(teams, "conc-b", user="bob", namespace=TEAM_B)
        wait_phase(teams, a, {"ATTACKS_STARTED"}, timeout=30)
        wait_phase(teams, b, {"ATTACKS_STARTED"}, timeout=30, namespace=TEAM_B)
        assert {(h["namespace"], h["name"]) for h in holders(teams)} == {(TEAM, a), (TEAM_B, b)}
        # A second run of team-a: its namespace's turn is taken (the same pods, workload).
        _, same = create_run(teams, "conc-a", check=False)
        assert same.returncode != 0
        assert f"{TEAM}/{a} holds namespace {TEAM}'s turn" in same.stderr, same.stderr
        # A scheduled run of team-a waits for its turn, and Stop All ends that wait too.
        waiter = scheduled_style_run(teams, "conc-wait")
        eventually(
            lambda: any(
                c["type"] == "Waiting" for c in run_status(teams, waiter).get("conditions", [])
            ),
            timeout=20,
            what="the scheduled run waiting",
        )
        set_switch(teams, False)  # Stop All
        ends = {
            (ns, n): wait_phase(teams, n, TERMINAL, timeout=30, namespace=ns)
            for ns, n in ((TEAM, a), (TEAM_B, b), (TEAM, waiter))
        }
    for status in ends.values():
        assert (status["phase"], status["reason"]) == ("CANCELED", "StoppedAll"), status
    assert ends[(TEAM, waiter)].get("attacks", []) == [] or all(
        x["state"] in ("Pending", "Skipped") for x in ends[(TEAM, waiter)]["attacks"]
    )
    assert replicas(teams, "conc-a") == 2
    assert replicas(teams, "conc-b", namespace=TEAM_B) == 2
    eventually(lambda: holders(teams) == [], timeout=15, what="every turn given back")


def test_a_scheduled_run_waits_for_its_turn_then_runs_or_is_canceled(
    teams: Cluster, waiting_experiment: None
) -> None:
    holder, _ = create_run(teams, "conc-a")
    wait_phase(teams, holder, {"ATTACKS_STARTED"}, timeout=30)
    canceled = scheduled_style_run(teams, "conc-wait")
    waiter = scheduled_style_run(teams, "conc-wait")

    def waiting(name: str) -> dict[str, Any] | None:
        conditions = run_status(teams, name).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Waiting"), None)

    for name in (canceled, waiter):
        condition = eventually(lambda n=name: waiting(n), timeout=20, what=f"{name} waiting")
        assert condition["status"] == "True"
        assert condition["reason"] == "AnotherRunActive"
        assert f"{TEAM}/{holder}" in condition["message"]
        assert "phase" not in run_status(teams, name)
    # A cancel ends the wait at once, nothing touched.
    cancel(teams, canceled)
    status = wait_phase(teams, canceled, TERMINAL, timeout=10)
    assert (status["phase"], status["reason"]) == ("CANCELED", "Canceled"), status
    assert "waited for its turn" in status["message"] or "while it waited" in status["message"]
    # The holder ends: the waiter takes its turn and runs.
    cancel(teams, holder)
    wait_phase(teams, holder, TERMINAL, timeout=30)
    status = wait_phase(teams, waiter, TERMINAL, timeout=40)
    assert status["phase"] == "COMPLETED", status
    assert replicas(teams, "conc-a") == 2


def test_a_scheduled_run_past_its_bound_fails_with_the_reason(
    teams: Cluster, waiting_experiment: None
) -> None:
    teams.merge_patch(
        "experiment", "conc-wait", {"spec": {"schedule": {"maxWaitSeconds": 2}}}, namespace=TEAM
    )
    holder, _ = create_run(teams, "conc-a")
    wait_phase(teams, holder, {"ATTACKS_STARTED"}, timeout=30)
    late = scheduled_style_run(teams, "conc-wait")
    status = wait_phase(teams, late, TERMINAL, timeout=20)
    assert (status["phase"], status["reason"]) == ("FAILED", "AnotherRunActive"), status
    assert "schedule.maxWaitSeconds" in status["message"], status
    assert holder in status["message"]
    assert status.get("attacks", []) == [] or all(
        x["state"] in ("Pending", "Skipped") for x in status["attacks"]
    )
    cancel(teams, holder)
    wait_phase(teams, holder, TERMINAL, timeout=30)
    teams.merge_patch(
        "experiment", "conc-wait", {"spec": {"schedule": {"maxWaitSeconds": 60}}}, namespace=TEAM
    )


def pinned(cluster: Cluster, name: str, namespace: str) -> None:
    """One replica placed by the scheduler on WORKER, and an Experiment cordoning its node."""
    pinned_deployment(cluster, name, WORKER, namespace)
    cordon_experiment(cluster, name, name, duration=30, namespace=namespace)


def test_two_teams_may_not_hold_one_node(teams: Cluster) -> None:
    pinned(teams, "conc-cord", TEAM)
    pinned(teams, "conc-cord", TEAM_B)
    allow = {**NAMESPACE_MODE, "clusterScopedAttacks": {"namespaces": [TEAM, TEAM_B]}}
    with rails(teams, allow):
        a, _ = create_run(teams, "conc-cord")
        wait_phase(teams, a, {"ATTACKS_STARTED"}, timeout=30)
        assert [h["nodes"] for h in holders(teams) if h["name"] == a] == [[WORKER]]
        _, refused = create_run(teams, "conc-cord", user="bob", namespace=TEAM_B, check=False)
        assert refused.returncode != 0
        assert f"run {TEAM}/{a} holds node(s) {WORKER}" in refused.stderr, refused.stderr
        # The operator's own check (a scheduled run is not checked at admission).
        late = scheduled_style_run(teams, "conc-cord", TEAM_B)
        status = wait_phase(teams, late, TERMINAL, timeout=20, namespace=TEAM_B)
        assert (status["phase"], status["reason"]) == ("FAILED", "TargetsHeld"), status
        cancel(teams, a)
        wait_phase(teams, a, TERMINAL, timeout=30)
    assert not unschedulable(teams, WORKER)


def test_twenty_concurrent_creates_in_one_namespace_never_share_a_pod(teams: Cluster) -> None:
    """Namespace mode: the runs of one namespace race for its one turn (the same pods)."""
    scale_experiment(teams, "conc-race", "conc-a", duration=2)
    with rails(teams, NAMESPACE_MODE):
        finals = race_creates(teams, "conc-race")
    the_one_executed(finals)
    assert replicas(teams, "conc-a") == 2
