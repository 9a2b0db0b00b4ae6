"""kube.client.Api down to the wire: requests go out through the real transport
(aiohttp, kube/transport.py) to a small HTTP server in the test's process, which records
each request as it arrived and answers with a canned body (or does not answer)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shakeout.kube import client as kube_client
from shakeout.kube.client import CONNECT_TIMEOUT, REQUEST_TIMEOUT, TABLE, Api
from shakeout.kube.errors import (
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unavailable,
    error_for,
)
from shakeout.kube.resources import (
    DEPLOYMENTS,
    EXPERIMENTS,
    NODES,
    PODS,
    RUNS,
    SUBJECT_ACCESS_REVIEWS,
    segment,
)
from tests.unit.fake_kube import FakeApi

# An answer every call below can read (list_pod_names wants a Table).
ANY = {"columnDefinitions": [{"name": "Name"}, {"name": "Status"}], "rows": []}


@dataclass
class Sent:
    method: str
    url: str  # the path and query as they arrived, undecoded
    headers: dict[str, str]
    body: Any
    timeouts: tuple[float, float] = (0.0, 0.0)  # (connect, read) the transport was given


@dataclass
class Wire:
    """The API server's side: records each request, then answers, hangs or hangs up."""

    status: int = 200
    data: bytes = b"{}"
    hang: float = 0.0  # seconds to wait before answering
    hang_up: bool = False  # close the connection without an answer
    sent: list[Sent] = field(default_factory=list)
    # Answers given before the canned one, first to last: (status, Retry-After or None).
    first: list[tuple[int, str | None]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.sent.append(
            Sent(
                request.method,
                request.raw_path,
                dict(request.headers),
                json.loads(raw) if raw else None,
            )
        )
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.hang_up:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if self.first:
            status, after = self.first.pop(0)
            headers = {"Retry-After": after} if after is not None else {}
            return web.Response(status=status, body=b'{"message": "not now"}', headers=headers)
        return web.Response(status=self.status, body=self.data)

    def answer(self, status: int, body: Any = None) -> None:
        self.status = status
        self.data = json.dumps(body).encode() if body is not None else b""


@dataclass
class Served:
    wire: Wire
    url: str


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    wire = Wire()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", wire.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Served(wire, f"http://127.0.0.1:{port}")
    await runner.cleanup()


def make_api(monkeypatch: pytest.MonkeyPatch, served: Served, **kw: Any) -> Api:
    """An Api sending to the test's server; each Sent also records the timeouts that the
    transport was given for it."""
    monkeypatch.setattr(kube_client, "_load_config", lambda config_file=None: None)
    api = Api(**kw)
    api.configuration.host = served.url
    api.transport.base = served.url
    send = api.transport.send

    async def recording(*args: Any, **kwargs: Any) -> Any:
        count = len(served.wire.sent)
        try:
            return await send(*args, **kwargs)
        finally:
            for sent in served.wire.sent[count:]:
                sent.timeouts = (kwargs["connect_timeout"], kwargs["read_timeout"])

    monkeypatch.setattr(api.transport, "send", recording)
    return api


@pytest.fixture
async def wired(monkeypatch: pytest.MonkeyPatch, served: Served) -> AsyncIterator[tuple[Api, Wire]]:
    api = make_api(monkeypatch, served)
    yield api, served.wire
    await api.close()


def status_body(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "message": message, "code": code}


# -- the error vocabulary -----------------------------------------------------------------------

STATUSES = [
    (400, Invalid),
    (401, Forbidden),
    (403, Forbidden),
    (404, NotFound),
    (409, Conflict),
    (422, Invalid),
    (429, Unavailable),
    (500, Unavailable),
    (503, Unavailable),
    (504, Unavailable),
    (418, KubeError),
]
METHODS = [
    ("GET", None),
    ("POST", {"metadata": {"name": "x"}}),
    ("PATCH", {"spec": {"replicas": 1}}),
    ("DELETE", None),
]


@pytest.mark.parametrize(("code", "error"), STATUSES)
@pytest.mark.parametrize(("method", "body"), METHODS)
async def test_every_status_is_its_error_whatever_the_method(
    wired: tuple[Api, Wire], code: int, error: type[KubeError], method: str, body: Any
) -> None:
    api, wire = wired
    wire.answer(code, status_body(code, "the server says no"))
    path = DEPLOYMENTS.path("team-a", "web")

    with pytest.raises(KubeError) as caught:
        await api.request(method, path, body, merge_patch=method == "PATCH")

    assert type(caught.value) is error
    assert caught.value.status == code
    assert f"{method} {path}: {code} the server says no" in str(caught.value)


async def test_a_failed_json_patch_test_is_a_conflict(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(422, status_body(422, "the server rejected our request: test failed"))
    patch = [{"op": "test", "path": "/metadata/labels/a", "value": "b"}]

    with pytest.raises(Conflict):
        await api.request("PATCH", PODS.path("ns", "p"), json_patch=patch)
    # A 422 of anything else is an invalid request.
    with pytest.raises(Invalid):
        await api.request("PATCH", PODS.path("ns", "p"), {"a": 1}, merge_patch=True)


@pytest.mark.parametrize(
    "failure",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("connection aborted"),
        aiohttp.ClientPayloadError("truncated"),
        ssl.SSLError("certificate verify failed"),
        ConnectionRefusedError(111, "connection refused"),
        TimeoutError(),
    ],
    ids=["disconnected", "connection", "payload", "ssl", "refused", "timeout"],
)
async def test_no_answer_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, wired: tuple[Api, Wire], failure: BaseException
) -> None:
    api, _ = wired

    async def send(*_args: Any, **_kw: Any) -> Any:
        raise failure

    monkeypatch.setattr(api.transport, "send", send)

    with pytest.raises(Unavailable) as caught:
        await api.request("GET", PODS.path("ns"))

    assert caught.value.status == 0
    assert "GET /api/v1/namespaces/ns/pods" in str(caught.value)


async def test_a_server_that_does_not_answer_in_time_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    api = make_api(monkeypatch, served, request_timeout=0.2)
    served.wire.hang = 2.0
    loop = asyncio.get_running_loop()
    began = loop.time()

    with pytest.raises(Unavailable, match="GET /api/v1/namespaces/ns/pods/p"):
        await api.request("GET", PODS.path("ns", "p"))

    # Given up at the read timeout, well before the server would have answered.
    assert loop.time() - began < served.wire.hang
    await api.close()


async def test_a_server_that_hangs_up_is_unavailable(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.hang_up = True

    with pytest.raises(Unavailable, match="DELETE /api/v1/namespaces/ns/pods/p"):
        await api.request("DELETE", PODS.path("ns", "p"))


async def test_a_server_that_is_not_there_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    api = make_api(monkeypatch, served)
    api.transport.base = "http://127.0.0.1:9"  # discard: nothing listens

    with pytest.raises(Unavailable, match="GET /api/v1/namespaces/ns/pods"):
        await api.request("GET", PODS.path("ns"))
    await api.close()


async def test_the_bearer_token_goes_with_every_request(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    api.configuration.api_key = {"authorization": "Bearer t0k3n"}
    refreshed: list[bool] = []
    # The client's refresh hook (a rotated service account token, an exec plugin) is
    # asked before each request.
    api.configuration.refresh_api_key_hook = lambda _conf: refreshed.append(True)

    await api.get(PODS, "ns", "p")
    await api.delete_pod("ns", "p", 0)

    assert [s.headers["Authorization"] for s in wire.sent] == ["Bearer t0k3n"] * 2
    assert len(refreshed) == 2


def test_error_for_covers_no_answer_and_the_json_patch_rule() -> None:
    assert type(error_for(0, "m")) is Unavailable
    assert type(error_for(422, "m", json_patch=True)) is Conflict
    assert type(error_for(409, "m", json_patch=True)) is Conflict
    assert type(error_for(404, "m", json_patch=True)) is NotFound


async def test_a_message_that_is_not_json_is_quoted(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.status, wire.data = 502, b"<html>bad gateway</html>"

    with pytest.raises(Unavailable, match="bad gateway"):
        await api.request("GET", PODS.path("ns"))


async def test_success_is_the_object_and_an_empty_body_is_empty(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(200, {"metadata": {"name": "p"}})
    assert await api.request("GET", PODS.path("ns", "p")) == {"metadata": {"name": "p"}}
    wire.answer(200)
    assert await api.request("DELETE", PODS.path("ns", "p")) == {}


async def test_the_verbs_turn_a_missing_object_into_their_answer(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(404, status_body(404, "not found"))

    assert await api.get(PODS, "ns", "p") is None
    assert await api.delete(PODS, "ns", "p") is False
    assert await api.delete_pod("ns", "p", 0) is False
    assert await api.namespace_labels("ns") == {}
    await api.patch_experiment_status("ns", "exp", {"lastRun": None})  # no error
    with pytest.raises(NotFound):
        await api.merge_patch(PODS, "ns", "p", {"metadata": {}})
    with pytest.raises(NotFound):
        await api.patch_run_status("ns", "run", {"phase": "FAILED"})


# -- every path segment quoted -------------------------------------------------------------------

NAMES = {
    "with/slash": "with%2Fslash",
    "a/../b": "a%2F..%2Fb",
    "..x": "..x",
    "100%": "100%25",
    "a name": "a%20name",
    "q?x=1#f": "q%3Fx%3D1%23f",
    "ünï": "%C3%BCn%C3%AF",
}


@pytest.mark.parametrize(("name", "quoted"), list(NAMES.items()))
def test_every_path_segment_is_quoted(name: str, quoted: str) -> None:
    assert segment(name) == quoted
    assert PODS.path(name, name) == f"/api/v1/namespaces/{quoted}/pods/{quoted}"
    assert (
        RUNS.path("ns", name)
        == f"/apis/shakeout.dev/v1alpha1/namespaces/ns/experimentruns/{quoted}"
    )
    assert NODES.path(None, name) == f"/api/v1/nodes/{quoted}"
    assert DEPLOYMENTS.path("ns", name, name) == (
        f"/apis/apps/v1/namespaces/ns/deployments/{quoted}/{quoted}"
    )


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_segments_that_quoting_leaves_alone_are_refused(bad: str) -> None:
    with pytest.raises(Invalid):
        segment(bad)
    with pytest.raises(Invalid):
        PODS.path(bad)
    with pytest.raises(Invalid):
        PODS.path("ns", bad)
    with pytest.raises(Invalid):
        DEPLOYMENTS.path("ns", "web", bad)


def test_paths_that_name_the_wrong_thing_are_refused() -> None:
    with pytest.raises(Invalid):
        NODES.path("ns", "n")  # cluster-scoped
    with pytest.raises(Invalid):
        DEPLOYMENTS.path("ns", None, "scale")  # a subresource needs an object
    assert PODS.path() == "/api/v1/pods"
    assert EXPERIMENTS.path("ns") == "/apis/shakeout.dev/v1alpha1/namespaces/ns/experiments"
    assert SUBJECT_ACCESS_REVIEWS.path() == "/apis/authorization.k8s.io/v1/subjectaccessreviews"


async def test_a_quoted_path_goes_out_as_it_is(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(200, {})

    await api.get(PODS, "team a", "x/../y%")
    await api.get_replicas("Deployment", "ns", "we b")

    assert [s.url for s in wire.sent] == [
        "/api/v1/namespaces/team%20a/pods/x%2F..%2Fy%25",
        "/apis/apps/v1/namespaces/ns/deployments/we%20b/scale",
    ]


async def test_a_refused_segment_sends_nothing(wired: tuple[Api, Wire]) -> None:
    api, wire = wired

    with pytest.raises(Invalid):
        await api.get_run("ns", "..")
    with pytest.raises(Invalid):
        await api.delete_pod("ns", ".", 0)

    assert wire.sent == []


# -- the timeout and the shape of each request ---------------------------------------------------


async def _every_call(api: Api) -> None:
    await api.get(PODS, "ns", "p")
    await api.list_objects(PODS, "ns", labels="app=web", fields="status.phase=Running", cached=True)
    await api.create(PODS, "ns", {"metadata": {"name": "p"}})
    await api.merge_patch(PODS, "ns", "p", {"metadata": {"labels": {"a": None}}})
    await api.delete(PODS, "ns", "p")
    await api.list_pod_names("ns", "app=web")
    await api.delete_pod("ns", "p", 5)
    await api.set_replicas("Deployment", "ns", "web", 0)
    await api.request("PATCH", PODS.path("ns", "p"), json_patch=[{"op": "remove", "path": "/a"}])


async def test_every_request_has_the_timeout(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(200, ANY)

    await _every_call(api)

    assert len(wire.sent) == 9
    for sent in wire.sent:
        assert sent.timeouts == (CONNECT_TIMEOUT, REQUEST_TIMEOUT), sent.url


async def test_a_shorter_timeout_bounds_the_connect_too(
    monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    api = make_api(monkeypatch, served, request_timeout=2.0)
    wire = served.wire
    wire.answer(200, ANY)

    await _every_call(api)
    await api.request("GET", PODS.path("ns"), timeout=10.0)

    assert {s.timeouts for s in wire.sent[:-1]} == {(2.0, 2.0)}
    assert wire.sent[-1].timeouts == (CONNECT_TIMEOUT, 10.0)
    await api.close()


async def test_each_request_says_what_it_sends_and_wants(wired: tuple[Api, Wire]) -> None:
    api, wire = wired
    wire.answer(200, ANY)

    await _every_call(api)

    get, listing, create, merge, delete, table, delete_pod, scale, patch = wire.sent
    assert get.headers["Accept"] == "application/json"
    assert "Content-Type" not in get.headers
    assert listing.url == (
        "/api/v1/namespaces/ns/pods?labelSelector=app%3Dweb"
        "&fieldSelector=status.phase%3DRunning&resourceVersion=0"
    )
    assert (create.method, create.headers["Content-Type"]) == ("POST", "application/json")
    assert create.body == {"metadata": {"name": "p"}}
    assert merge.headers["Content-Type"] == "application/merge-patch+json"
    # A null in a merge patch goes out as null (it deletes the key).
    assert merge.body == {"metadata": {"labels": {"a": None}}}
    assert delete.method == "DELETE"
    assert delete.body is None
    assert table.headers["Accept"] == TABLE
    assert "includeObject=None" in table.url
    assert "resourceVersion=0" in table.url
    assert delete_pod.url.endswith("/pods/p?gracePeriodSeconds=5")
    assert scale.url == "/apis/apps/v1/namespaces/ns/deployments/web/scale"
    assert scale.body == {"spec": {"replicas": 0}}
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    assert patch.body == [{"op": "remove", "path": "/a"}]


# -- the fake API server that the executor tests run on agrees with the real one -------------


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    api.add_namespace("ns")
    return api


async def test_fake_merge_patch_deletes_nulls_merges_maps_and_replaces_lists(fake: FakeApi) -> None:
    fake.add_pod("ns", "p", {"a": "1", "b": "2"})

    await fake.merge_patch(PODS, "ns", "p", {"metadata": {"labels": {"a": None, "c": "3"}}})
    await fake.merge_patch(PODS, "ns", "p", {"spec": {"containers": []}})

    pod = await fake.get(PODS, "ns", "p")
    assert pod is not None
    assert pod["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert pod["spec"]["containers"] == []


async def test_fake_resource_version_is_a_compare_and_swap(fake: FakeApi) -> None:
    fake.add_switch()
    switch = await fake.get_switch()
    assert switch is not None
    version = switch["metadata"]["resourceVersion"]

    await fake.patch_switch_status({"metadata": {"resourceVersion": version}, "status": {"x": 1}})
    with pytest.raises(Conflict):
        await fake.patch_switch_status({"metadata": {"resourceVersion": version}, "status": {}})

    after = await fake.get_switch()
    assert after is not None
    assert int(after["metadata"]["resourceVersion"]) > int(version)
    assert after["status"] == {"x": 1}


async def test_fake_status_and_main_resource_change_only_their_part(fake: FakeApi) -> None:
    fake.add_run("ns", "r", "exp")

    await fake.merge_patch(RUNS, "ns", "r", {"status": {"phase": "X"}, "spec": {"cancel": True}})
    await fake.patch_run_status("ns", "r", {"phase": "CREATED"})
    await fake.merge_patch(RUNS, "ns", "r", {"spec": {"findings": "f"}}, "status")

    run = await fake.get_run("ns", "r")
    assert run is not None
    assert run["status"] == {"phase": "CREATED"}
    assert run["spec"] == {"experimentRef": {"name": "exp"}, "cancel": True}


async def test_fake_create_conflicts_and_missing_things_are_not_found(fake: FakeApi) -> None:
    body = {"metadata": {"name": "r"}, "spec": {}}
    await fake.create(RUNS, "ns", body)
    with pytest.raises(Conflict):
        await fake.create(RUNS, "ns", body)
    with pytest.raises(NotFound):
        await fake.create(RUNS, "gone", body)
    with pytest.raises(NotFound):
        await fake.merge_patch(RUNS, "ns", "nope", {})
    assert await fake.delete(RUNS, "ns", "r") is True
    assert await fake.delete(RUNS, "ns", "r") is False
    assert await fake.get_run("ns", "r") is None


async def test_fake_json_patch_test_failure_is_a_conflict_and_changes_nothing(
    fake: FakeApi,
) -> None:
    fake.add_pod("ns", "p", {"shakeout.dev/isolated": "uid-1", "app": "web"})
    key = "/metadata/labels/shakeout.dev~1isolated"

    def unmark(value: str) -> list[dict[str, Any]]:
        return [{"op": "test", "path": key, "value": value}, {"op": "remove", "path": key}]

    with pytest.raises(Conflict):
        await fake.request("PATCH", PODS.path("ns", "p"), json_patch=unmark("uid-2"))
    await fake.request("PATCH", PODS.path("ns", "p"), json_patch=unmark("uid-1"))

    pod = await fake.get(PODS, "ns", "p")
    assert pod is not None
    assert pod["metadata"]["labels"] == {"app": "web"}


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("app=web", ["a", "b", "c"]),
        ("app==web,tier", ["a"]),
        ("app=web,!tier", ["b", "c"]),
        ("app!=web", ["d"]),
        ("tier in (front,back)", ["a", "d"]),
        ("tier notin (front)", ["b", "c", "d"]),
    ],
)
async def test_fake_label_selectors(fake: FakeApi, selector: str, names: list[str]) -> None:
    fake.add_pod("ns", "a", {"app": "web", "tier": "front"})
    fake.add_pod("ns", "b", {"app": "web"})
    fake.add_pod("ns", "c", {"app": "web"})
    fake.add_pod("ns", "d", {"app": "db", "tier": "back"})

    assert [p.name for p in await fake.list_pods("ns", selector)] == names


async def test_fake_field_selectors_and_tables(fake: FakeApi) -> None:
    fake.add_pod("ns", "running", {"app": "web"})
    fake.add_pod("ns", "pending", {"app": "web"}, phase="Pending")
    fake.add_pod("ns", "nowhere", {"app": "web"}, node=None)
    fake.add_pod("ns", "leaving", {"app": "web"}, deleting=True)
    fake.add_pod("ns", "elsewhere", {"app": "web"}, node="node-2")

    attackable = "status.phase=Running,spec.nodeName!="
    assert [p.name for p in await fake.list_pods("ns", "app=web", fields=attackable)] == [
        "elsewhere",
        "leaving",
        "running",
    ]
    assert [p.name for p in await fake.list_pods("ns", "", fields="spec.nodeName=node-2")] == [
        "elsewhere"
    ]
    names = await fake.list_pod_names("ns", "app=web", fields=attackable)
    assert [(p.name, p.deleting, p.node) for p in names] == [
        ("elsewhere", False, "node-2"),
        ("leaving", True, "node-1"),
        ("running", False, "node-1"),
    ]
    unscheduled = await fake.list_pod_names("ns", "app=web", fields="spec.nodeName=")
    assert [(p.name, p.node) for p in unscheduled] == [("nowhere", None)]
    with pytest.raises(Invalid):
        await fake.list_pods("ns", "", fields="spec.hostname=x")
    with pytest.raises(Invalid):
        await fake.list_pods("ns", "bad key!=x")


async def test_fake_scale_and_reviews(fake: FakeApi) -> None:
    fake.add_deployment("ns", "web", 3)
    fake.members.add(("alice", "ns"))

    assert await fake.get_replicas("Deployment", "ns", "web") == 3
    await fake.set_replicas("Deployment", "ns", "web", 0)
    assert fake.replicas("ns", "web") == 0
    with pytest.raises(NotFound):
        await fake.get_replicas("Deployment", "ns", "api")
    for user, allowed in (("alice", True), ("mallory", False)):
        review = {"spec": {"user": user, "resourceAttributes": {"namespace": "ns"}}}
        answer = await fake.create(SUBJECT_ACCESS_REVIEWS, None, review)
        assert answer["status"]["allowed"] is allowed


async def test_fake_failures_count_down_and_can_follow_the_write(fake: FakeApi) -> None:
    fake.add_deployment("ns", "web", 3)
    fake.fail("PATCH", r"/scale$", Unavailable("away", 503), times=1)
    fake.fail("PATCH", r"/scale$", Unavailable("lost", 0), times=1, after=True)

    with pytest.raises(Unavailable, match="away"):
        await fake.set_replicas("Deployment", "ns", "web", 1)
    assert fake.replicas("ns", "web") == 3
    with pytest.raises(Unavailable, match="lost"):
        await fake.set_replicas("Deployment", "ns", "web", 2)
    assert fake.replicas("ns", "web") == 2  # the write happened, its answer was lost
    await fake.set_replicas("Deployment", "ns", "web", 1)
    assert fake.replicas("ns", "web") == 1
    assert [c.error is not None for c in fake.find("PATCH", r"/scale$")] == [True, True, False]


async def test_a_429_that_says_when_is_tried_again_as_client_go_does(
    wired: tuple[Api, Wire],
) -> None:
    api, wire = wired
    # A new CRD's storage still initializing, then the answer.
    wire.first = [(429, "0"), (429, "0")]
    wire.answer(200, {"items": []})

    assert await api.request("GET", PODS.path("ns")) == {"items": []}
    assert len(wire.sent) == 3
    # A write too: the API server did not process a request it answered 429.
    wire.first = [(429, "0")]
    await api.request("POST", PODS.path("ns"), {"metadata": {"name": "p"}})
    assert [s.method for s in wire.sent[3:]] == ["POST", "POST"]


async def test_a_429_without_retry_after_or_past_the_retries_is_unavailable(
    wired: tuple[Api, Wire],
) -> None:
    api, wire = wired
    wire.first = [(429, None)]
    with pytest.raises(Unavailable, match="429 not now"):
        await api.request("GET", PODS.path("ns"))
    assert len(wire.sent) == 1

    wire.first = [(429, "0")] * (kube_client.RETRIES_AFTER + 1)
    with pytest.raises(Unavailable):
        await api.request("GET", PODS.path("ns"))
    assert len(wire.sent) == 1 + kube_client.RETRIES_AFTER + 1
