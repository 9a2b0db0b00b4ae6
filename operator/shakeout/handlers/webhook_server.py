"""The admission webhook server: reached by URL on the sandbox, through a Service in a cluster.

kopf's WebhookServer tells the API server a URL. Inside a cluster the API server reaches an
operator pod through a Service instead (a URL with a cluster DNS name does not resolve on
most control-plane hosts), so this server can describe itself as a Service reference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
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
