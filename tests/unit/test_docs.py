"""The docs' own consistency, without a cluster: their YAML blocks and their links.

tests/e2e/test_docs_examples.py sends the same YAML blocks to a real API server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def examples() -> list[tuple[str, Any]]:
    """(file, document) for every YAML block of the docs."""
    found = []
    for path in docs():
        for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S):
            found += [(path.name, doc) for doc in yaml.safe_load_all(block) if doc]
    return found


def test_the_docs_show_examples_of_each_kind() -> None:
    kinds = {d.get("kind") for _, d in examples() if isinstance(d, dict)}
    assert {"Experiment", "ExperimentRun"} <= kinds
    # Every block is an object or a spec fragment: nothing else hides in the docs.
    for name, doc in examples():
        assert isinstance(doc, dict), (name, doc)
        assert "kind" in doc or set(doc) == {"spec"}, (name, doc)


def test_docs_name_only_files_that_exist() -> None:
    for path in docs():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
