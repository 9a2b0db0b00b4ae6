"""Experiments' previews: the watch feeds execution/previews.py; one loop ticks every second."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from shakeout.api.common import GROUP, VERSION
from shakeout.execution import previews
from shakeout.handlers.periodic import every
from shakeout.options import OPTIONS

TICK_SECONDS = 1.0


@kopf.on.event(GROUP, VERSION, "experiments")
async def preview_event(type: str, body: kopf.Body, **_: Any) -> None:  # noqa: A002
    previews.observe(type, dict(body))


# Events only, as handlers/switch.py: an on.update handler would make kopf write its
# state into the switch's annotations, which are the rails admins' alone.
@kopf.on.event(GROUP, VERSION, "chaosswitches")
async def preview_switch_event(type: str, body: kopf.Body, **_: Any) -> None:  # noqa: A002
    previews.switch_seen(type, dict(body))


@kopf.on.startup()
async def start_previews(logger: kopf.Logger, **_: Any) -> None:
    every(
        TICK_SECONDS,
        lambda: previews.tick(datetime.now(UTC), OPTIONS.preview_interval),
        logger,
        "preview tick",
    )
