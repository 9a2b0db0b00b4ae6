"""The operator against the real API server: status written through the status subresource."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.conftest import Cluster, Operator, eventually
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
