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

import kopf

from shakeout.api.experiment import AttackType, ExperimentSpec
from shakeout.handlers import switch as lock

AGENT_LABEL = "shakeout.dev/agent"
NODE_ANNOTATION = "shakeout.dev/node"
CAPABILITIES_ANNOTATION = "shakeout.dev/capabilities"


def lease_name(node: str) -> str:
    return f"shakeout-agent-{node}"[:253]


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


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={AGENT_LABEL: "node"})
def lease_event(body: kopf.Body, type: str | None, **_: Any) -> None:  # noqa: A002
    observe(dict(body), deleted=type == "DELETED")
    # Runs waiting in CREATED for their agents look again at once.
    for wakeup in list(lock.SWITCH.wakeups.values()):
        wakeup.set()


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


def node_attack_types(spec: ExperimentSpec) -> list[AttackType]:
    return [AttackType(a.type) for a in spec.attacks if a.node_level]


def unsupported(spec: ExperimentSpec, nodes: list[str]) -> str | None:
    """Why the agents of these nodes cannot run the spec's node-level attacks, or None.

    An agent not connected yet is waited for (in CREATED), not refused here.
    """
    problems = []
    for node in sorted(nodes):
        view = AGENTS.get(node)
        if view is None:
            continue
        for kind in node_attack_types(spec):
            if kind not in view.capabilities:
                problems.append(f"the agent of node {node} does not know {kind}")
            elif (reason := view.capabilities[kind]) is not None:
                problems.append(f"the agent of node {node} cannot do {kind}: {reason}")
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
