"""`kubectl shakeout` end to end: run, list, report, stop, stop-all, continue, status."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Cluster, Operator
from tests.e2e.runs import (
    TEAM,
    deployment,
    replicas,
    scale_experiment,
    set_switch,
    wait_no_active_runs,
    wait_phase,
)


@pytest.fixture
def ready(crds: Cluster, live_operator: Operator) -> Iterator[Cluster]:
    set_switch(crds, True)
    wait_no_active_runs(crds)
    yield crds
    set_switch(crds, True)


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
