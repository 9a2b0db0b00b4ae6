"""The sandbox's Prometheus: a real one (built by `tools/controlplane/build.sh --prometheus`),
on 127.0.0.1, for the Prometheus and Alert state checks (docs/sandbox.md, "Prometheus").

It scrapes itself and whatever a file in `<sandbox>/prometheus/targets/` names (file_sd:
a test or a user drops `NAME.json` there, Prometheus picks it up within a second), every
second, and loads alerting rules from `<sandbox>/prometheus/rules/*.yml` (re-read on
SIGHUP: `reload`). Its data is a throwaway TSDB under the sandbox directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from shakeout.sandbox.components import LOOPBACK

NAME = "prometheus"
# Fast enough that a check sees an attack's effect within seconds.
SCRAPE_INTERVAL = "1s"


class Layout:
    """Where one sandbox's Prometheus keeps its configuration, targets, rules and data."""

    def __init__(self, sandbox_dir: Path) -> None:
        self.dir = sandbox_dir / NAME
        self.config = self.dir / "prometheus.yml"
        self.targets = self.dir / "targets"
        self.rules = self.dir / "rules"
        self.data = self.dir / "data"

    def write_config(self, port: int) -> None:
        for sub in (self.targets, self.rules, self.data):
            sub.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(self.rules / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": NAME,
                    "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}],
                },
                {
                    # A target file may set `job` itself; this is the default.
                    "job_name": "sandbox",
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "file_sd_configs": [
                        {"files": [str(self.targets / "*.json")], "refresh_interval": "5s"}
                    ],
                },
            ],
        }
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))


def arguments(binary: Path, layout: Layout, port: int) -> list[str]:
    return [
        str(binary),
        f"--config.file={layout.config}",
        f"--storage.tsdb.path={layout.data}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--log.level=warn",
    ]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:  # noqa: S310 (loopback)
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def add_target(
    layout: Layout, name: str, address: str, labels: dict[str, str] | None = None
) -> Path:
    """Have Prometheus scrape http://ADDRESS/metrics, with these labels (job= included);
    written atomically, as file_sd wants."""
    if not name.replace("-", "").isalnum():
        raise ValueError(f"target name {name!r}: letters, digits and dashes only")
    path = layout.targets / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": labels or {}}]))
    os.replace(tmp, path)
    return path


def remove_target(layout: Layout, name: str) -> None:
    (layout.targets / f"{name}.json").unlink(missing_ok=True)


def reload(pid: int) -> None:
    """Re-read the configuration and the rule files (SIGHUP)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)
