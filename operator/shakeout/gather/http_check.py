"""HttpGet state checks: what they may reach, and one bounded request (SEC-03).

A check reaches a Service of the run's own namespace (by name, resolved to its ClusterIP
through the API, never DNS) or a host a cluster admin allows (`--allow-check-host`).
After resolution the address is checked again: loopback, link-local (cloud metadata), the
API server's and the nodes' addresses are refused for Services; link-local and metadata
addresses are refused even for allowed hosts. The connection goes to the address that was
checked (a pinned resolver: no second lookup, no DNS rebinding), with timeouts, no proxy from
the environment, no decompression, no redirect followed and at most 64 KiB of body read.
Header values come from Secrets of the run's namespace. The message never holds a query
string, a credential or a header value: it names the target.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from shakeout.api.checks import HttpGetCheck
from shakeout.engine.checks import Probe
from shakeout.kube.client import api
from shakeout.kube.errors import Forbidden, NotFound
from shakeout.kube.resources import NODES, SECRETS, SERVICES
from shakeout.options import OPTIONS

MAX_BODY = 64 * 1024
CONNECT_TIMEOUT = 5.0
# How long the cluster's own addresses (API server, nodes) are kept between checks.
CLUSTER_ADDRESSES_TTL = 60.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# TargetRefusedError for every target, allowed hosts included: link-local (cloud metadata on most
# clouds), the metadata addresses of AWS over IPv6 and of Alibaba, unspecified, multicast.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
# A url host that names a Service: NAME.NAMESPACE.svc[.cluster.local].
SERVICE_HOST = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.svc(\.cluster\.local)?\.?$"
)


class TargetRefusedError(Exception):
    """The check's target is not allowed: nothing was sent."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # the name in the URL (Host header, TLS server name)
    port: int
    path: str  # path and query, as sent
    addresses: tuple[str, ...]  # what the connection may go to, already checked
    label: str  # what messages name: no query string, no credentials

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def _mapped(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def always_refused(addr: IPAddress) -> str | None:
    """Why no check may ever connect to this address, or None."""
    addr = _mapped(addr)
    if any(addr in net for net in METADATA_NETWORKS if net.version == addr.version):
        return "a link-local or cloud metadata address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_unspecified or addr.is_multicast:
        return "an unspecified or multicast address"
    return None


def service_refused(addr: IPAddress, cluster: frozenset[IPAddress]) -> str | None:
    """Why a Service's check may not connect to this address, or None."""
    if (why := always_refused(addr)) is not None:
        return why
    addr = _mapped(addr)
    if addr.is_loopback:
        return "a loopback address"
    if addr in cluster:
        return "an address of the API server or a node"
    return None


def _strip_query(path: str) -> str:
    return path.split("?", 1)[0]


# -- the cluster's own addresses ------------------------------------------------------------

_cluster_cache: tuple[float, frozenset[IPAddress]] | None = None


async def cluster_addresses() -> frozenset[IPAddress]:
    """The API server's addresses (the kubernetes Service and the client's host) and every
    node's; kept for a minute. Raises when they cannot be read (the check then fails)."""
    global _cluster_cache  # noqa: PLW0603
    now = time.monotonic()
    if _cluster_cache is not None and now - _cluster_cache[0] < CLUSTER_ADDRESSES_TTL:
        return _cluster_cache[1]
    client = api()
    found: set[IPAddress] = set()
    nodes, kubernetes = await asyncio.gather(
        client.list_objects(NODES),
        client.list_objects(SERVICES, "default", fields="metadata.name=kubernetes"),
    )
    for node in nodes:
        for address in (node.get("status") or {}).get("addresses") or []:
            if (ip := _ip(str(address.get("address", "")))) is not None:
                found.add(_mapped(ip))
    for svc in kubernetes:
        spec = svc.get("spec") or {}
        for text in [spec.get("clusterIP"), *(spec.get("clusterIPs") or [])]:
            if text and (ip := _ip(str(text))) is not None:
                found.add(_mapped(ip))
    configuration = getattr(getattr(client, "api_client", None), "configuration", None)
    if configuration is not None and (host := urlsplit(configuration.host).hostname):
        found |= await resolve_host(host, 443)
    result = frozenset(found)
    _cluster_cache = (now, result)
    return result


async def resolve_host(host: str, port: int) -> set[IPAddress]:
    if (ip := _ip(host)) is not None:
        return {_mapped(ip)}
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {_mapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


# -- what a check may reach -----------------------------------------------------------------


async def resolve_target(
    params: HttpGetCheck, namespace: str, allowed: frozenset[tuple[str, int | None]]
) -> Target:
    """The checked target of an HttpGet check of a run in `namespace`; raises TargetRefusedError."""
    if params.service is not None:
        svc = params.service
        return await service_target(
            svc.name,
            svc.port,
            svc.path,
            scheme=str(svc.scheme),
            namespace=namespace,
            field="httpGet.service",
        )
    assert params.url is not None
    parts = urlsplit(params.url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise TargetRefusedError(f"httpGet.url: bad port ({err})") from None
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None:
        raise TargetRefusedError("httpGet.url: credentials in the URL are refused; use headers")
    if not host:
        raise TargetRefusedError("httpGet.url: no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if (match := SERVICE_HOST.match(host)) is not None:
        name, svc_namespace = match.group(1), match.group(3)
        if svc_namespace != namespace:
            raise TargetRefusedError(
                f"httpGet.url: {name}.{svc_namespace}.svc is a Service of namespace "
                f"{svc_namespace}; a check reaches only Services of the run's namespace "
                f"({namespace}) or hosts an admin allows"
            )
        return await service_target(
            name, port, path, scheme=parts.scheme, namespace=namespace, field="httpGet.url"
        )
    if (host, port) not in allowed and (host, None) not in allowed:
        what = "the IP address" if _ip(host) is not None else "the host"
        raise TargetRefusedError(
            f"httpGet.url: {what} {host} (port {port}) is not allowed: a check reaches a "
            f"Service of the run's namespace (httpGet.service, or NAME.{namespace}.svc) or a "
            "host an admin allows (--allow-check-host)"
        )
    try:
        addresses = await resolve_host(host, port)
    except OSError as err:
        raise TargetRefusedError(f"httpGet.url: {host} does not resolve ({err})") from None
    for addr in addresses:
        if (why := always_refused(addr)) is not None:
            raise TargetRefusedError(f"httpGet.url: {host} resolves to {addr}, {why}: refused")
    label = f"{parts.scheme}://{host}:{port}{_strip_query(path)}"
    return Target(parts.scheme, host, port, path, tuple(sorted(map(str, addresses))), label)


async def service_target(
    name: str, port: int, path: str, *, scheme: str, namespace: str, field: str
) -> Target:
    """A Service of `namespace` as a checked target (its ClusterIPs, never loopback, the API
    server's or a node's); raises TargetRefusedError naming `field`. Metric checks use it too."""
    items = await api().list_objects(SERVICES, namespace, fields=f"metadata.name={name}")
    if not items:
        raise TargetRefusedError(f"{field}: Service {name} not found in namespace {namespace}")
    spec = items[0].get("spec") or {}
    if spec.get("type") == "ExternalName":
        raise TargetRefusedError(f"{field}: Service {name} is an ExternalName Service: refused")
    ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
    if not ips or ips == ["None"]:
        raise TargetRefusedError(f"{field}: Service {name} has no ClusterIP (headless): refused")
    if port not in {int(p.get("port", 0)) for p in spec.get("ports") or []}:
        raise TargetRefusedError(f"{field}: Service {name} has no port {port}")
    cluster = await cluster_addresses()
    for text in ips:
        addr = _ip(str(text))
        if addr is None:
            raise TargetRefusedError(f"{field}: Service {name} has a bad ClusterIP {text!r}")
        if (why := service_refused(addr, cluster)) is not None:
            raise TargetRefusedError(f"{field}: Service {name} resolves to {addr}, {why}: refused")
    host = f"{name}.{namespace}.svc"
    label = f"service {name}:{port}{_strip_query(path)}"
    return Target(scheme, host, port, path, tuple(str(ip) for ip in ips), label)


async def read_headers(params: HttpGetCheck, namespace: str) -> dict[str, str]:
    """The check's headers, each value read from its Secret; raises TargetRefusedError (naming the
    Secret and key, never a value)."""
    headers: dict[str, str] = {}
    for i, header in enumerate(params.headers):
        ref = header.value_from.secret_key_ref
        where = f"httpGet.headers[{i}]: Secret {ref.name} key {ref.key}"
        try:
            secret = await api().get(SECRETS, namespace, ref.name)
        except Forbidden:
            raise TargetRefusedError(
                f"{where}: the operator may not read Secrets in {namespace}"
            ) from None
        if secret is None:
            raise TargetRefusedError(f"{where}: no such Secret")
        data = (secret.get("data") or {}).get(ref.key)
        if data is None:
            raise TargetRefusedError(f"{where}: no such key")
        try:
            value = base64.b64decode(data, validate=True).decode()
        except ValueError:
            raise TargetRefusedError(f"{where}: not UTF-8 text") from None
        if any(c in value for c in "\r\n\0"):
            raise TargetRefusedError(f"{where}: the value holds a line break")
        headers[header.name] = value
    return headers


# -- the request ----------------------------------------------------------------------------


class PinnedResolver(AbstractResolver):
    """Answers only the target's host, with the addresses that were checked."""

    def __init__(self, host: str, addresses: tuple[str, ...]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self.host.rstrip("."):
            raise OSError(f"{host}: not the check's target")
        return [
            ResolveResult(
                hostname=host,
                host=addr,
                port=port,
                family=socket.AF_INET6 if ":" in addr else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for addr in self.addresses
        ]

    async def close(self) -> None:
        return None


async def fetch(
    target: Target, headers: dict[str, str], timeout_seconds: float
) -> tuple[int, bytes, bool]:
    """One GET: (status, at most MAX_BODY bytes of the raw body, whether it was cut)."""
    timeout = aiohttp.ClientTimeout(
        total=timeout_seconds, sock_connect=min(CONNECT_TIMEOUT, timeout_seconds)
    )
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(target.host, target.addresses), force_close=True, limit=1
    )
    sent: dict[str, Any] = {**headers, "Accept-Encoding": "identity"}
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        ) as session,
        session.get(target.url, headers=sent, allow_redirects=False) as resp,
    ):
        body = b""
        while len(body) <= MAX_BODY:
            chunk = await resp.content.read(MAX_BODY + 1 - len(body))
            if not chunk:
                break
            body += chunk
        cut = len(body) > MAX_BODY
        if cut:
            resp.close()  # the rest is never read
        return resp.status, body[:MAX_BODY], cut


async def http_get(params: HttpGetCheck, namespace: str) -> Probe:
    """Run one HttpGet check of a run in `namespace`. A target that is refused or a header
    that cannot be read could not be evaluated (Error); no answer, or a wrong one, is a
    Fail; the value is the answer's time in ms."""
    try:
        target = await resolve_target(params, namespace, OPTIONS.allowed_check_hosts)
        headers = await read_headers(params, namespace)
    except TargetRefusedError as err:
        return Probe.error(f"refused: {err}")
    except NotFound as err:
        return Probe.error(f"{type(err).__name__}: {err}")
    what = f"GET {target.label}"
    began = time.monotonic()
    try:
        status, body, cut = await fetch(target, headers, params.timeout_seconds)
    except TimeoutError:
        return Probe.judged(False, f"{what}: no answer within {params.timeout_seconds}s")
    except aiohttp.ClientError as err:
        return Probe.judged(False, f"{what}: {type(err).__name__}")
    took = round((time.monotonic() - began) * 1000, 1)

    def judged(ok: bool, message: str) -> Probe:
        return Probe.judged(ok, message, took, "ms")

    if 300 <= status < 400 and status != params.expected_status:
        return judged(False, f"{what}: status {status} (a redirect, not followed)")
    if status != params.expected_status:
        return judged(False, f"{what}: status {status}, expected {params.expected_status}")
    if params.body_contains is not None and params.body_contains.encode() not in body:
        where = "the first 64 KiB of the body" if cut else "the body"
        return judged(False, f"{what}: {where} lacks the expected text")
    return judged(True, f"{what}: {status}")
