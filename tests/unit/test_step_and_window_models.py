"""The shapes of attack steps, per-attack blast radii, time windows and concurrency."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shakeout.api.experiment import AFTER_EARLIER_ONLY, ExperimentSpec
from shakeout.api.switch import ChaosSwitchSpec, Concurrency
from shakeout.api.windows import TimeWindow

RADIUS = {"selector": {"matchLabels": {"app": "shop"}}}


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "blastRadius": RADIUS,
        "attacks": [{"name": "a", "type": "PodDelete"}],
        **extra,
    }


def test_defaults_keep_every_attack_starting_together() -> None:
    parsed = ExperimentSpec.model_validate(spec())
    attack = parsed.attacks[0]
    assert (attack.start_after_seconds, attack.after, attack.blast_radius) == (0, [], None)
    assert parsed.allowed_windows == []
    assert parsed.to_k8s()["attacks"][0]["after"] == []


def test_steps_may_name_only_earlier_attacks() -> None:
    steps = [
        {"name": "cut", "type": "PodDelete"},
        {"name": "kill", "type": "PodDelete", "after": ["cut"], "startAfterSeconds": 5},
        {"name": "late", "type": "PodDelete", "startAfterSeconds": 30},
    ]
    parsed = ExperimentSpec.model_validate(spec(attacks=steps))
    assert parsed.attacks[1].after == ["cut"]
    for bad in (
        [{"name": "a", "type": "PodDelete", "after": ["b"]}, {"name": "b", "type": "PodDelete"}],
        [{"name": "a", "type": "PodDelete", "after": ["a"]}],
        [{"name": "a", "type": "PodDelete", "after": ["ghost"]}],
    ):
        with pytest.raises(ValidationError, match="may name only attacks listed before it"):
            ExperimentSpec.model_validate(spec(attacks=bad))
    assert "no cycles" in AFTER_EARLIER_ONLY


def test_an_attack_may_carry_its_own_blast_radius() -> None:
    own = {"selector": {"matchLabels": {"app": "db"}}, "limit": {"count": 1}}
    parsed = ExperimentSpec.model_validate(
        spec(attacks=[{"name": "a", "type": "PodDelete", "blastRadius": own}])
    )
    radius = parsed.attacks[0].blast_radius
    assert radius is not None
    assert radius.limit is not None
    assert radius.limit.count == 1


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ({"name": "w"}, "at least one of dates, days or startTime"),
        ({"name": "w", "startTime": "09:00"}, "both startTime and endTime"),
        ({"name": "w", "days": ["Mon"], "timeZone": "Mars/Olympus"}, "unknown time zone"),
        ({"name": "w", "dates": ["2026-13-01"]}, "pattern"),
        ({"name": "w", "days": ["Monday"]}, "Mon"),
        ({"name": "W", "days": ["Mon"]}, "pattern"),
    ],
)
def test_a_window_must_say_when(window: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        TimeWindow.model_validate(window)


def test_window_names_are_unique_in_a_list() -> None:
    twice = [{"name": "w", "days": ["Mon"]}, {"name": "w", "days": ["Tue"]}]
    with pytest.raises(ValidationError, match="window names must be unique"):
        ExperimentSpec.model_validate(spec(allowedWindows=twice))
    with pytest.raises(ValidationError, match="window names must be unique"):
        ChaosSwitchSpec.model_validate({"enabled": True, "blackoutWindows": twice})


def test_the_switch_defaults_to_one_run_in_the_cluster() -> None:
    switch = ChaosSwitchSpec.model_validate({"enabled": True})
    assert (switch.concurrency, switch.blackout_windows) == (Concurrency.CLUSTER, [])
    night = {"name": "night", "startTime": "22:00", "endTime": "06:00", "timeZone": "Europe/Berlin"}
    switch = ChaosSwitchSpec.model_validate(
        {"enabled": True, "concurrency": "Namespace", "blackoutWindows": [night]}
    )
    assert switch.concurrency == Concurrency.NAMESPACE
    assert switch.blackout_windows[0].end_time == "06:00"
