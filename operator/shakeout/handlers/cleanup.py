"""The sweep of isolation marks left by ended runs and of finished runs still watched."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.execution.cleanup import retire_finished, sweep
from shakeout.handlers.periodic import every

SWEEP_EVERY = 300.0


async def sweep_and_report(logger: Any) -> None:
    if swept := await sweep():
        logger.info(f"removed the isolation marks of {swept} ended run(s)")
    if retired := await retire_finished():
        logger.info(f"took {retired} finished run(s) out of the operator's watch")


@kopf.on.startup()
async def start_sweeper(logger: kopf.Logger, **_: Any) -> None:
    every(SWEEP_EVERY, lambda: sweep_and_report(logger), logger, "sweeping marks and runs")
