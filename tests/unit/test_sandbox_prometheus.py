"""The sandbox's Prometheus configuration and targets (the real process: tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shakeout.sandbox import prometheus as prom


def test_the_config_scrapes_itself_and_the_target_files_every_second(tmp_path: Path) -> None:
    layout = prom.Layout(tmp_path)
    layout.write_config(19090)
    config = yaml.safe_load(layout.config.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19090"]}]
    assert jobs["sandbox"]["file_sd_configs"][0]["files"] == [str(layout.targets / "*.json")]
    assert config["rule_files"] == [str(layout.rules / "*.yml")]
    args = prom.arguments(Path("/bin/prometheus"), layout, 19090)
    assert "--web.listen-address=127.0.0.1:19090" in args


def test_a_target_file_is_what_file_sd_reads(tmp_path: Path) -> None:
    layout = prom.Layout(tmp_path)
    layout.write_config(19090)
    path = prom.add_target(layout, "shop-1", "127.0.0.1:8080", {"job": "shop"})
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:8080"], "labels": {"job": "shop"}}
    ]
    prom.remove_target(layout, "shop-1")
    assert not path.exists()
    with pytest.raises(ValueError, match="letters, digits and dashes"):
        prom.add_target(layout, "../etc", "127.0.0.1:1")
