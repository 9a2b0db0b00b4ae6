"""The admission webhook server: reached by URL on the sandbox, through a Service in a cluster.

kopf's WebhookServer tells the API server a URL. Inside a cluster the API server reaches an
operator pod through a Service instead (a URL with a cluster DNS name does not resolve on
most control-plane hosts), so this server can describe itself as a Service reference.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    port: int = 443

    @classmethod
    def parse(cls, text: str) -> ServiceRef:
        """NAMESPACE/NAME[:PORT], e.g. shakeout-system/shakeout-webhook:443."""
        where, _, port = text.partition(":")
        namespace, sep, name = where.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"expected NAMESPACE/NAME[:PORT], got {text!r}")
        return cls(namespace, name, int(port) if port else 443)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The names the API server checks the serving certificate against."""
        base = f"{self.name}.{self.namespace}.svc"
        return (base, f"{base}.cluster.local")


def client_auth(client_ca: Path | None) -> dict[str, Any]:
    """kopf's WebhookServer options that make the TLS handshake require a client
    certificate signed by `client_ca`; none (anyone may connect) without a CA.

    CERT_REQUIRED, not kopf's default CERT_OPTIONAL: a client without a certificate is
    refused in the handshake, before any HTTP request is read.
    """
    if client_ca is None:
        return {}
    return {"verify_cafile": str(client_ca), "verify_mode": ssl.CERT_REQUIRED}


def unauthenticated_warning(port: int) -> str:
    return (
        f"the admission webhook on port {port} is unauthenticated: any client that reaches "
        "it can post admission reviews (learning about Experiments and runs, and making the "
        "operator list pods); give --webhook-client-ca with the CA of the API server's "
        "webhook client certificate (docs/safety.md)"
    )


def service_client_config(config: dict[str, Any], service: ServiceRef) -> dict[str, Any]:
    """kopf's URL client config turned into a Service one (same CA bundle)."""
    out: dict[str, Any] = {
        "service": {
            "namespace": service.namespace,
            "name": service.name,
            "port": service.port,
            "path": "",
        }
    }
    if config.get("caBundle"):
        out["caBundle"] = config["caBundle"]
    return out


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's server, announced to the API server as a Service reference."""

    def __init__(self, *, service: ServiceRef, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for config in super().__call__(fn):
            yield service_client_config(dict(config), self.service)
