from __future__ import annotations

from dataclasses import replace

import pytest

from shakeout.engine.preconditions import RunRequest, refusal

OK = RunRequest(
    namespace="team-a",
    experiment="web",
    switch_exists=True,
    switch_enabled=True,
    active_runs=(),
    experiment_found=True,
    experiment_error=None,
    matched_pods=3,
    targets=2,
)


def test_all_conditions_met() -> None:
    assert refusal(OK) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"switch_exists": False}, "no ChaosSwitch named default"),
        ({"switch_enabled": False}, "Stop All"),
        ({"active_runs": ("team-b/r1",)}, "another experiment is running: team-b/r1"),
        ({"experiment_found": False}, "Experiment team-a/web not found"),
        ({"experiment_error": "spec.x: bad"}, "is invalid: spec.x: bad"),
        ({"targets": 0, "matched_pods": 0}, "resolves to no pods (0 matched"),
    ],
)
def test_each_refusal_says_why(change: dict[str, object], words: str) -> None:
    message = refusal(replace(OK, **change))  # type: ignore[arg-type]
    assert message is not None
    assert words in message


def test_disabled_wins_over_other_problems() -> None:
    message = refusal(replace(OK, switch_enabled=False, targets=0, active_runs=("a/b",)))
    assert message is not None
    assert "disabled" in message
