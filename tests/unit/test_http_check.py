"""HttpGet state checks (SEC-03): what they may reach, and one bounded request.

The targets are refused before anything is sent; the request itself is played against a
local aiohttp server on 127.0.0.1, whose address the check's allow-list opens for the test
only (an admin's --allow-check-host).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from shakeout.api.checks import HttpGetCheck, StateCheck
from shakeout.api.run import CheckOutcome
from shakeout.gather import http_check
from shakeout.gather.checks import run_check
from shakeout.gather.http_check import MAX_BODY, Target, TargetRefusedError
from shakeout.kube import client as kube_client
from shakeout.kube.errors import Forbidden
from shakeout.kube.resources import NODES, SERVICES
from shakeout.options import OPTIONS, parse_allowed_hosts
from tests.unit.fake_kube import FakeApi

NS = "team-a"
SECRET = "s3cr3t-token-value"


def service(name: str, ip: str, ports: tuple[int, ...] = (80,), **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"port": p} for p in ports],
            **spec,
        },
    }


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", api)
    monkeypatch.setattr(http_check, "_cluster_cache", None)
    monkeypatch.setattr(OPTIONS, "allowed_check_hosts", frozenset())
    api.put(SERVICES, "default", service("kubernetes", "10.96.0.1", (443,)))
    api.put(
        NODES,
        None,
        {
            "metadata": {"name": "node-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]},
        },
    )
    api.put(SERVICES, NS, service("web", "10.96.3.7", (80, 8443)))
    api.put(SERVICES, "team-b", service("billing", "10.96.9.9", (8080,)))
    return api


def check(**http_get: Any) -> HttpGetCheck:
    return HttpGetCheck.model_validate(http_get)


def raw(**http_get: Any) -> HttpGetCheck:
    """A check as the API server might hold it had the schema been skipped: no validation."""
    return HttpGetCheck.model_construct(headers=[], timeout_seconds=2, **http_get)


async def refused(params: HttpGetCheck, allowed: frozenset[Any] = frozenset()) -> str:
    with pytest.raises(TargetRefusedError) as err:
        await http_check.resolve_target(params, NS, allowed)
    return str(err.value)


# -- the model: what the API server refuses -------------------------------------------------


@pytest.mark.parametrize(
    ("http_get", "message"),
    [
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "link-local"),
        ({"url": "http://[fe80::a9fe:a9fe]/"}, "link-local"),
        ({"url": "http://[::ffff:169.254.169.254]/"}, "link-local"),
        ({"url": "http://user:pw@web.team-a.svc/"}, "credentials in the URL"),
        ({}, "exactly one of service or url"),
        (
            {"url": "http://web.team-a.svc/", "service": {"name": "web", "port": 80}},
            "exactly one of service or url",
        ),
        ({"service": {"name": "web", "port": 80, "path": "no-slash"}}, "path"),
        (
            {"service": {"name": "web", "port": 80}, "headers": [{"name": "Authorization"}]},
            "valueFrom",
        ),
        (
            {
                "service": {"name": "web", "port": 80},
                "headers": [{"name": "Authorization", "value": "Bearer x"}],
            },
            "valueFrom",
        ),
    ],
)
def test_the_model_refuses(http_get: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(**http_get)


def test_the_model_takes_a_service_and_secret_headers() -> None:
    params = check(
        service={"name": "web", "port": 8443, "path": "/healthz", "scheme": "https"},
        headers=[
            {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}
        ],
    )
    assert params.service is not None
    assert params.service.scheme == "https"
    assert params.headers[0].value_from.secret_key_ref.key == "k"


# -- the operator: what a check may reach ---------------------------------------------------


async def test_imds_is_refused_even_when_an_admin_allows_it(fake: FakeApi) -> None:
    imds = raw(url="http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    assert "not allowed" in await refused(imds)
    allowed = parse_allowed_hosts(["169.254.169.254"])
    assert "link-local or cloud metadata" in await refused(imds, allowed)
    # The same address written as one number resolves to IMDS: refused after resolution.
    decimal = raw(url="http://2852039166/")
    assert "link-local or cloud metadata" in await refused(
        decimal, parse_allowed_hosts(["2852039166"])
    )


async def test_another_teams_service_is_refused(fake: FakeApi) -> None:
    for url in (
        "http://billing.team-b.svc:8080/admin/export",
        "http://billing.team-b.svc.cluster.local:8080/admin/export",
    ):
        message = await refused(check(url=url))
        assert message.startswith("httpGet.url: billing.team-b.svc is a Service of namespace")
        assert "(team-a)" in message
    assert not [c for c in fake.calls if "/namespaces/team-b/" in c.path]


@pytest.mark.parametrize(
    "url",
    ["http://10.96.9.9:8080/", "http://127.0.0.1/", "http://[::1]/", "http://localhost:80/"],
)
async def test_ip_literals_and_loopback_are_refused(fake: FakeApi, url: str) -> None:
    message = await refused(check(url=url))
    assert message.startswith("httpGet.url: the ")
    assert "is not allowed" in message


async def test_unknown_hosts_are_refused_naming_the_field(fake: FakeApi) -> None:
    message = await refused(check(url="https://example.com/"))
    assert message.startswith("httpGet.url: the host example.com (port 443) is not allowed")
    # An allowed host on another port than the one allowed.
    allowed = parse_allowed_hosts(["example.com:8443"])
    assert "is not allowed" in await refused(check(url="https://example.com/"), allowed)


async def test_an_own_service_resolves_through_the_api(fake: FakeApi) -> None:
    target = await http_check.resolve_target(
        check(service={"name": "web", "port": 80, "path": "/health?token=abc"}), NS, frozenset()
    )
    assert target.addresses == ("10.96.3.7",)
    assert target.url == "http://web.team-a.svc:80/health?token=abc"
    assert target.label == "service web:80/health"  # no query string
    # The old form: a url naming a Service of the run's own namespace.
    old = await http_check.resolve_target(
        check(url="http://web.team-a.svc.cluster.local/x?k=v"), NS, frozenset()
    )
    assert (old.addresses, old.port, old.label) == (("10.96.3.7",), 80, "service web:80/x")


@pytest.mark.parametrize(
    ("svc", "message"),
    [
        (service("lo", "127.0.0.1"), "loopback"),
        (service("imds", "169.254.169.254"), "link-local or cloud metadata"),
        (service("api", "10.96.0.1"), "API server or a node"),
        (service("node", "10.0.0.11"), "API server or a node"),
        (service("ext", "", type="ExternalName", externalName="evil.example"), "ExternalName"),
        (service("headless", "None"), "headless"),
    ],
)
async def test_services_resolving_to_forbidden_addresses_are_refused(
    fake: FakeApi, svc: dict[str, Any], message: str
) -> None:
    fake.put(SERVICES, NS, svc)
    name = svc["metadata"]["name"]
    text = await refused(check(service={"name": name, "port": 80}))
    assert text.startswith(f"httpGet.service: Service {name}")
    assert message in text


async def test_a_service_port_must_be_declared_and_the_service_exist(fake: FakeApi) -> None:
    assert "has no port 9000" in await refused(check(service={"name": "web", "port": 9000}))
    assert "not found in namespace team-a" in await refused(
        check(service={"name": "nope", "port": 80})
    )


# -- the request, against a local server ----------------------------------------------------


class Server:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.seen_headers: list[dict[str, str]] = []
        self.port = 0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    big = b"x" * (10 * 1024 * 1024) + b"NEEDLE"
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))

    async def handle(request: web.Request) -> web.StreamResponse:
        state.hits.append(request.path)
        state.seen_headers.append(dict(request.headers))
        if request.path == "/big":
            return web.Response(body=big)
        if request.path == "/bomb":
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})
        if request.path == "/slow":
            await asyncio.sleep(5)
            return web.Response(text="late")
        if request.path == "/redirect":
            raise web.HTTPFound(f"http://localhost:{state.port}/outside")
        if request.path == "/auth":
            ok = request.headers.get("Authorization") == f"Bearer {SECRET}"
            return web.Response(status=200 if ok else 401, text="healthy")
        return web.Response(text="healthy")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    yield state
    await runner.cleanup()


@pytest.fixture
def allow_server(monkeypatch: pytest.MonkeyPatch, server: Server) -> str:
    """The local server's address opened in the check's allow-list (as an admin would)."""
    monkeypatch.setattr(
        OPTIONS, "allowed_check_hosts", parse_allowed_hosts([f"127.0.0.1:{server.port}"])
    )
    return f"http://127.0.0.1:{server.port}"


async def test_an_allowed_host_is_checked(fake: FakeApi, allow_server: str) -> None:
    probe = await http_check.http_get(
        check(url=f"{allow_server}/h?x=1", bodyContains="healthy"), NS
    )
    ok, message = probe.ok, probe.message
    assert (ok, message) == (True, f"GET {allow_server}/h: 200")
    assert probe.unit == "ms"
    assert probe.value is not None
    assert probe.value >= 0


async def test_a_10_mib_body_is_read_up_to_64_kib(
    fake: FakeApi, server: Server, allow_server: str
) -> None:
    target = await http_check.resolve_target(
        check(url=f"{allow_server}/big"), NS, OPTIONS.allowed_check_hosts
    )
    status, body, cut = await http_check.fetch(target, {}, 5)
    assert (status, len(body), cut) == (200, MAX_BODY, True)
    probe = await http_check.http_get(check(url=f"{allow_server}/big", bodyContains="NEEDLE"), NS)
    ok, message = probe.ok, probe.message
    assert not ok
    assert "the first 64 KiB of the body lacks the expected text" in message


async def test_a_gzip_bomb_is_never_decompressed(
    fake: FakeApi, server: Server, allow_server: str
) -> None:
    target = await http_check.resolve_target(
        check(url=f"{allow_server}/bomb"), NS, OPTIONS.allowed_check_hosts
    )
    status, body, cut = await http_check.fetch(target, {}, 5)
    assert status == 200
    assert not cut
    assert body[:2] == b"\x1f\x8b"
    assert len(body) < MAX_BODY
    assert server.seen_headers[-1]["Accept-Encoding"] == "identity"


async def test_a_redirect_is_reported_not_followed(
    fake: FakeApi, server: Server, allow_server: str
) -> None:
    probe = await http_check.http_get(check(url=f"{allow_server}/redirect"), NS)
    ok, message = probe.ok, probe.message
    assert not ok
    assert message == f"GET {allow_server}/redirect: status 302 (a redirect, not followed)"
    assert server.hits == ["/redirect"]  # the outside host was never asked


async def test_a_slow_answer_times_out(fake: FakeApi, server: Server, allow_server: str) -> None:
    start = time.monotonic()
    probe = await http_check.http_get(check(url=f"{allow_server}/slow", timeoutSeconds=1), NS)
    ok, message = probe.ok, probe.message
    assert (ok, message) == (False, f"GET {allow_server}/slow: no answer within 1s")
    assert probe.outcome == CheckOutcome.FAIL  # the system did not answer: refuted
    assert time.monotonic() - start < 3


async def test_the_connection_goes_to_the_checked_address(server: Server) -> None:
    """A Service's name is never looked up in DNS: the resolver answers the ClusterIP that
    was checked (here the local server's), and nothing else."""
    target = Target("http", "web.team-a.svc", server.port, "/p", ("127.0.0.1",), "service web")
    status, body, _ = await http_check.fetch(target, {}, 5)
    assert (status, body) == (200, b"healthy")
    assert server.seen_headers[-1]["Host"] == f"web.team-a.svc:{server.port}"
    resolver = http_check.PinnedResolver("web.team-a.svc", ("127.0.0.1",))
    with pytest.raises(OSError, match="not the check's target"):
        await resolver.resolve("evil.example", 80)


def secret_header(name: str = "token", key: str = "value") -> dict[str, Any]:
    return {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


async def test_a_header_is_read_from_a_secret(
    fake: FakeApi, server: Server, allow_server: str
) -> None:
    fake.put(
        http_check.SECRETS,
        NS,
        {
            "metadata": {"name": "token"},
            "data": {"value": base64.b64encode(f"Bearer {SECRET}".encode()).decode()},
        },
    )
    probe = await http_check.http_get(
        check(url=f"{allow_server}/auth", headers=[secret_header()]), NS
    )
    ok, message = probe.ok, probe.message
    assert (ok, message) == (True, f"GET {allow_server}/auth: 200")
    assert server.seen_headers[-1]["Authorization"] == f"Bearer {SECRET}"
    # A missing Secret or key: refused, naming them, nothing sent.
    hits = len(server.hits)
    probe = await http_check.http_get(
        check(url=f"{allow_server}/auth", headers=[secret_header("other")]), NS
    )
    ok, message = probe.ok, probe.message
    assert (ok, message) == (
        False,
        "refused: httpGet.headers[0]: Secret other key value: no such Secret",
    )
    probe = await http_check.http_get(
        check(url=f"{allow_server}/auth", headers=[secret_header(key="nokey")]), NS
    )
    ok, message = probe.ok, probe.message
    assert not ok
    assert message.endswith("Secret token key nokey: no such key")
    assert len(server.hits) == hits


async def test_a_secret_the_operator_may_not_read(fake: FakeApi, allow_server: str) -> None:
    fake.fail("GET", r"/secrets/", Forbidden("forbidden", 403))
    probe = await http_check.http_get(
        check(url=f"{allow_server}/auth", headers=[secret_header()]), NS
    )
    ok, message = probe.ok, probe.message
    assert not ok
    assert "the operator may not read Secrets in team-a" in message
    assert SECRET not in message


async def test_the_state_check_reports_a_refusal(fake: FakeApi) -> None:
    state = StateCheck.model_validate(
        {"name": "g", "type": "HttpGet", "httpGet": {"url": "http://billing.team-b.svc:8080/"}}
    )
    probe = await run_check(state, NS, "app=web")
    ok, message = probe.ok, probe.message
    assert not ok
    assert message.startswith("refused: httpGet.url: billing.team-b.svc is a Service")
    assert probe.outcome == CheckOutcome.ERROR  # never asked: could not be evaluated


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        (["Example.com"], {("example.com", None)}),
        (
            ["127.0.0.1:8080", "[::1]:80", "[fd00::1]"],
            {("127.0.0.1", 8080), ("::1", 80), ("fd00::1", None)},
        ),
    ],
)
def test_allow_check_host_values(values: list[str], parsed: set[Any]) -> None:
    assert parse_allowed_hosts(values) == frozenset(parsed)


@pytest.mark.parametrize("value", ["a:0", "a:x", "http://a/", "a@b", ""])
def test_bad_allow_check_host_values(value: str) -> None:
    with pytest.raises(ValueError, match="--allow-check-host"):
        parse_allowed_hosts([value])
