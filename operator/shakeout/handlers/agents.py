"""The node agents' Leases: keep the operator's view of them (gather/agents.py).

Watched in the operator's own namespace only, outside kopf (whose watches span every
namespace the operator serves): a Lease elsewhere is nobody's agent (SEC-18), and the
operator needs no right on Leases beyond its namespace.
"""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.execution.live_runs import LIVE_RUNS
from shakeout.gather import agents
from shakeout.handlers.periodic import every
from shakeout.kube.client import api
from shakeout.options import OPTIONS

# After a watch ended or broke: list and watch again this soon.
REWATCH_SECONDS = 1.0


@kopf.on.startup()
async def watch_agent_leases(logger: kopf.Logger, **_: Any) -> None:
    # Runs waiting in CREATED for their agents look again at once on every change.
    leases = agents.LeaseWatch(api(), OPTIONS.namespace, LIVE_RUNS.wake_all)
    every(REWATCH_SECONDS, leases.follow, logger, "watch of the agents' Leases")
