"""Scheduled Experiments: the watch feeds the scheduler; one loop ticks every second."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from shakeout.api.common import GROUP, VERSION
from shakeout.execution import scheduler
from shakeout.handlers.periodic import every

TICK_SECONDS = 1.0


@kopf.on.event(GROUP, VERSION, "experiments")
async def experiment_event(type: str, body: kopf.Body, **_: Any) -> None:  # noqa: A002
    scheduler.observe(type, dict(body))


@kopf.on.startup()
async def start_scheduler(logger: kopf.Logger, **_: Any) -> None:
    every(TICK_SECONDS, lambda: scheduler.tick(datetime.now(UTC)), logger, "scheduler tick")
