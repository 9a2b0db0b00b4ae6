"""Watches on the event loop (Api.watch, and the agent's Watch on it), down to the
wire: a small HTTP server in the test's process streams watch events the way the API
server does (one JSON object a line, chunked, the connection held open between events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from shakeout.agent.watches import Watch
from shakeout.kube import client as kube_client
from shakeout.kube import transport
from shakeout.kube.client import Api, Obj
from shakeout.kube.errors import Forbidden, KubeError, Unavailable
from shakeout.kube.resources import LEASES, NODE_ATTACKS, PODS


def event(kind: str, name: str, version: str = "1") -> dict[str, Any]:
    meta = {"name": name, "resourceVersion": version}
    return {"type": kind, "object": {"metadata": meta}}


@dataclass
class Stream:
    """The API server's side. Each connection is answered by the next script: a list of
    byte chunks (sent as they are, so a line may be split) and pauses (an asyncio.Event to
    wait for), then the stream ends; or a status code for an error answer."""

    scripts: list[list[bytes | asyncio.Event] | int] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    hang_up: bool = False  # after the script's chunks, drop the connection mid-stream

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, int):
            body = {"kind": "Status", "message": f"refused with {script}", "code": script}
            return web.json_response(body, status=script)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for step in script:
            if isinstance(step, asyncio.Event):
                await step.wait()
            else:
                await response.write(step)
        if self.hang_up:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


@pytest.fixture
async def stream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Api, Stream]]:
    served = Stream()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", served.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    monkeypatch.setattr(kube_client, "_load_config", lambda config_file=None: None)
    api = Api()
    api.configuration.host = url
    api.transport.base = api.streams.base = url
    api.configuration.api_key = {"authorization": "Bearer t0k3n"}
    yield api, served
    await api.close()
    await runner.cleanup()


async def collect(events: AsyncIterator[Obj], into: list[Obj] | None = None) -> list[Obj]:
    """The events, appended to `into` as they come (kept there if the watch raises)."""
    got = [] if into is None else into
    async for item in events:
        got.append(item)
    return got


async def test_events_arrive_whole_whatever_the_chunks_and_the_query_says_what_is_watched(
    stream: tuple[Api, Stream],
) -> None:
    api, served = stream
    # A blank line between two events (a keep-alive), and chunks that split lines.
    data = lines(event("ADDED", "a")) + b"\n" + lines(event("MODIFIED", "a", "2"))
    data += lines(event("DELETED", "b", "3"))
    served.scripts.append([data[:7], data[7:50], data[50:90], data[90:]])

    got = await collect(
        api.watch(PODS, "team-a", labels="app=web", fields="spec.nodeName=n1", version="41")
    )

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    request = served.requests[0]
    assert request.path == "/api/v1/namespaces/team-a/pods"
    assert dict(request.query) == {
        "labelSelector": "app=web",
        "fieldSelector": "spec.nodeName=n1",
        "watch": "true",
        "timeoutSeconds": "60",
        "resourceVersion": "41",
    }
    assert request.headers["Authorization"] == "Bearer t0k3n"


async def test_an_event_is_delivered_while_the_stream_stays_open(
    stream: tuple[Api, Stream],
) -> None:
    api, served = stream
    later = asyncio.Event()
    served.scripts.append([lines(event("ADDED", "first")), later, lines(event("ADDED", "second"))])
    events = api.watch(NODE_ATTACKS)

    first = await asyncio.wait_for(anext(events), 5)

    assert first["object"]["metadata"]["name"] == "first"
    assert served.requests[0].path == "/apis/shakeout.dev/v1alpha1/nodeattacks"
    later.set()
    assert [e["object"]["metadata"]["name"] for e in await collect(events)] == ["second"]


@pytest.mark.parametrize(
    ("status", "error"), [(403, Forbidden), (410, KubeError), (500, Unavailable)]
)
async def test_a_refused_watch_raises_its_error_with_the_servers_message(
    stream: tuple[Api, Stream], status: int, error: type[KubeError]
) -> None:
    api, served = stream
    served.scripts.append(status)

    with pytest.raises(error, match=f"refused with {status}") as raised:
        await collect(api.watch(PODS, "team-a"))
    assert raised.value.status == status


@pytest.mark.parametrize(
    "body", [b"not json\n", b'["a list"]\n', b'{"type": "ADDED", "object": "a string"}\n']
)
async def test_a_line_that_is_not_an_event_breaks_the_watch(
    stream: tuple[Api, Stream], body: bytes
) -> None:
    api, served = stream
    served.scripts.append([lines(event("ADDED", "a")), body])
    got: list[Obj] = []

    with pytest.raises(Unavailable, match="watch /api/v1/namespaces/team-a/pods"):
        await collect(api.watch(PODS, "team-a"), got)
    assert len(got) == 1  # what came before is delivered


async def test_a_line_longer_than_any_object_breaks_the_watch(
    stream: tuple[Api, Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, served = stream
    monkeypatch.setattr(transport, "MAX_LINE", 1000)
    served.scripts.append([b'{"type": "ADDED", "object": {"x": "' + b"y" * 3000])

    with pytest.raises(Unavailable, match="longer than 1000 bytes"):
        await collect(api.watch(PODS, "team-a"))


async def test_a_stream_that_breaks_is_unavailable(stream: tuple[Api, Stream]) -> None:
    api, served = stream
    served.hang_up = True
    served.scripts.append([lines(event("ADDED", "a")), b'{"type": "MODIFIED", "obj'])

    with pytest.raises(Unavailable):
        await collect(api.watch(PODS, "team-a"))


async def test_a_silent_stream_times_out(
    stream: tuple[Api, Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, served = stream
    monkeypatch.setattr(kube_client, "WATCH_SLACK", 0)
    never = asyncio.Event()
    served.scripts.append([lines(event("ADDED", "a")), never])

    with pytest.raises(Unavailable):
        await asyncio.wait_for(collect(api.watch(PODS, "team-a", seconds=1)), 10)
    never.set()


async def test_an_error_event_ends_the_watch_with_unavailable(stream: tuple[Api, Stream]) -> None:
    api, served = stream
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    served.scripts.append([lines(event("ADDED", "lease-1"), gone, event("ADDED", "never"))])
    got: list[Obj] = []

    with pytest.raises(Unavailable, match="too old"):
        await collect(api.watch(LEASES, "shakeout-system", version="7"), got)
    assert [e["object"]["metadata"]["name"] for e in got] == ["lease-1"]
    assert served.requests[0].query["resourceVersion"] == "7"


async def test_the_agents_watch_reconnects_after_an_end_a_failure_and_an_error_event(
    stream: tuple[Api, Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, served = stream
    monkeypatch.setattr("shakeout.agent.watches.RECONNECT_SECONDS", 0.05)
    gone = {"type": "ERROR", "object": {"code": 410}}
    served.scripts += [
        [lines(event("ADDED", "a"))],  # ended by the server: watched again at once
        500,  # refused: again after a pause
        [lines(event("MODIFIED", "a", "2"), gone)],  # an error event: again after a pause
        [lines(event("DELETED", "a", "3"))],
    ]
    delivered: list[str] = []
    watch = Watch(api, NODE_ATTACKS, labels="shakeout.dev/node=n1")

    watch.start(lambda e: delivered.append(e["type"]))
    async with asyncio.timeout(10):
        while len(delivered) < 3:
            await asyncio.sleep(0.01)
    await watch.stop()

    assert delivered == ["ADDED", "MODIFIED", "DELETED"]
    assert len(served.requests) >= 4
    assert all(r.query["labelSelector"] == "shakeout.dev/node=n1" for r in served.requests)
    # Each connection starts without a version: the server sends the whole state again.
    assert all("resourceVersion" not in r.query for r in served.requests)


async def test_a_stopped_watch_stops_at_once_even_mid_stream(stream: tuple[Api, Stream]) -> None:
    api, served = stream
    never = asyncio.Event()
    served.scripts.append([lines(event("ADDED", "a")), never])
    delivered: list[Obj] = []
    watch = Watch(api, NODE_ATTACKS)
    watch.start(delivered.append)
    async with asyncio.timeout(10):
        while not delivered:
            await asyncio.sleep(0.01)

    async with asyncio.timeout(2):  # cancelled mid-stream, not waiting for its end
        await watch.stop()

    await asyncio.sleep(0.2)
    assert len(served.requests) == 1  # and not watching again
    never.set()
