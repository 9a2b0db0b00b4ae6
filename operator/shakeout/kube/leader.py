"""Leader election for two or more operator replicas: one Lease, one active operator.

The standby waits for the Lease `shakeout-operator` (in the operator's namespace) to
expire, takes it with a compare-and-swap, and only then starts kopf: the active operator
resumes every live run from its journal (the run's status). The leader renews every
`renew` seconds; if it cannot renew within `duration` (the API server away, the process
starved) it exits at once, as controller-runtime does, so that two replicas never act
together: the standby takes over only after that same duration.

Expiry is judged on the observer's clock (when did this renewTime last change), never by
comparing another machine's timestamp with ours.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

from shakeout.api.labels import OPERATOR_LEASE
from shakeout.kube.client import Api, Obj
from shakeout.kube.errors import Conflict
from shakeout.kube.leases import lease_path, renewed
from shakeout.kube.resources import LEASES

log = logging.getLogger("shakeout.leader")

LEASE_NAME = OPERATOR_LEASE


@dataclass
class LeaderElector:
    namespace: str
    duration: float = 4.0
    renew: float = 1.0
    retry: float = 0.5
    identity: str = field(
        default_factory=lambda: f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    )
    api: Api = field(default_factory=lambda: Api(request_timeout=2.0))
    # The renewTime we last saw on the lease, and when (our clock) it last changed.
    seen: tuple[str, str] = ("", "")
    seen_at: float = 0.0

    @property
    def path(self) -> str:
        return lease_path(self.namespace, LEASE_NAME)

    def body(self, current: Obj | None) -> Obj:
        return renewed(current, LEASE_NAME, self.namespace, self.identity, self.duration)

    async def try_acquire(self) -> bool:
        """One attempt: True if we hold the lease now."""
        current = await self.api.get(LEASES, self.namespace, LEASE_NAME)
        if current is None:
            try:
                await self.api.create(LEASES, self.namespace, self.body(None))
            except Conflict:
                return False
            return True
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        marker = (holder, spec.get("renewTime") or "")
        now = time.monotonic()
        if marker != self.seen:
            self.seen, self.seen_at = marker, now
        expired = now - self.seen_at > float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and not expired:
            return False
        try:
            await self.api.request("PUT", self.path, self.body(current))
        except Conflict:
            return False  # someone else renewed or took it meanwhile
        return True

    async def acquire(self) -> None:
        log.info(f"standby {self.identity}: waiting for lease {self.namespace}/{LEASE_NAME}")
        while True:
            try:
                if await self.try_acquire():
                    log.info(f"leader {self.identity}: acquired lease {LEASE_NAME}")
                    return
            except Exception as err:  # noqa: BLE001  (the API server may be away: keep trying)
                log.warning(f"lease {LEASE_NAME}: {err}")
            await asyncio.sleep(self.retry)

    async def keep(self) -> None:
        """Renew until we cannot; then end the process (no second leader acting with us)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew)
            try:
                current = await self.api.get(LEASES, self.namespace, LEASE_NAME)
                holder = ((current or {}).get("spec") or {}).get("holderIdentity")
                if current is not None and holder != self.identity:
                    self.lost(f"lease {LEASE_NAME} is held by {holder}")
                await self.api.request("PUT", self.path, self.body(current))
                renewed = time.monotonic()
            except Exception as err:  # noqa: BLE001  (judged by the deadline below)
                log.warning(f"lease {LEASE_NAME} not renewed: {err}")
            if time.monotonic() - renewed > self.duration:
                self.lost(f"lease {LEASE_NAME} not renewed for {self.duration:g} s")

    def lost(self, why: str) -> None:
        log.error(f"leadership lost ({why}): exiting so that only one operator acts")
        logging.shutdown()
        os._exit(1)


class StandbyHealth:
    """/healthz while a standby waits: alive (do not restart it), though not leading."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        handler = type(
            "Healthz",
            (http.server.BaseHTTPRequestHandler,),
            {"do_GET": _ok, "log_message": lambda *_: None},
        )
        # The liveness URL's own address (0.0.0.0 in the Deployment, for the kubelet).
        address = (parsed.hostname or "127.0.0.1", parsed.port or 8080)
        self.server = http.server.ThreadingHTTPServer(address, handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ok(handler: http.server.BaseHTTPRequestHandler) -> None:
    body = b'{"standby": true}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
