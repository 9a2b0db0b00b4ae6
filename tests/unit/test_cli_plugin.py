"""`kubectl shakeout` against a fake cluster: what each command sends and prints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from kubernetes.client.exceptions import ApiException

from shakeout.cli import plugin


@dataclass
class World:
    """What the fake cluster serves (the switch, a run's phases read after read) and
    what it was sent."""

    switch: dict[str, Any] | None = None
    phases: list[str | None] = field(default_factory=list)
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    switch_writes: list[bool] = field(default_factory=list)
    created: list[tuple[str, bool]] = field(default_factory=list)
    # kubectl shakeout preview: the Experiment's preview, whether the operator answers a
    # request (echoes it in status.preview.request), whether the user may annotate.
    preview: dict[str, Any] | None = None
    operator_answers: bool = True
    may_annotate: bool = True
    requests: list[str] = field(default_factory=list)


class FakeCluster:
    """Stands in for plugin.Cluster: records the writes, serves the reads of its world."""

    world: ClassVar[World]

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace or "default"

    def runs(self, all_namespaces: bool) -> list[dict[str, Any]]:
        return []

    def run(self, name: str) -> dict[str, Any]:
        phase = self.world.phases.pop(0)
        status = {"phase": phase} if phase else {}
        return {
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"experimentRef": {"name": "exp"}},
            "status": status,
        }

    def create_run(self, experiment: str, dry_run: bool = False) -> dict[str, Any]:
        self.world.created.append((experiment, dry_run))
        return {"metadata": {"name": f"{experiment}-abcde", "namespace": self.namespace}}

    def patch_run_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.world.patches.append((name, spec))

    def experiment(self, name: str) -> dict[str, Any]:
        preview = self.world.preview
        if preview is not None and self.world.requests and self.world.operator_answers:
            preview = {**preview, "request": self.world.requests[-1]}
        return {
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"blastRadius": {"selector": {"matchLabels": {"app": "web"}}}},
            "status": {"preview": preview} if preview is not None else {},
        }

    def request_preview(self, name: str, token: str) -> bool:
        if not self.world.may_annotate:
            return False
        self.world.requests.append(token)
        return True

    def switch(self) -> dict[str, Any] | None:
        return self.world.switch

    def set_switch(self, enabled: bool) -> None:
        self.world.switch_writes.append(enabled)


@pytest.fixture(autouse=True)
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr(plugin, "Cluster", FakeCluster)
    monkeypatch.setattr(plugin.time, "sleep", lambda _s: None)
    FakeCluster.world = World()
    return FakeCluster.world


def status_of(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert plugin.main(["status", "-o", "json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(
    ("switch", "exists", "enabled"),
    [
        (None, False, False),
        ({"spec": {"enabled": True}}, True, True),
        ({"spec": {"enabled": False}}, True, False),
        ({"spec": {}}, True, False),
        ({}, True, False),
        # Stored before the schema checked it: read as the operator reads it, disabled.
        ({"spec": {"enabled": "maybe"}}, True, False),
    ],
)
def test_status_reads_the_switch_as_the_operator_does(
    world: World,
    capsys: pytest.CaptureFixture[str],
    switch: dict[str, Any] | None,
    exists: bool,
    enabled: bool,
) -> None:
    world.switch = switch
    data = status_of(capsys)
    assert (data["switchExists"], data["enabled"]) == (exists, enabled)


def test_status_in_words_names_the_active_run_and_the_last_flip(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.switch = {
        "spec": {"enabled": False},
        "status": {
            "activeRun": {"namespace": "team-a", "name": "r1"},
            "lastChange": {"enabled": False, "by": "alice", "time": "2026-01-01T00:00:00Z"},
        },
    }
    assert plugin.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "experimenting: disabled",
        "concurrency:   Cluster",
        "active run:    team-a/r1",
        "last flipped:  to False by alice at 2026-01-01T00:00:00Z",
    ]


def test_status_in_words_names_every_run_holding_a_turn_in_namespace_mode(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    holders = [
        {"namespace": "team-a", "name": "r1", "uid": "u1", "nodes": []},
        {"namespace": "team-b", "name": "r2", "uid": "u2", "nodes": ["n1"]},
    ]
    world.switch = {
        "spec": {"enabled": True, "concurrency": "Namespace"},
        "status": {"activeRun": {"namespace": "team-a", "name": "r1"}, "activeRuns": holders},
    }
    assert plugin.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "experimenting: enabled",
        "concurrency:   Namespace",
        "active runs:   team-a/r1, team-b/r2",
    ]


def test_status_without_a_switch_says_experimenting_is_disabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert plugin.main(["status"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "experimenting: disabled (no ChaosSwitch 'default': disabled until one is created)"
    )


@pytest.mark.parametrize(("final", "code"), [("COMPLETED", 0), ("CANCELED", 1), ("FAILED", 1)])
def test_run_wait_follows_the_run_until_a_terminal_phase(
    world: World, capsys: pytest.CaptureFixture[str], final: str, code: int
) -> None:
    world.phases = [None, "CREATED", "CREATED", "ATTACKS_STARTED", final]
    assert plugin.main(["run", "exp", "-n", "team-a", "--wait"]) == code
    out = capsys.readouterr().out
    # One line per phase change (a run not yet picked up prints nothing), then the report.
    followed = [line.split()[1] for line in out.splitlines() if line.startswith("  ")]
    assert followed == ["CREATED", "ATTACKS_STARTED", final]
    assert "Run:         team-a/exp-abcde" in out
    assert world.phases == []  # it stopped reading at the terminal phase


def test_run_without_wait_prints_the_created_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["run", "exp", "-n", "team-a"]) == 0
    assert capsys.readouterr().out == "experimentrun.shakeout.dev/exp-abcde created\n"


def test_run_dry_run_creates_a_dry_run(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["run", "exp", "-n", "team-a", "--dry-run"]) == 0
    assert plugin.main(["run", "exp", "-n", "team-a"]) == 0
    assert world.created == [("exp", True), ("exp", False)]


def test_stop_and_findings_patch_the_run_spec(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plugin.main(["stop", "r1"]) == 0
    assert plugin.main(["findings", "r1", "it held", "--action-required", "yes"]) == 0
    assert plugin.main(["findings", "r1", "fine"]) == 0
    assert world.patches == [
        ("r1", {"cancel": True}),
        ("r1", {"findings": "it held", "actionRequired": "Yes"}),
        ("r1", {"findings": "fine"}),
    ]


def test_stop_all_and_continue_flip_the_switch(world: World) -> None:
    assert plugin.main(["stop-all"]) == 0
    assert plugin.main(["continue"]) == 0
    assert world.switch_writes == [False, True]


def test_an_api_error_prints_the_servers_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: FakeCluster, name: str, spec: dict[str, Any]) -> None:
        err = ApiException(status=403, reason="Forbidden")
        err.body = json.dumps({"message": "alice may not patch experimentruns"})
        raise err

    monkeypatch.setattr(FakeCluster, "patch_run_spec", refuse)
    assert plugin.main(["stop", "r1"]) == 1
    assert capsys.readouterr().err == (
        "Error from server (Forbidden): alice may not patch experimentruns\n"
    )


PREVIEW = {
    "time": "2026-01-01T00:00:00Z",
    "observedGeneration": 1,
    "allowed": True,
    "message": "a run created now would be admitted: 1 of 2 matching pods",
    "matched": 2,
    "selected": 1,
    "pods": [{"name": "web-0", "node": "n1"}, {"name": "web-1", "node": "n2"}],
    "nodes": ["n1", "n2"],
    "nodeCount": 2,
}


def test_preview_asks_for_a_fresh_preview_and_prints_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.preview = PREVIEW
    assert plugin.main(["preview", "exp", "-n", "team-a"]) == 0
    out = capsys.readouterr().out
    assert len(world.requests) == 1
    assert "Verdict:       ALLOWED" in out
    assert "Note:" not in out
    assert world.created == []  # a preview creates nothing


def test_preview_exits_2_when_refused_and_1_without_a_preview(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.preview = {**PREVIEW, "allowed": False, "reason": "OverTargetCap", "message": "cap"}
    assert plugin.main(["preview", "exp"]) == 2
    assert "REFUSED (OverTargetCap): cap" in capsys.readouterr().out
    world.preview = None
    assert plugin.main(["preview", "exp", "--timeout", "0"]) == 1
    assert "no preview yet" in capsys.readouterr().out


def test_preview_without_the_right_to_annotate_or_an_answer_shows_the_last_one(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.preview = PREVIEW
    world.may_annotate = False
    assert plugin.main(["preview", "exp"]) == 0
    assert "you may not annotate the Experiment" in capsys.readouterr().out
    world.may_annotate, world.operator_answers = True, False
    assert plugin.main(["preview", "exp", "--timeout", "0"]) == 0
    assert "the operator did not answer within 0s" in capsys.readouterr().out
    world.requests.clear()
    assert plugin.main(["preview", "exp", "--no-refresh", "-o", "json"]) == 0
    assert world.requests == []  # --no-refresh writes nothing
    assert json.loads(capsys.readouterr().out)["preview"]["matched"] == 2


def test_status_shows_the_blackout_windows_the_one_in_force_and_the_next(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    windows = [
        {"name": "xmas", "timeZone": "Europe/Berlin", "dates": ["2026-12-24", "2026-12-25"]},
        {"name": "nights", "days": ["Fri"], "startTime": "22:00", "endTime": "06:00"},
    ]
    world.switch = {"spec": {"enabled": True, "blackoutWindows": windows}}
    now = datetime(2026, 12, 24, 10, tzinfo=UTC)  # a Thursday, during xmas
    data, human = plugin.blackout_status(world.switch, now)
    assert data == {
        "blackoutWindows": [
            "xmas (2026-12-24, 2026-12-25, Europe/Berlin)",
            "nights (Fri 22:00-06:00 UTC)",
        ],
        "blackoutInForce": "xmas",
        "nextBlackout": {"window": "nights", "start": "2026-12-25T22:00:00+00:00"},
    }
    assert human.splitlines()[1:] == [
        "blackouts:     xmas (2026-12-24, 2026-12-25, Europe/Berlin); nights (Fri 22:00-06:00 UTC)",
        "in force now:  xmas: no run may execute",
        "next blackout: nights at 2026-12-25 22:00 UTC",
    ]
    assert status_of(capsys)["blackoutWindows"] == data["blackoutWindows"]
    world.switch = {"spec": {"enabled": True}}
    assert plugin.blackout_status(world.switch, now) == (
        {"blackoutWindows": [], "blackoutInForce": None, "nextBlackout": None},
        "",
    )


@pytest.mark.parametrize(
    ("concurrency", "shown"),
    [("Cluster", "held by team-b/r2"), ("Namespace", "Lock:          free")],
)
def test_preview_names_the_holder_only_when_it_keeps_the_namespaces_run_waiting(
    world: World, capsys: pytest.CaptureFixture[str], concurrency: str, shown: str
) -> None:
    """In Namespace mode another team's run executes beside this namespace's: not shown."""
    world.preview = PREVIEW
    holder = {"namespace": "team-b", "name": "r2", "uid": "u2", "nodes": []}
    world.switch = {
        "spec": {"enabled": True, "concurrency": concurrency},
        "status": {"activeRun": holder, "activeRuns": [holder]},
    }
    assert plugin.main(["preview", "exp", "-n", "team-a", "--no-refresh"]) == 0
    assert shown in capsys.readouterr().out
