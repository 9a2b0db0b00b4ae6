"""Attack steps and a blast radius per attack on the real control plane: the two worked
examples of docs/api.md (### Attack steps and per-attack blast radius) applied and run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.e2e.conftest import Cluster
from tests.e2e.runs import TEAM, TERMINAL, create_run, deployment, wait_phase
from tests.unit.test_docs import examples

# The machine is shared: a step may start this much later than its offset.
LATE = 6.0


def doc_experiment(name: str) -> dict[str, Any]:
    """The Experiment of docs/api.md named `name`, as the docs show it."""
    (found,) = [
        d
        for f, d in examples()
        if f == "api.md" and d.get("kind") == "Experiment" and d["metadata"]["name"] == name
    ]
    return found


def at(time: str) -> datetime:
    return datetime.fromisoformat(time)


def since_attacks_started(status: dict[str, Any], time: str) -> float:
    begun = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STARTED")
    return (at(time) - at(begun)).total_seconds()


def test_three_steps_start_in_order_at_their_offsets_and_the_report_shows_them(
    ready: Cluster,
) -> None:
    deployment(ready, "checkout", replicas=3)
    experiment = doc_experiment("checkout-steps")
    ready.apply(experiment)
    try:
        name, _ = create_run(ready, "checkout-steps")
        status = wait_phase(ready, name, TERMINAL, timeout=90)
        assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
        attacks = {a["name"]: a for a in status["attacks"]}
        assert [attacks[n]["state"] for n in ("step-1", "step-2", "step-3")] == [
            "RolledBack",
            "RolledBack",
            "Completed",
        ]
        start = {n: since_attacks_started(status, a["appliedAt"]) for n, a in attacks.items()}
        end = {n: since_attacks_started(status, a["endedAt"]) for n, a in attacks.items()}
        # step-1 with the phase, step-2 at its offset of 2 s, step-3 once step-2 ended.
        assert 0 <= start["step-1"] < LATE, start
        assert 2 <= start["step-2"] < 2 + LATE, start
        assert end["step-2"] >= start["step-2"] + 2, (start, end)
        assert end["step-2"] <= start["step-3"] < end["step-2"] + LATE, (start, end)
        stopped = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STOPPED")
        assert since_attacks_started(status, stopped) >= max(end.values())
        # Each step resolved its own targets when it started.
        assert all(attacks[n]["targetNames"] for n in ("step-2", "step-3")), attacks

        report = ready.plugin("report", name, "-n", TEAM, "-o", "markdown", user="alice").stdout
        table = report.split("Attacks over time:", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in table.splitlines() if line.startswith("| step-")]
        assert [row.split("|")[1].strip() for row in rows] == ["step-1", "step-2", "step-3"]
        offsets = [int(row.split("|")[3].strip().strip("+ s")) for row in rows]
        assert offsets[0] < LATE
        assert 2 <= offsets[1] <= offsets[2], report
    finally:
        ready.kubectl("delete", "experiment", "checkout-steps", "-n", TEAM)


def test_attacks_with_their_own_blast_radius_hit_different_pods_capped_as_a_union(
    ready: Cluster,
) -> None:
    deployment(ready, "cart", replicas=2)
    deployment(ready, "cart-db", replicas=2)
    experiment = doc_experiment("cart-two-radii")
    ready.apply(experiment)
    try:
        # Each attack alone is within the cap of 2 (2 cart pods; 1 cart-db pod), together
        # they are 3 targets: refused at admission, nothing stored.
        ready.merge_patch("chaosswitch", "default", {"spec": {"caps": {"maxTargets": 2}}})
        _, refused = create_run(ready, "cart-two-radii", check=False)
        assert refused.returncode != 0
        assert "would target 3 pods, over the cluster-wide cap of 2" in refused.stderr
        ready.merge_patch("chaosswitch", "default", {"spec": {"caps": None}})

        name, _ = create_run(ready, "cart-two-radii")
        status = wait_phase(ready, name, TERMINAL, timeout=90)
        assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
        attacks = {a["name"]: a for a in status["attacks"]}
        isolated = attacks["isolate-cart"]["targetNames"]
        killed = attacks["kill-one-db"]["targetNames"]
        assert len(isolated) == 2
        assert all(p.startswith("cart-") and not p.startswith("cart-db-") for p in isolated)
        assert len(killed) == 1
        assert killed[0].startswith("cart-db-")
        assert status["targets"]["selected"] == 3
        assert sorted(status["targets"]["names"]) == sorted(isolated + killed)
        # The report lists the targets per attack.
        report = ready.plugin("report", name, "-n", TEAM, "-o", "markdown", user="alice").stdout
        assert killed[0] in report.split("Attacks over time:", 1)[1]
    finally:
        ready.merge_patch("chaosswitch", "default", {"spec": {"caps": None}})
        ready.kubectl("delete", "experiment", "cart-two-radii", "-n", TEAM)
