"""The ChaosSwitch's watch: keep the operator's view, stop every live run on Stop All, and
record who flipped it."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import CHANGED_AT, CHANGED_BY
from shakeout.api.switch import SWITCH_NAME
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather.switch import SWITCH, is_enabled
from shakeout.kube.client import api
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
    SWITCH.known, SWITCH.enabled = True, enabled
    if not enabled:
        LIVE_RUNS.stop_all()
    elif changed:
        LIVE_RUNS.wake_all()
    if type != "DELETED":
        await _record_change(body)


async def _record_change(body: kopf.Body) -> None:
    """Copy who flipped the switch (from the webhook's annotations) into status."""
    annotations = body.get("metadata", {}).get("annotations", {})
    by = annotations.get(CHANGED_BY)
    at = annotations.get(CHANGED_AT)
    if not by or not at:
        return
    last = body.get("status", {}).get("lastChange") or {}
    enabled = bool(body.get("spec", {}).get("enabled"))
    if last.get("by") == by and last.get("time") == at and last.get("enabled") == enabled:
        return
    try:
        await api().patch_switch_status(
            {"status": {"lastChange": {"enabled": enabled, "by": by, "time": at}}}
        )
    except NotFound:
        return  # deleted since this event: nothing to record it on
