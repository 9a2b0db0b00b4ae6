"""A watch of one namespace's objects, for the operator's own watches outside kopf.

It streams on the event loop (Api.watch: aiohttp, no thread). The stream ends when the
API server ends it (after `seconds`), when it breaks, or with an ERROR event (e.g. 410
Gone, a version too old): the caller lists again and watches on from the list's version.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from shakeout.kube.client import WATCH_SECONDS, Api, Obj
from shakeout.kube.errors import Unavailable
from shakeout.kube.resources import Resource


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
    async for event in api.watch(
        resource, namespace, labels=labels, version=version, seconds=seconds
    ):
        if event.get("type") == "ERROR":
            raise Unavailable(f"watch of {resource.plural} in {namespace}: {event}", 0)
        yield event
