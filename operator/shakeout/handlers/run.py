"""Starting the operator: kopf with our handler modules and settings."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf

# Importing the modules registers their handlers with kopf's default registry.
from shakeout.handlers import (  # noqa: F401
    admission,
    agents,
    cleanup,
    experiments,
    memory,
    runs,
    settings,
    switch,
)
from shakeout.handlers.leader import LeaderElector, StandbyHealth


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
    webhook_service: str | None = None,
    protect_namespaces: list[str] | None = None,
    metrics: str | None = None,
    log_format: str = "full",
    leader_elect: bool = False,
    leader_namespace: str | None = None,
    leader_lease_duration: float = 4.0,
    leader_renew_interval: float = 1.0,
) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    settings.OPTIONS.webhook = webhook
    settings.OPTIONS.webhook_addr = webhook_addr
    settings.OPTIONS.webhook_port = webhook_port
    settings.OPTIONS.webhook_host = webhook_host or webhook_addr
    settings.OPTIONS.cert_dir = Path(cert_dir) if cert_dir else None
    settings.OPTIONS.webhook_service = webhook_service
    settings.OPTIONS.metrics = metrics
    own = os.environ.get("POD_NAMESPACE")  # set from the downward API in deploy/
    settings.OPTIONS.protected_namespaces = frozenset(
        [*(protect_namespaces or []), *([own] if own else [])]
    )
    if not webhook:
        # No server to serve them: drop the admission handlers, the operator re-checks.
        registry = kopf.get_default_registry()
        registry._webhooks._handlers.clear()  # noqa: SLF001
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
