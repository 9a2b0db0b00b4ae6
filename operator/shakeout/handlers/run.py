"""Starting the operator: kopf with our handler modules and settings."""

from __future__ import annotations

import asyncio
import logging

import kopf

# Importing the modules registers their handlers with kopf's default registry.
from shakeout.handlers import experiments, settings  # noqa: F401


def run_operator(namespaces: list[str], liveness: str | None = None, verbose: bool = False) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    )
    return 0
