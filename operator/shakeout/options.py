"""What `shakeout operator` was started with: read by the kopf wiring and the webhooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Options:
    webhook: bool = True
    webhook_addr: str = "127.0.0.1"
    webhook_port: int = 9443
    # The host name the API server uses to reach the webhook (URL mode).
    webhook_host: str = "127.0.0.1"
    cert_dir: Path | None = None
    # Namespaces never attacked besides the system ones: the operator's own.
    protected_namespaces: frozenset[str] = frozenset()
    # ADDR:PORT of the Prometheus endpoint; None serves none.
    metrics: str | None = None
    # In a cluster: announce the webhook as this Service (NAMESPACE/NAME[:PORT]).
    webhook_service: str | None = None


OPTIONS = Options()
