"""Files generated from the code (crds/ from the models, deploy/examples/ from the
templates of `kubectl shakeout init`): written, or checked for drift, the same way."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path


def write(directory: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each file (name -> text) into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def drift(directory: Path, expected: Mapping[str, str], pattern: str) -> list[str]:
    """Names of the files of `directory` that differ from `expected` or are missing, and of
    the files matching `pattern` that nothing generates (left behind by a rename)."""
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    extra = sorted(p.name for p in directory.glob(pattern) if p.name not in expected)
    return stale + extra


def write_or_check(
    directory: Path, files: Mapping[str, str], pattern: str, *, check: bool, what: str, make: str
) -> int:
    """The `shakeout crds` / `shakeout examples` command: write the files, or with `check`
    say which differ (exit 1) and how to regenerate them."""
    if not check:
        for path in write(directory, files):
            print(f"wrote {path}")
        return 0
    if stale := drift(directory, files, pattern):
        print(
            f"{what} in {directory} differ: {', '.join(stale)}\nrun `{make}` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"{what} in {directory} match")
    return 0
