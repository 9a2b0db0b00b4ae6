"""The ChaosSwitch's watch: keep the operator's view, stop every live run on Stop All, and
record every change of its spec (who, when, what) as an Event and in status.history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from shakeout.api.common import GROUP, VERSION
from shakeout.api.switch import HISTORY_LENGTH, SWITCH_NAME, describe_change, history_entry
from shakeout.engine.windows import blackout_in_force
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather.switch import SWITCH, blackout_windows_of, is_enabled
from shakeout.kube.client import api, timestamp
from shakeout.kube.errors import NotFound


@kopf.on.event(GROUP, VERSION, "chaosswitches")
async def switch_event(
    type: str,  # noqa: A002  (kopf's keyword)
    body: kopf.Body,
    **_: Any,
) -> None:
    if body.get("metadata", {}).get("name") != SWITCH_NAME:
        return
    enabled = type != "DELETED" and is_enabled(dict(body))
    changed = SWITCH.known and enabled != SWITCH.enabled
    blackouts = blackout_windows_of(dict(body)) if type != "DELETED" else ()
    changed = changed or (SWITCH.known and blackouts != SWITCH.blackout_windows)
    SWITCH.known, SWITCH.enabled = True, enabled
    SWITCH.blackout_windows = blackouts
    if not enabled or blackout_in_force(blackouts, datetime.now(UTC)) is not None:
        LIVE_RUNS.stop_all()  # a blackout in force cancels every live run, as Stop All does
    elif changed:
        LIVE_RUNS.wake_all()
    if type != "DELETED":
        await _record_change(body)


async def _record_change(body: kopf.Body) -> None:
    """Append the change that made the switch's current generation to status.history (and
    status.lastChange when it flipped enabled), and post it as an Event on the switch.

    Who comes from the webhook's stamp only when it names this generation (see
    api.switch.history_entry); a change made with the webhooks deleted is recorded as
    made by an unknown user, never as whatever a user wrote.
    """
    entry = history_entry(body, datetime.now(UTC))
    if entry is None:
        return
    history = list(body.get("status", {}).get("history") or [])
    record = entry.model_dump(by_alias=True, exclude_none=True, mode="json")
    record["time"] = timestamp(entry.time)
    status: dict[str, Any] = {"history": [*history, record][-HISTORY_LENGTH:]}
    if entry.enabled_changed:
        status["lastChange"] = {"enabled": entry.enabled, "by": entry.by, "time": record["time"]}
    try:
        await api().patch_switch_status({"status": status})
    except NotFound:
        return  # deleted since this event: nothing to record it on
    kopf.event(body, type="Normal", reason="SwitchChanged", message=describe_change(entry))
