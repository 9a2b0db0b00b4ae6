"""kopf settings shared by every handler module."""

from __future__ import annotations

import logging
from typing import Any

import kopf

FINALIZER = "shakeout.dev/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own finalizer name, so that users see who holds an object.
    settings.persistence.finalizer = FINALIZER
    # kopf's progress and diff-base annotations under our own prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shakeout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="shakeout.dev", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "shakeout-operator"
    settings.posting.level = logging.WARNING  # our own events only, not kopf's chatter
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 20
