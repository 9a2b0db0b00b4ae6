"""kopf's settings for the operator: finalizer, watches, retries, webhooks, metrics."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf

from shakeout.api.common import GROUP
from shakeout.api.labels import (
    FINALIZER,
    FINISHED_LABEL,
    KOPF_ANNOTATION_PREFIX,
    KOPF_DIFFBASE_KEY,
)
from shakeout.handlers.webhook_server import (
    ServiceRef,
    ServiceWebhookServer,
    client_auth,
    unauthenticated_warning,
)
from shakeout.kube.resources import RUNS
from shakeout.metrics import serve as serve_metrics
from shakeout.options import OPTIONS
from shakeout.webhook_tls import ServingCert, generate_serving_cert

# The Validating/MutatingWebhookConfigurations kopf creates and keeps current.
WEBHOOK_CONFIGURATION = "shakeout.dev"


class EndlessBackoffs:
    """Retry delays for kopf's API requests: quick at first, then every 10 s, forever.

    Iterable but not Sized, so kopf counts no attempts; each request iterates anew.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 1.0, 2.0, 3.0, 5.0, 8.0), itertools.repeat(10.0))


def provided_cert(directory: Path) -> ServingCert | None:
    """A certificate put there by someone else (cert-manager's Secret): used as it is."""
    cert = ServingCert.in_directory(directory)
    return cert if cert.complete() else None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Our own finalizer name, so that users see who holds an object.
    settings.persistence.finalizer = FINALIZER
    # Server-side: the API server sends a run that gains the label to this watch as
    # deleted, and kopf forgets it (execution/retire.py hands off the finalizer first).
    settings.watching.label_selectors[GROUP, RUNS.plural] = f"!{FINISHED_LABEL}"
    # kopf's progress and diff-base annotations under our own prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_ANNOTATION_PREFIX, key=KOPF_DIFFBASE_KEY
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
        cert = provided_cert(cert_dir) or await generate_serving_cert(cert_dir, hosts)
        server_options: dict[str, Any] = {
            "addr": OPTIONS.webhook_addr,
            "port": OPTIONS.webhook_port,
            "host": OPTIONS.webhook_host,
            "certfile": str(cert.certfile),
            "pkeyfile": str(cert.keyfile),
            "cafile": str(cert.cafile),
            # A certificate from cert-manager is rotated in place: reload it when it changes.
            "file_check_interval": 60,
            # Only clients with a certificate from --webhook-client-ca: the API server.
            **client_auth(OPTIONS.webhook_client_ca),
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
        if OPTIONS.webhook_client_ca is not None:
            logger.info(
                "admission webhooks accept only clients with a certificate signed by "
                f"{OPTIONS.webhook_client_ca}"
            )
        else:
            logger.warning(unauthenticated_warning(OPTIONS.webhook_port))
    else:
        logger.warning("admission webhooks disabled: the operator alone checks runs")
