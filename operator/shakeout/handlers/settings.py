"""kopf settings shared by every handler module, and the operator's own options."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from shakeout.api.common import GROUP
from shakeout.certs import ServingCert, make_serving_cert
from shakeout.handlers.k8s import RUNS, widen_executor
from shakeout.handlers.metrics import serve as serve_metrics
from shakeout.handlers.webhook_server import ServiceRef, ServiceWebhookServer

FINALIZER = "shakeout.dev/finalizer"
# A finished run carries this label and leaves the operator's watch of runs: kopf keeps
# the last body of every object it watches for a daemon (about 20 KiB a run) until the
# object is deleted, and finished runs pile up (1,200 an hour at 20 runs a minute).
FINISHED_LABEL = "shakeout.dev/finished"
WEBHOOK_CONFIGURATION = "shakeout.dev"


@dataclass
class Options:
    """What `shakeout operator` was started with."""

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


class EndlessBackoffs:
    """Retry delays for kopf's API requests: quick at first, then every 10 s, forever.

    Iterable but not Sized, so kopf counts no attempts; each request iterates anew.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 1.0, 2.0, 3.0, 5.0, 8.0), itertools.repeat(10.0))


def provided_cert(directory: Path) -> ServingCert | None:
    """A certificate put there by someone else (cert-manager's Secret): used as it is."""
    cert = ServingCert(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    if cert.certfile.exists() and cert.keyfile.exists() and cert.cafile.exists():
        return cert
    return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    widen_executor()
    # Our own finalizer name, so that users see who holds an object.
    settings.persistence.finalizer = FINALIZER
    # Server-side: the API server sends a run that gains the label to this watch as
    # deleted, and kopf forgets it (handlers.runs.retire_run hands off the finalizer first).
    settings.watching.label_selectors[GROUP, RUNS] = f"!{FINISHED_LABEL}"
    # kopf's progress and diff-base annotations under our own prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shakeout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="shakeout.dev", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "shakeout-operator"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # kopf gives up on the API server after 8 retries (about a minute) and its watchers
    # die with it; an operator must outlive an API server outage of any length instead.
    settings.networking.error_backoffs = EndlessBackoffs()
    settings.execution.max_workers = 20
    if OPTIONS.metrics:
        serve_metrics(OPTIONS.metrics)
        logger.info(f"metrics on http://{OPTIONS.metrics}/metrics")
    if OPTIONS.webhook:
        cert_dir = OPTIONS.cert_dir or Path(tempfile.mkdtemp(prefix="shakeout-webhook-"))
        service = ServiceRef.parse(OPTIONS.webhook_service) if OPTIONS.webhook_service else None
        names = [OPTIONS.webhook_host, OPTIONS.webhook_addr, "localhost"]
        hosts = tuple(dict.fromkeys([*(service.hosts if service else ()), *names]))
        cert = provided_cert(cert_dir) or make_serving_cert(cert_dir, hosts)
        server_options: dict[str, Any] = {
            "addr": OPTIONS.webhook_addr,
            "port": OPTIONS.webhook_port,
            "host": OPTIONS.webhook_host,
            "certfile": str(cert.certfile),
            "pkeyfile": str(cert.keyfile),
            "cafile": str(cert.cafile),
            # A certificate from cert-manager is rotated in place: reload it when it changes.
            "file_check_interval": 60,
        }
        settings.admission.server = (
            ServiceWebhookServer(service=service, **server_options)
            if service
            else kopf.WebhookServer(**server_options)
        )
        # kopf creates and keeps current the Validating/MutatingWebhookConfigurations
        # (named shakeout.dev) with the CA bundle of the certificate made above.
        settings.admission.managed = WEBHOOK_CONFIGURATION
        logger.info(f"admission webhooks on https://{OPTIONS.webhook_host}:{OPTIONS.webhook_port}")
    else:
        logger.warning("admission webhooks disabled: the operator alone checks runs")
