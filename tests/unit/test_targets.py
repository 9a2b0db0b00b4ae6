from __future__ import annotations

import pytest

from shakeout.api.common import LabelSelector
from shakeout.api.experiment import TargetLimit
from shakeout.engine.targets import limit_count, select, selector_to_string


@pytest.mark.parametrize(
    ("matched", "limit", "expected"),
    [
        (15, {"percent": 10}, 2),  # 1.5 rounds up
        (3, {"percent": 1}, 1),  # never zero for a non-zero percent
        (3, {"percent": 0}, 0),
        (10, {"percent": 100}, 10),
        (10, {"percent": 50}, 5),
        (0, {"percent": 50}, 0),
        (10, {"count": 3}, 3),
        (2, {"count": 3}, 2),
        (7, None, 7),
    ],
)
def test_limit_count(matched: int, limit: dict[str, int] | None, expected: int) -> None:
    parsed = TargetLimit.model_validate(limit) if limit else None
    assert limit_count(matched, parsed) == expected


def test_selection_is_stable_per_seed_and_bounded_in_status() -> None:
    pods = [f"web-{i:03d}" for i in range(500)]
    limit = TargetLimit(percent=50)
    first = select(pods, limit, seed="uid-1")
    assert select(list(reversed(pods)), limit, seed="uid-1") == first
    assert select(pods, limit, seed="uid-2") != first
    assert len(first.targets) == 250
    summary = first.summary()
    assert (summary.matched, summary.selected, len(summary.names)) == (500, 250, 20)


def test_selector_string() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web", "tier": "fe"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
                {"key": "team", "operator": "Exists"},
            ],
        }
    )
    assert selector_to_string(selector) == (
        "app=web,tier=fe,env in (a,b),!canary,zone notin (x),team"
    )
