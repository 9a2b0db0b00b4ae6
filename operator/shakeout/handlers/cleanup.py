"""The sweep: runs that vanished with attacks journaled (rolled back from their records),
live runs hidden from the watch, isolation marks left by ended runs, and finished runs
still watched. At start-up, then every SWEEP_EVERY seconds."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.execution.cleanup import retire_finished, sweep
from shakeout.execution.vanished import roll_back_vanished, unhide_live
from shakeout.gather.records import records_home_exists
from shakeout.handlers.periodic import every
from shakeout.options import OPTIONS

SWEEP_EVERY = 300.0


async def sweep_and_report(logger: Any) -> None:
    if vanished := await roll_back_vanished():
        logger.warning(f"rolled back {vanished} run(s) whose object vanished mid-run")
    if hidden := await unhide_live():
        logger.warning(f"took {hidden} live run(s) labelled finished back into the watch")
    if swept := await sweep():
        logger.info(f"removed the isolation marks of {swept} ended run(s)")
    if retired := await retire_finished():
        logger.info(f"took {retired} finished run(s) out of the operator's watch")


@kopf.on.startup()
async def start_sweeper(logger: kopf.Logger, **_: Any) -> None:
    if not await records_home_exists():
        # No attack may go out without its rollback record: refuse to start instead.
        raise kopf.PermanentError(
            f"the operator's namespace {OPTIONS.namespace} does not exist (the runs' rollback "
            "records are kept there): create it, or run the operator with POD_NAMESPACE set"
        )
    every(SWEEP_EVERY, lambda: sweep_and_report(logger), logger, "sweeping marks and runs")
