"""kstatus's verdicts (sigs.k8s.io/cli-utils, as Flux and kpt compute them) on our status.

Runs the real library through the kstatus checker that `make controlplane` builds
(tools/controlplane/kstatus). Not built is a failure, never a skip.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shakeout.sandbox import binaries
from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import TEAM, create_run, deployment, scale_experiment, wait_phase


@pytest.fixture(scope="module")
def kstatus() -> Path:
    hint = "run `make controlplane` (or tools/controlplane/build.sh) to build it"
    try:
        path = binaries.kstatus()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot locate the kstatus checker ({exc}): {hint}", pytrace=False)
    if not path.exists():
        pytest.fail(f"the kstatus checker is not built, {path} is missing: {hint}", pytrace=False)
    return path


def verdicts(kstatus: Path, obj: dict[str, Any]) -> list[dict[str, str]]:
    proc = subprocess.run(
        [str(kstatus)], input=json.dumps(obj), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def run(
    generation: int = 2,
    observed: int = 2,
    conditions: dict[str, str] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """An ExperimentRun as the API server returns it, with our status conditions."""
    metadata: dict[str, Any] = {"name": "r1", "namespace": "team-a", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": metadata,
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": t, "status": s, "reason": "Why", "message": f"{t} is {s}"}
                for t, s in (conditions or {}).items()
            ],
        },
    }


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        pytest.param(
            run(generation=3, observed=2),
            "InProgress",
            "ExperimentRun generation is 3, but latest observed generation is 2",
            id="observedGeneration-below-generation",
        ),
        pytest.param(
            run(conditions={"Reconciling": "True", "Stalled": "False"}),
            "InProgress",
            "Reconciling is True",
            id="Reconciling-True",
        ),
        pytest.param(
            run(conditions={"Reconciling": "False", "Stalled": "True"}),
            "Failed",
            "Stalled is True",
            id="Stalled-True",
        ),
        pytest.param(
            run(conditions={"Reconciling": "False", "Stalled": "False"}, deleting=True),
            "Terminating",
            "Resource scheduled for deletion",
            id="deletionTimestamp",
        ),
        pytest.param(
            run(conditions={"Reconciling": "False", "Stalled": "False", "Succeeded": "True"}),
            "Current",
            "Resource is current",
            id="observed-and-neither-True",
        ),
    ],
)
def test_verdict(kstatus: Path, obj: dict[str, Any], status: str, message: str) -> None:
    assert verdicts(kstatus, obj) == [
        {"kind": "ExperimentRun", "name": "r1", "status": status, "message": message}
    ]


def test_a_list_gives_one_line_per_item(kstatus: Path) -> None:
    items = [run(generation=3, observed=2), run(conditions={"Stalled": "True"})]
    got = verdicts(kstatus, {"apiVersion": "v1", "kind": "List", "items": items})
    assert [v["status"] for v in got] == ["InProgress", "Failed"]


@pytest.mark.parametrize("text", ["", "not json", "[]", "null", '{"metadata": {}}'])
def test_bad_input_exits_2(kstatus: Path, text: str) -> None:
    proc = subprocess.run([str(kstatus)], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""


def judge(kstatus: Path, cluster: Cluster, *args: str) -> str:
    obj = cluster.get(*args)
    (verdict,) = verdicts(kstatus, obj)
    return verdict["status"]


def test_runs_and_experiments_written_by_the_operator(kstatus: Path, ready: Cluster) -> None:
    """Objects as the operator really wrote them: a live run InProgress, a completed one
    Current, a failed one Failed; a valid Experiment Current, an invalid one Failed."""
    deployment(ready, "ks", replicas=2)
    scale_experiment(ready, "ks", "ks", to=1, duration=3)
    assert judge(kstatus, ready, "experiment", "ks", "-n", TEAM) == "Current"
    name, _ = create_run(ready, "ks")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    assert judge(kstatus, ready, "experimentrun", name, "-n", TEAM) == "InProgress"
    wait_phase(ready, name, {"COMPLETED"}, timeout=60)
    assert judge(kstatus, ready, "experimentrun", name, "-n", TEAM) == "Current"
    # An Experiment the webhook let through (it ignores its own failures) but the operator
    # finds invalid: its status says Stalled, kstatus says Failed.
    with ready.without("validatingwebhookconfiguration"):
        ready.apply(
            {
                "apiVersion": "shakeout.dev/v1alpha1",
                "kind": "Experiment",
                "metadata": {"name": "ks-cron", "namespace": TEAM},
                "spec": {
                    "blastRadius": {"selector": {"matchLabels": {"app": "ks"}}},
                    "attacks": [{"name": "k", "type": "PodDelete"}],
                    "schedule": {"cron": "61 * * * *"},
                },
            }
        )
    eventually(
        lambda: judge(kstatus, ready, "experiment", "ks-cron", "-n", TEAM) == "Failed",
        what="kstatus Failed for an invalid Experiment",
    )
    # Regression: the webhook refused every change, deletion included, of an Experiment
    # whose stored spec it found invalid. Now only spec changes are judged.
    ready.kubectl("label", "experiment", "ks-cron", "-n", TEAM, "owner=team-a")
    ready.kubectl("delete", "experiment", "ks-cron", "-n", TEAM, "--timeout=20s")


def test_a_failed_run_is_failed_for_kstatus(kstatus: Path, ready: Cluster) -> None:
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "ks-none", "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "nothing-here"}}},
                "attacks": [{"name": "k", "type": "PodDelete"}],
            },
        }
    )
    # Without the webhook the run is stored; the operator refuses it: FAILED NoTargets.
    with ready.without("validatingwebhookconfiguration"):
        name, _ = create_run(ready, "ks-none")
    status = wait_phase(ready, name, {"FAILED"}, timeout=30)
    assert status["reason"] == "NoTargets"
    assert judge(kstatus, ready, "experimentrun", name, "-n", TEAM) == "Failed"
