"""HTTP to the API server on the event loop: aiohttp, configured from the kubernetes client.

The kubernetes client is synchronous: each request of its own would need a thread. With
32 requests in flight that is 32 threads, each with a malloc heap of its own that keeps
the pages its responses were read into (bench/peers.py: the operator's peak grew from 93
to 171 MiB attacking 1,000 pods). aiohttp, which kopf already runs on, sends the same
requests from the event loop's thread. What the kubernetes client is still used for is
what users rely on it for: reading the kubeconfig or the in-cluster service account
(certificates, tokens and their refresh, exec plugins, TLS server names, proxies).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client

# A watch event is one line; none is longer than an object the API server stores (etcd's
# 1.5 MiB request limit) plus its envelope. A longer line is a broken stream.
MAX_LINE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    data: bytes
    retry_after: float | None = None  # seconds, when the server said when to try again


class StreamRefusedError(Exception):
    """The API server answered a stream's request with an error status, not a stream."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the API server sends whole seconds)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def ssl_context(configuration: client.Configuration) -> ssl.SSLContext:
    """The TLS settings of a kubeconfig or the service account, as the client applies them."""
    if not configuration.verify_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cafile=configuration.ssl_ca_cert, cadata=configuration.ca_cert_data
        )
        # `assert_hostname: false` (kubernetes.client) turns the name check off.
        if configuration.assert_hostname is False:
            context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def authorization(configuration: client.Configuration) -> dict[str, str]:
    """The bearer token header, refreshed by the client's hook when it has one (the
    service account's rotated token, an exec plugin's or OIDC token)."""
    bearer = configuration.auth_settings().get("BearerToken")
    return {"Authorization": str(bearer["value"])} if bearer and bearer.get("value") else {}


class Transport:
    """One aiohttp session per event loop (tests and the CLI run several loops one after
    another), at most `connections` connections to the API server."""

    def __init__(self, configuration: client.Configuration, connections: int) -> None:
        self.configuration = configuration
        self.base = configuration.host.rstrip("/")
        self.connections = connections
        self.proxy = configuration.proxy or None
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            if self._ssl is None and self.base.startswith("https:"):
                self._ssl = ssl_context(self.configuration)
            connector = aiohttp.TCPConnector(
                limit=self.connections, ssl=self._ssl if self._ssl is not None else False
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
            self._loop = loop
        return self._session

    def _options(
        self, headers: dict[str, str], connect_timeout: float, read_timeout: float
    ) -> dict[str, Any]:
        """What every request to the API server carries: the credentials, the timeouts
        (none in total: a watch streams for minutes), the proxy and the TLS server name."""
        options: dict[str, Any] = {
            "headers": {**headers, **authorization(self.configuration)},
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            "proxy": self.proxy,
        }
        if self.configuration.tls_server_name:
            options["server_hostname"] = self.configuration.tls_server_name
        return options

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        data: bytes | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> Answer:
        """One request; raises aiohttp.ClientError, OSError or asyncio.TimeoutError when no
        answer comes."""
        async with asyncio.timeout(connect_timeout + read_timeout):
            async with self.session().request(
                method,
                self.base + path,
                params=query,
                data=data,
                **self._options(headers, connect_timeout, read_timeout),
            ) as response:
                return Answer(
                    response.status,
                    await response.read(),
                    retry_after(response.headers.get("Retry-After")),
                )

    async def lines(
        self,
        path: str,
        *,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
    ) -> AsyncIterator[bytes]:
        """The lines of a streamed GET (a watch), as they come, until the server ends it.

        Raises StreamRefusedError for an error status, ValueError for a line over MAX_LINE,
        and aiohttp.ClientError, OSError or asyncio.TimeoutError when the stream breaks
        or is silent for read_timeout."""
        async with self.session().get(
            self.base + path,
            params=query,
            **self._options(headers, connect_timeout, read_timeout),
        ) as response:
            if response.status >= 400:
                raise StreamRefusedError(Answer(response.status, await response.read()))
            pending = bytearray()
            async for chunk in response.content.iter_any():
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    if line.strip():
                        yield line
                if len(pending) > MAX_LINE:
                    raise ValueError(f"a streamed line is longer than {MAX_LINE} bytes")
            if pending.strip():
                yield bytes(pending)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
