"""Every Kubernetes object shown in README.md and docs/*.md is accepted by the API server
(schema, CEL, webhooks), and the ExperimentRun example really runs.

The checks that need no cluster (every block is an object, every link resolves) are in
tests/unit/test_docs.py, which also finds the examples.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.e2e.conftest import Cluster
from tests.e2e.runs import TEAM, TERMINAL, deployment, wait_phase
from tests.unit.test_docs import examples


def objects(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in examples() if isinstance(d, dict) and d.get("kind") == kind]


def test_every_experiment_example_is_accepted(ready: Cluster) -> None:
    experiments = objects("Experiment")
    assert len(experiments) >= 4
    base = experiments[0][1]
    fragments = [(f, d) for f, d in examples() if isinstance(d, dict) and set(d) == {"spec"}]
    # A spec fragment is shown merged into the first Experiment example.
    merged = [(f, {**base, "spec": {**base["spec"], **d["spec"]}}) for f, d in fragments]
    for name, obj in [*experiments, *merged]:
        result = ready.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(obj), check=False
        )
        assert result.returncode == 0, f"{name}: {obj['metadata']}: {result.stderr}"


def test_the_run_example_runs(ready: Cluster) -> None:
    (_, experiment), *_ = [(f, d) for f, d in objects("Experiment") if f == "api.md"]
    (_, run), *_ = [(f, d) for f, d in objects("ExperimentRun") if f == "api.md"]
    assert experiment["metadata"]["namespace"] == run["metadata"]["namespace"] == TEAM
    deployment(ready, "web", replicas=3)
    ready.apply(experiment)
    try:
        created = ready.create(run, user="alice")
        name = created.stdout.split()[0].split("/")[-1]
        status = wait_phase(ready, name, {"ATTACKS_STARTED", *TERMINAL}, timeout=60)
        assert status["phase"] == "ATTACKS_STARTED", status
        assert "cannot be rolled back: kill-one (PodDelete)" in created.stderr
        ready.merge_patch("experimentrun", name, {"spec": {"cancel": True}}, namespace=TEAM)
        status = wait_phase(ready, name, TERMINAL, timeout=60)
        assert (status["phase"], status["reason"]) == ("CANCELED", "Canceled"), status
    finally:
        ready.kubectl("delete", "experiment", experiment["metadata"]["name"], "-n", TEAM)
