"""status.history of the ChaosSwitch: who, when and what of each change, the webhook's
stamp trusted only for the generation it names (api.switch.history_entry)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shakeout.api.labels import CHANGED_AT, CHANGED_BY
from shakeout.api.switch import (
    CHANGED_GENERATION,
    UNKNOWN_CHANGER,
    ChaosSwitchStatus,
    describe_change,
    history_entry,
)

NOW = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
STAMPED_AT = "2026-11-30T05:59:58Z"


def switch(
    generation: int,
    spec: dict[str, Any],
    stamp: tuple[str, int] | None = None,
    history: list[dict[str, Any]] | None = None,
    last_change: dict[str, Any] | None = None,
) -> dict[str, Any]:
    annotations = {}
    if stamp is not None:
        annotations = {
            CHANGED_BY: stamp[0],
            CHANGED_AT: STAMPED_AT,
            CHANGED_GENERATION: str(stamp[1]),
        }
    status: dict[str, Any] = {"history": history or []}
    if last_change is not None:
        status["lastChange"] = last_change
    return {
        "metadata": {"name": "default", "generation": generation, "annotations": annotations},
        "spec": spec,
        "status": status,
    }


def recorded(generation: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "generation": generation,
        "by": "admin",
        "time": STAMPED_AT,
        "enabled": spec["enabled"],
        "spec": spec,
    }


CAPPED = {"enabled": True, "namespaceMode": "OptIn", "caps": {"maxTargets": 2}}


def test_a_stamped_stop_all_is_recorded_with_its_user_and_time() -> None:
    body = switch(
        3, {**CAPPED, "enabled": False}, stamp=("carol", 3), history=[recorded(2, CAPPED)]
    )
    entry = history_entry(body, NOW)
    assert entry is not None
    assert (entry.by, entry.time, entry.enabled, entry.enabled_changed, entry.rails) == (
        "carol",
        datetime(2026, 11, 30, 5, 59, 58, tzinfo=UTC),
        False,
        True,
        [],
    )
    assert describe_change(entry) == "Stop All (enabled: false), by carol (generation 3)"


def test_a_stale_stamp_is_not_trusted() -> None:
    """Webhooks deleted: the annotations still name the earlier change's user."""
    body = switch(
        4, {**CAPPED, "enabled": False}, stamp=("alice", 3), history=[recorded(3, CAPPED)]
    )
    entry = history_entry(body, NOW)
    assert entry is not None
    assert (entry.by, entry.time) == (UNKNOWN_CHANGER, NOW)


def test_no_stamp_at_all_is_unknown() -> None:
    entry = history_entry(switch(2, CAPPED, history=[recorded(1, {"enabled": True})]), NOW)
    assert entry is not None
    assert entry.by == UNKNOWN_CHANGER
    assert (entry.enabled_changed, entry.rails) == (False, ["caps", "namespaceMode"])
    assert describe_change(entry).startswith("rails changed: caps, namespaceMode, by unknown")


def test_rails_removed_or_changed_are_named_and_defaults_are_not_changes() -> None:
    before = recorded(5, CAPPED)
    entry = history_entry(switch(6, {"enabled": True}, stamp=("admin", 6), history=[before]), NOW)
    assert entry is not None
    assert entry.rails == ["caps", "namespaceMode"]
    same_mode = {"enabled": True, "namespaceMode": "OptOut"}
    entry = history_entry(
        switch(2, same_mode, stamp=("admin", 2), history=[recorded(1, {"enabled": True})]), NOW
    )
    assert entry is not None
    assert (entry.rails, entry.enabled_changed) == ([], False)


def test_a_generation_is_recorded_once() -> None:
    body = switch(3, CAPPED, stamp=("admin", 3), history=[recorded(3, CAPPED)])
    assert history_entry(body, NOW) is None
    assert history_entry({"metadata": {}, "spec": CAPPED}, NOW) is None


def test_the_first_change_seen_names_every_rail_set() -> None:
    entry = history_entry(switch(1, CAPPED, stamp=("admin", 1)), NOW)
    assert entry is not None
    assert (entry.by, entry.rails, entry.enabled_changed) == (
        "admin",
        ["caps", "namespaceMode"],
        True,
    )
    # An operator upgraded over a switch flipped before: lastChange tells whether it flipped.
    last = {"enabled": True, "by": "bob", "time": STAMPED_AT}
    entry = history_entry(switch(7, CAPPED, last_change=last), NOW)
    assert entry is not None
    assert entry.enabled_changed is False


def test_the_history_is_bounded_in_the_schema() -> None:
    entry = history_entry(switch(1, CAPPED, stamp=("admin", 1)), NOW)
    assert entry is not None
    dumped = entry.model_dump(by_alias=True, exclude_none=True, mode="json")
    status = ChaosSwitchStatus.model_validate({"history": [dumped] * 20})
    assert len(status.history) == 20
    schema = ChaosSwitchStatus.model_json_schema(by_alias=True)
    assert schema["properties"]["history"]["maxItems"] == 20
