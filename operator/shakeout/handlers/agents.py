"""The node agents' Leases: keep the operator's view of them (gather/agents.py)."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.api.labels import AGENT_LABEL, AGENT_LABEL_VALUE
from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather import agents


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={AGENT_LABEL: AGENT_LABEL_VALUE})
def lease_event(body: kopf.Body, type: str | None, **_: Any) -> None:  # noqa: A002
    agents.observe(dict(body), deleted=type == "DELETED")
    # Runs waiting in CREATED for their agents look again at once.
    LIVE_RUNS.wake_all()
