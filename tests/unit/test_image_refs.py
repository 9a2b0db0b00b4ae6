"""The image refs agree: what `make image` tags (tools/images/build.sh) is what deploy/ runs.

The images themselves are checked by tests/image (`make test-image`, root).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def containers(path: Path) -> list[dict[str, object]]:
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") in {"Deployment", "DaemonSet"}:
            found += doc["spec"]["template"]["spec"]["containers"]
    return found


def test_deploy_runs_the_image_make_image_tags() -> None:
    build = (REPO / "tools/images/build.sh").read_text()
    assert "OPERATOR_REF=localhost/shakeout/operator:$VERSION" in build
    images = [
        c["image"]
        for name in ("operator.yaml", "agent.yaml")
        for c in containers(REPO / "deploy/base" / name)
    ]
    assert images == [f"localhost/shakeout/operator:{VERSION}"] * 2


def test_the_containerfile_builds_on_the_local_base_only() -> None:
    text = (REPO / "Containerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}"]
    assert "ARG BASE=localhost/shakeout/debian-base:bookworm" in text
    assert "USER 65532:65532" in text
