"""Watches of the agent, streaming on the event loop (Api.watch), each feeding a callback.
A broken watch reconnects after a second; the agent's periodic resync covers the gap.

Each connection starts without a version, so the API server first sends every object
that exists as ADDED: a reconnect (every WATCH_SECONDS) re-delivers the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shakeout.kube.client import Api, Obj
from shakeout.kube.resources import Resource

log = logging.getLogger("shakeout.agent")

RECONNECT_SECONDS = 1.0


class Watch:
    def __init__(self, api: Api, resource: Resource, *, labels: str = "", fields: str = "") -> None:
        self.api = api
        self.resource = resource
        self.labels = labels
        self.fields = fields
        self._task: asyncio.Task[None] | None = None

    def start(self, deliver: Callable[[Obj], None]) -> None:
        """Deliver each event ({type, object}) to `deliver`, until stopped."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(deliver), name=f"watch-{self.resource.plural}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, deliver: Callable[[Obj], None]) -> None:
        while True:
            try:
                async for event in self.api.watch(
                    self.resource, labels=self.labels, fields=self.fields
                ):
                    deliver(event)
                continue  # the API server ended it: watch again at once
            except Exception as err:  # noqa: BLE001  (reconnect; resync covers the gap)
                log.warning(f"watch of {self.resource.plural} failed: {err}")
            await asyncio.sleep(RECONNECT_SECONDS)
