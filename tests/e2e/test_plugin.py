"""`kubectl shakeout` end to end: run, list, report, stop, stop-all, continue, status."""

from __future__ import annotations

import json

from tests.e2e.conftest import REPO, Cluster
from tests.e2e.runs import (
    TEAM,
    deployment,
    replicas,
    scale_experiment,
    wait_phase,
)


def test_run_wait_prints_progress_and_the_report(ready: Cluster) -> None:
    deployment(ready, "plug1")
    scale_experiment(ready, "plug1", "plug1", to=1, duration=2)
    out = ready.plugin("run", "plug1", "-n", TEAM, "--wait", user="alice").stdout
    for phase in ("CREATED", "ATTACKS_STARTED", "COMPLETED"):
        assert phase in out
    assert "Started by:  alice" in out
    assert "RolledBack" in out
    name = out.split("experimentrun.shakeout.dev/")[1].split()[0]
    listed = ready.plugin("list", "-n", TEAM).stdout
    assert name in listed
    assert "COMPLETED" in listed
    report = json.loads(ready.plugin("report", name, "-n", TEAM, "-o", "json").stdout)
    assert report["status"]["phase"] == "COMPLETED"
    human = ready.plugin("report", name, "-n", TEAM).stdout
    assert "Timeline:" in human
    assert "Action required: not set" in human
    ready.plugin(
        "findings",
        name,
        "p99 latency doubled",
        "--action-required",
        "yes",
        "-n",
        TEAM,
        user="alice",
    )
    human = ready.plugin("report", name, "-n", TEAM).stdout
    assert "Action required: Yes" in human
    assert "Findings:        p99 latency doubled" in human


def test_stop_stop_all_continue_and_status(ready: Cluster) -> None:
    deployment(ready, "plug2")
    scale_experiment(ready, "plug2", "plug2", to=1, duration=120)
    created = ready.plugin("run", "plug2", "-n", TEAM, user="alice").stdout
    name = created.split("experimentrun.shakeout.dev/")[1].split()[0]
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    status = json.loads(ready.plugin("status", "-o", "json", user="carol").stdout)
    assert status["enabled"] is True
    assert status["activeRun"]["name"] == name
    ready.plugin("stop", name, "-n", TEAM, user="carol")
    final = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
    assert (final["phase"], final["reason"]) == ("CANCELED", "Canceled")
    assert replicas(ready, "plug2") == 3

    ready.plugin("stop-all", user="bob")
    refused = ready.plugin("run", "plug2", "-n", TEAM, user="alice", check=False)
    assert refused.returncode != 0
    assert "experimenting is disabled" in refused.stderr
    assert "disabled" in ready.plugin("status", user="bob").stdout
    ready.plugin("continue", user="bob")
    assert "experimenting: enabled" in ready.plugin("status").stdout
    again = ready.plugin("run", "plug2", "-n", TEAM, user="alice").stdout
    assert "created" in again


def test_the_make_run_demo_manifests_run_to_completed(ready: Cluster) -> None:
    """deploy/demo is what `make run` applies; the demo must keep working."""
    ready.kubectl("apply", "-f", str(REPO / "deploy" / "demo"))
    ready.kubectl("rollout", "status", "deployment/shop", "-n", TEAM, "--timeout=60s")
    out = ready.plugin("run", "shop-resilience", "-n", TEAM, "--wait", user="alice").stdout
    assert "Phase:       COMPLETED" in out
    assert "NO (cannot be rolled back)" in out
    assert replicas(ready, "shop") == 4
