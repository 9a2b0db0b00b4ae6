"""The operator's housekeeping loops: each runs from start-up to clean-up, every few seconds.

A failed round is logged and retried on the next; clean-up cancels them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

_tasks: set[asyncio.Task[None]] = set()


def every(seconds: float, job: Callable[[], Awaitable[None]], logger: Any, what: str) -> None:
    """Run `job` now and then every `seconds` until the operator stops."""

    async def loop() -> None:
        while True:
            try:
                await job()
            except Exception as err:  # noqa: BLE001  (retried on the next round)
                logger.warning(f"{what} failed: {err}")
            await asyncio.sleep(seconds)

    task = asyncio.create_task(loop(), name=what)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


@kopf.on.cleanup()
async def stop_loops(**_: Any) -> None:
    for task in list(_tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
