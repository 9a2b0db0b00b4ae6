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
    # PEM CA bundle (--webhook-client-ca): the webhook server then requires a TLS client
    # certificate signed by it (the API server's, from its AdmissionConfiguration). None:
    # no client authentication, as before (a warning at start-up).
    webhook_client_ca: Path | None = None
    # The operator's own namespace (POD_NAMESPACE): its leader Lease, the node agents'
    # Leases (read there and nowhere else) and the runs' rollback records live there.
    namespace: str = "shakeout-system"
    # Namespaces never attacked besides the system ones: the operator's own.
    protected_namespaces: frozenset[str] = frozenset()
    # ADDR:PORT of the Prometheus endpoint; None serves none.
    metrics: str | None = None
    # In a cluster: announce the webhook as this Service (NAMESPACE/NAME[:PORT]).
    webhook_service: str | None = None
    # Hosts HttpGet state checks may reach besides the run's own Services (--allow-check-host):
    # (host, port), port None for any port. Empty by default (and in deploy/).
    allowed_check_hosts: frozenset[tuple[str, int | None]] = frozenset()
    # Seconds between two refreshes of an Experiment's status.preview (--preview-interval);
    # 0: only when its spec changes or someone asks (kubectl shakeout preview).
    preview_interval: float = 60.0


def parse_allowed_hosts(values: list[str]) -> frozenset[tuple[str, int | None]]:
    """HOST, HOST:PORT, [IPV6] or [IPV6]:PORT, host names lower-cased; ValueError if bad."""
    out: set[tuple[str, int | None]] = set()
    for value in values:
        text = value.strip().lower()
        port: int | None = None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"--allow-check-host {value!r}: give HOST[:PORT]")
                port = _port(value, rest[1:])
        elif text.count(":") == 1:
            host, _, digits = text.partition(":")
            port = _port(value, digits)
        else:
            host = text
        if not host or "/" in host or "@" in host or " " in host:
            raise ValueError(f"--allow-check-host {value!r}: give HOST[:PORT]")
        out.add((host, port))
    return frozenset(out)


def _port(value: str, digits: str) -> int:
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError(f"--allow-check-host {value!r}: the port must be 1-65535")
    return int(digits)


OPTIONS = Options()
