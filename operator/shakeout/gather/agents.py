"""The node agents as the operator sees them: their Leases, liveness and capabilities.

A node agent holds the Lease `shakeout-agent-<node>` (label shakeout.dev/agent=node) and
renews it every ~2 s. An agent counts as connected while the time since its last renewal,
as this operator observed it, is within the lease's duration: like the node lifecycle
controller, we time renewals on our own clock, so that a skewed node clock cannot keep a
dead agent alive. A change of holder means the agent restarted and lost its faults.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shakeout.api.labels import CAPABILITIES_ANNOTATION, NODE_ANNOTATION


@dataclass
class AgentView:
    node: str
    holder: str
    duration: float
    renew_time: str
    renewed_at: float  # time.monotonic() of the renewal, on our clock
    capabilities: dict[str, str | None] = field(default_factory=dict)

    def connected(self, now: float | None = None) -> bool:
        return ((now or time.monotonic()) - self.renewed_at) <= self.duration


AGENTS: dict[str, AgentView] = {}


def _age(renew_time: str) -> float:
    """Seconds since a renewTime by the wall clock: only used for a lease seen first."""
    try:
        moment = datetime.fromisoformat(renew_time.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())


def observe(body: dict[str, Any], deleted: bool = False) -> None:
    """Record one Lease as a watch event showed it."""
    meta = body.get("metadata", {})
    node = (meta.get("annotations") or {}).get(NODE_ANNOTATION)
    if not node:
        return
    if deleted:
        AGENTS.pop(node, None)
        return
    spec = body.get("spec") or {}
    renew_time = spec.get("renewTime") or ""
    holder = spec.get("holderIdentity") or ""
    try:
        capabilities = json.loads(
            (meta.get("annotations") or {}).get(CAPABILITIES_ANNOTATION, "{}")
        )
    except ValueError:
        capabilities = {}
    known = AGENTS.get(node)
    now = time.monotonic()
    if known is not None and known.renew_time == renew_time and known.holder == holder:
        renewed_at = known.renewed_at
    elif known is not None:
        renewed_at = now
    else:
        renewed_at = now - _age(renew_time)
    AGENTS[node] = AgentView(
        node=node,
        holder=holder,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=renew_time,
        renewed_at=renewed_at,
        capabilities=capabilities if isinstance(capabilities, dict) else {},
    )


def missing(nodes: list[str], holders: dict[str, str] | None = None) -> tuple[str, ...]:
    """The nodes whose agent is not connected (or restarted since `holders` was taken)."""
    now = time.monotonic()
    gone = []
    for node in nodes:
        view = AGENTS.get(node)
        known = (holders or {}).get(node)
        restarted = view is not None and known is not None and known != view.holder
        if view is None or not view.connected(now) or restarted:
            gone.append(node)
    return tuple(gone)


def holders(nodes: list[str]) -> dict[str, str]:
    return {n: AGENTS[n].holder for n in nodes if n in AGENTS}


def capabilities(nodes: list[str]) -> dict[str, dict[str, str | None]]:
    """What the known agents of these nodes can do: node -> {attack type: None or why not}."""
    return {n: dict(AGENTS[n].capabilities) for n in nodes if n in AGENTS}
