"""Watches of the agent, each in a thread of its own (the client is synchronous), feeding
the event loop. A broken watch reconnects; the agent's periodic resync covers the gap."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import watch

from shakeout.kube.client import Api, Obj
from shakeout.kube.resources import Resource

log = logging.getLogger("shakeout.agent")

# The API server ends a watch after this long; the client's own timeout is a little later.
WATCH_SECONDS = 60


class Watch:
    def __init__(self, api: Api, resource: Resource, *, labels: str = "", fields: str = "") -> None:
        self.api = api
        self.resource = resource
        self.selectors = {"label_selector": labels, "field_selector": fields}
        self.stopping = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[Obj], None]) -> None:
        """Deliver each event ({type, object}) to `deliver` in `loop`, until stopped."""
        threading.Thread(target=self._run, args=(loop, deliver), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[Obj], None]) -> None:
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.api.custom.list_cluster_custom_object,
                    self.resource.group,
                    self.resource.version,
                    self.resource.plural,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 10,
                    **{k: v for k, v in self.selectors.items() if v},
                )
                for event in stream:
                    loop.call_soon_threadsafe(deliver, event)
            except Exception as err:  # noqa: BLE001  (reconnect; resync covers the gap)
                log.warning(f"watch of {self.resource.plural} failed: {err}")
                time.sleep(1)
