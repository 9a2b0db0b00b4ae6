"""The operator against the real API server: status written through the status subresource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import TEAM, create_run, deployment, scale_experiment, wait_phase
from tests.e2e.test_crds import experiment


def valid_condition(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    status = cluster.get("experiment", name, "-n", namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == "Valid"), None)


def test_operator_reports_reversibility_of_attacks(
    crds: Cluster, operator: Operator, namespace: str
) -> None:
    scale = {
        "name": "scale-down",
        "type": "ScaleWorkload",
        "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}, "replicas": 0},
    }
    crds.create(
        experiment("mixed", namespace, attacks=[{"name": "kill", "type": "PodDelete"}, scale])
    )
    cond = eventually(
        lambda: valid_condition(crds, "mixed", namespace), timeout=30, what="Valid condition"
    )
    assert cond["status"] == "True", cond
    assert "cannot be rolled back: kill" in cond["message"]
    status = crds.get("experiment", "mixed", "-n", namespace)["status"]
    assert status["attacks"] == [
        {"name": "kill", "type": "PodDelete", "reversible": False},
        {"name": "scale-down", "type": "ScaleWorkload", "reversible": True},
    ]
    assert status["observedGeneration"] == 1
    # kubectl's Attacks column names every attack type, not the first one only.
    table = crds.kubectl("get", "experiment", "mixed", "-n", namespace).stdout
    assert "PodDelete,ScaleWorkload" in table, table
    # An edit of the spec is seen: the generation moves and the summary follows.
    crds.kubectl(
        "patch",
        "experiment",
        "mixed",
        "-n",
        namespace,
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/attacks/0"}]),
    )
    eventually(
        lambda: (
            crds.get("experiment", "mixed", "-n", namespace)["status"].get("observedGeneration")
            == 2
        ),
        what="observedGeneration 2",
    )
    status = crds.get("experiment", "mixed", "-n", namespace)["status"]
    assert status["irreversibleAttacks"] == 0
    assert operator.running()


def test_metrics_count_runs_attacks_rollbacks_and_latencies(
    ready: Cluster, live_operator: Operator
) -> None:
    operator = live_operator
    deployment(ready, "metered", replicas=2)
    scale_experiment(ready, "metered", "metered", to=1, duration=120)
    name, _ = create_run(ready, "metered")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    ready.merge_patch("experimentrun", name, {"spec": {"cancel": True}}, namespace=TEAM)
    wait_phase(ready, name, {"CANCELED"}, timeout=15)
    values = eventually(
        lambda: (
            (m := operator.metrics()).get('shakeout_runs_total{phase="CANCELED",reason="Canceled"}')
            and m
        ),
        what="the canceled run counted",
    )
    assert values['shakeout_attacks_applied_total{type="ScaleWorkload"}'] >= 1
    assert values['shakeout_attacks_rolled_back_total{type="ScaleWorkload"}'] >= 1
    assert values['shakeout_stop_duration_seconds_count{reason="Canceled"}'] >= 1
    assert values['shakeout_webhook_duration_seconds_count{webhook="run-preconditions"}'] >= 1
    assert "shakeout_active_runs" in values


def test_json_logs_on_request(crds: Cluster, tmp_path: Path) -> None:
    quiet = Operator(
        crds,
        tmp_path / "json.log",
        extra=("--log-format=json", "--no-webhook", "--namespace=no-such-namespace"),
    )
    quiet.start()
    quiet.stop()
    lines = [line for line in quiet.output().splitlines() if line.startswith("{")]
    assert lines, quiet.output()[:2000]
    record = json.loads(lines[0])
    assert "message" in record
