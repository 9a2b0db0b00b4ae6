"""Every Kubernetes object shown in README.md and docs/*.md is accepted by the API server
(schema, CEL, webhooks), and the ExperimentRun example really runs."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.e2e.conftest import REPO, Cluster
from tests.e2e.runs import TEAM, deployment, wait_phase

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


def examples() -> list[tuple[str, Any]]:
    """(file, document) for every YAML block of the docs."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S):
            found += [(path.name, doc) for doc in yaml.safe_load_all(block) if doc]
    return found


def objects(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in examples() if isinstance(d, dict) and d.get("kind") == kind]


def test_the_docs_show_examples_of_each_kind() -> None:
    kinds = {d.get("kind") for _, d in examples() if isinstance(d, dict)}
    assert {"Experiment", "ExperimentRun"} <= kinds
    # Every block is an object or a spec fragment: nothing else hides in the docs.
    for name, doc in examples():
        assert isinstance(doc, dict), (name, doc)
        assert "kind" in doc or set(doc) == {"spec"}, (name, doc)


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


def test_docs_name_only_files_that_exist() -> None:
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
