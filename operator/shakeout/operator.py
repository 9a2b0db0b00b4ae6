"""Starting the operator: kopf with the handler modules, the webhooks when served, and
leader election when asked for."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from shakeout.kube.leader import LeaderElector, StandbyHealth
from shakeout.options import OPTIONS, parse_allowed_hosts
from shakeout.webhook_tls import check_client_ca

# Importing a module registers its handlers with kopf's default registry.
HANDLER_MODULES = (
    "shakeout.handlers.settings",
    "shakeout.handlers.agents",
    "shakeout.handlers.cleanup",
    "shakeout.handlers.experiments",
    "shakeout.handlers.memory",
    "shakeout.handlers.previews",
    "shakeout.handlers.runs",
    "shakeout.handlers.schedules",
    "shakeout.handlers.switch",
)
# One module of admission webhooks per kind; registered only when a server serves them.
WEBHOOK_MODULES = (
    "shakeout.admission.runs",
    "shakeout.admission.experiments",
    "shakeout.admission.switch",
)


def register_handlers(webhook: bool) -> None:
    for module in HANDLER_MODULES + (WEBHOOK_MODULES if webhook else ()):
        importlib.import_module(module)


def run_operator(
    *,
    namespaces: list[str],
    liveness: str | None = None,
    verbose: bool = False,
    webhook: bool = True,
    webhook_addr: str = "127.0.0.1",
    webhook_port: int = 9443,
    webhook_host: str | None = None,
    cert_dir: str | None = None,
    webhook_client_ca: str | None = None,
    webhook_service: str | None = None,
    protect_namespaces: list[str] | None = None,
    allow_check_hosts: list[str] | None = None,
    metrics: str | None = None,
    log_format: str = "full",
    leader_elect: bool = False,
    leader_namespace: str | None = None,
    leader_lease_duration: float = 4.0,
    leader_renew_interval: float = 1.0,
    preview_interval: float = 60.0,
) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    OPTIONS.webhook = webhook
    OPTIONS.webhook_addr = webhook_addr
    OPTIONS.webhook_port = webhook_port
    OPTIONS.webhook_host = webhook_host or webhook_addr
    OPTIONS.cert_dir = Path(cert_dir) if cert_dir else None
    # Read now, so that a missing or unreadable CA stops the operator before it serves
    # anything, rather than serving the webhook unauthenticated.
    OPTIONS.webhook_client_ca = (
        check_client_ca(Path(webhook_client_ca)) if webhook_client_ca else None
    )
    OPTIONS.webhook_service = webhook_service
    OPTIONS.metrics = metrics
    own = os.environ.get("POD_NAMESPACE")  # set from the downward API in deploy/
    OPTIONS.namespace = own or OPTIONS.namespace
    OPTIONS.allowed_check_hosts = parse_allowed_hosts(allow_check_hosts or [])
    OPTIONS.protected_namespaces = frozenset([*(protect_namespaces or []), *([own] if own else [])])
    OPTIONS.preview_interval = preview_interval
    # Without a webhook server the operator alone checks runs (at pick-up).
    register_handlers(webhook)
    operator = kopf.operator(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    if not leader_elect:
        asyncio.run(operator)
        return 0
    elector = LeaderElector(
        namespace=leader_namespace or own or "shakeout-system",
        duration=leader_lease_duration,
        renew=leader_renew_interval,
    )
    asyncio.run(_lead(elector, operator, liveness))
    return 0


async def _lead(elector: LeaderElector, operator: Any, liveness: str | None) -> None:
    """Wait as a standby (alive, not ready: no webhook), then operate while leader."""
    standby = StandbyHealth(liveness) if liveness else None
    try:
        await elector.acquire()
    finally:
        if standby is not None:
            standby.close()  # kopf serves the liveness endpoint from here on
    keeper = asyncio.create_task(elector.keep())
    try:
        await operator
    finally:
        keeper.cancel()
