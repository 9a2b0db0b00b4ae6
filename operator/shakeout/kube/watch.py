"""A watch of one namespace's objects, for the operator's own watches outside kopf.

The kubernetes client's watch is synchronous: it streams in a daemon thread of its own
(which never holds up the process's exit) and hands each event to the event loop. The
stream ends when the API server ends it (after `seconds`), when it breaks, or with an
ERROR event (e.g. 410 Gone, a version too old): the caller lists again and watches on
from the list's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from kubernetes import watch

from shakeout.kube.client import Api, Obj
from shakeout.kube.errors import Unavailable
from shakeout.kube.resources import Resource

log = logging.getLogger("shakeout.watch")

WATCH_SECONDS = 60


async def namespaced_events(
    api: Api,
    resource: Resource,
    namespace: str,
    *,
    labels: str = "",
    version: str = "",
    seconds: int = WATCH_SECONDS,
) -> AsyncIterator[Obj]:
    """Each event ({type, object}) of `resource` in `namespace` after `version`.

    Ends when the stream does; raises Unavailable for an ERROR event or a broken stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Obj | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Obj | BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            stream = watch.Watch().stream(
                api.custom.list_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                label_selector=labels,
                resource_version=version,
                timeout_seconds=seconds,
                _request_timeout=seconds + 10,
            )
            for event in stream:
                if stop.is_set():
                    return
                put(dict(event))
        except Exception as err:  # noqa: BLE001  (handed to the awaiting side)
            put(err)
        finally:
            put(None)

    threading.Thread(target=run, daemon=True, name=f"watch-{resource.plural}").start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise Unavailable(f"watch of {resource.plural} in {namespace}: {item}", 0) from item
            if item.get("type") == "ERROR":
                raise Unavailable(f"watch of {resource.plural} in {namespace}: {item}", 0)
            yield item
    finally:
        stop.set()
