"""Allowed and blackout windows, end to end: a blackout refuses a manual run at admission
and records a scheduled one FAILED OutsideWindow; an Experiment outside its allowed
windows is refused (and its preview says so); a run going when a blackout begins is
canceled BlackoutBegan and its fault rolled back. The docs' examples are accepted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import (
    TEAM,
    TERMINAL,
    create_run,
    deployment,
    replicas,
    run_status,
    scale_experiment,
    scheduled_style_run,
    wait_phase,
)
from tests.unit.test_docs import examples

APP = "windows-web"


def days_from_today(*offsets: int) -> list[str]:
    """UTC dates around today: a window of yesterday, today and tomorrow covers now for
    the whole test, whenever it runs (midnight included)."""
    today = datetime.now(UTC).date()
    return [(today + timedelta(days=d)).isoformat() for d in offsets]


def covering_now(name: str = "freeze") -> dict[str, Any]:
    return {"name": name, "timeZone": "UTC", "dates": days_from_today(-1, 0, 1)}


@contextlib.contextmanager
def blackouts(cluster: Cluster, *windows: dict[str, Any]) -> Iterator[None]:
    """The switch's blackout windows set for the block, and removed after it."""
    patch = json.dumps({"spec": {"blackoutWindows": list(windows)}})
    cluster.merge_patch("chaosswitch", "default", patch)
    try:
        yield
    finally:
        cluster.merge_patch("chaosswitch", "default", '{"spec":{"blackoutWindows":null}}')


def scheduled_run(cluster: Cluster, experiment: str) -> str:
    """A run made the way the scheduler makes one (the pick-up checks it)."""
    name = f"{experiment}-sched"
    cluster.kubectl("delete", "experimentrun", name, "-n", TEAM, check=False)
    return scheduled_style_run(cluster, experiment, name=name)


@pytest.fixture(scope="module")
def workload(crds: Cluster) -> str:
    """One Deployment of 2 replicas for the module's runs (ScaleWorkload: API-level)."""
    deployment(crds, APP, replicas=2)
    return APP


def test_a_blackout_refuses_a_manual_run_and_fails_a_scheduled_one(
    ready: Cluster, workload: str
) -> None:
    scale_experiment(ready, "windows-freeze", workload, to=1, duration=2)
    with blackouts(ready, covering_now()):
        _, refused = create_run(ready, "windows-freeze", check=False)
        assert refused.returncode != 0
        assert "blackout window freeze (" in refused.stderr
        assert days_from_today(0)[0] in refused.stderr
        name = scheduled_run(ready, "windows-freeze")
        status = wait_phase(ready, name, TERMINAL, timeout=30)
        # The switch's history records the change as the rail blackoutWindows.
        generation = ready.get("chaosswitch", "default")["metadata"]["generation"]

        def recorded() -> list[str] | None:
            history = ready.get("chaosswitch", "default").get("status", {}).get("history", [])
            entry = next((e for e in history if e.get("generation") == generation), None)
            return entry["rails"] if entry else None

        assert eventually(recorded, timeout=15, what="the change in history") == ["blackoutWindows"]
    assert (status["phase"], status["reason"]) == ("FAILED", "OutsideWindow")
    assert "blackout window freeze (" in status["message"]
    assert status.get("attacks", []) == []
    assert replicas(ready, workload) == 2  # nothing attacked


def test_an_experiment_outside_its_allowed_windows_is_refused(
    ready: Cluster, workload: str
) -> None:
    scale_experiment(ready, "windows-later", workload, to=1, duration=2)
    later = {"name": "later", "timeZone": "UTC", "dates": days_from_today(3)}
    ready.merge_patch(
        "experiment",
        "windows-later",
        json.dumps({"spec": {"allowedWindows": [later]}}),
        namespace=TEAM,
    )
    try:
        _, refused = create_run(ready, "windows-later", check=False)
        assert refused.returncode != 0
        assert "outside every allowed window of Experiment team-a/windows-later" in refused.stderr
        assert f"later ({days_from_today(3)[0]}, UTC)" in refused.stderr

        def preview() -> dict[str, Any] | None:
            found = ready.get("experiment", "windows-later", "-n", TEAM)
            shown = found.get("status", {}).get("preview") or {}
            return shown if shown.get("reason") == "OutsideWindow" else None

        shown = eventually(preview, timeout=30, what="the preview saying OutsideWindow")
        assert shown["allowed"] is False
        assert "later (" in shown["message"]
    finally:
        ready.kubectl("delete", "experiment", "windows-later", "-n", TEAM)


def test_a_blackout_that_begins_cancels_a_run_and_rolls_it_back(
    ready: Cluster, workload: str
) -> None:
    scale_experiment(ready, "windows-cut", workload, to=1, duration=120)
    name, _ = create_run(ready, "windows-cut")
    wait_phase(ready, name, {"ATTACKS_STARTED", *TERMINAL}, timeout=30)
    eventually(lambda: replicas(ready, workload) == 1, timeout=30, what="scaled to 1")
    with blackouts(ready, covering_now("maintenance")):
        status = wait_phase(ready, name, TERMINAL, timeout=30)
    assert (status["phase"], status["reason"]) == ("CANCELED", "BlackoutBegan"), status
    assert "blackout window maintenance (" in status["message"]
    assert "rolled back" in status["message"]
    assert [a["state"] for a in run_status(ready, name)["attacks"]] == ["RolledBack"]
    assert replicas(ready, workload) == 2  # the fault rolled back


def test_the_docs_window_examples_are_accepted(ready: Cluster) -> None:
    switches = [
        d
        for _, d in examples()
        if isinstance(d, dict) and d.get("kind") == "ChaosSwitch" and "spec" in d
    ]
    with_windows = [d for d in switches if d["spec"].get("blackoutWindows")]
    assert with_windows, "docs/api.md shows a ChaosSwitch with blackoutWindows"
    for switch in with_windows:
        result = ready.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(switch), check=False
        )
        assert result.returncode == 0, result.stderr
