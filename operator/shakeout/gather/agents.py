"""The node agents as the operator sees them: their Leases, liveness and capabilities.

A node agent holds the Lease `shakeout-agent-<node>` (label shakeout.dev/agent=node) and
renews it every ~2 s. An agent counts as connected while the time since its last renewal,
as this operator observed it, is within the lease's duration: like the node lifecycle
controller, we time renewals on our own clock, so that a skewed node clock cannot keep a
dead agent alive. A change of holder means the agent restarted and lost its faults.

Only the Leases of the operator's own namespace count, and only under their own name: a
Lease is the agent of node N only if it is `shakeout-agent-N` there (`lease_node`). The
API server keeps every other writer off those names (RBAC: the namespace; the policy
shakeout-agent-identity: each agent to its own node's Lease), so a Lease forged elsewhere
or under another name is ignored (SEC-18). `LeaseWatch` lists and watches that namespace
only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shakeout.api.labels import (
    AGENT_LABEL,
    AGENT_LABEL_VALUE,
    CAPABILITIES_ANNOTATION,
    NODE_ANNOTATION,
    agent_lease_name,
)
from shakeout.kube.client import Api, Obj
from shakeout.kube.resources import LEASES

log = logging.getLogger("shakeout.agents")

AGENT_SELECTOR = f"{AGENT_LABEL}={AGENT_LABEL_VALUE}"


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


def lease_node(body: dict[str, Any], namespace: str) -> str | None:
    """The node whose agent this Lease is, or None if it is none: a Lease of another
    namespace, without the node annotation, or not named `shakeout-agent-<that node>`."""
    meta = body.get("metadata") or {}
    node = (meta.get("annotations") or {}).get(NODE_ANNOTATION)
    if not isinstance(node, str) or not node or meta.get("namespace") != namespace:
        return None
    if meta.get("name") != agent_lease_name(node):
        return None
    return node


def observe(body: dict[str, Any], namespace: str, deleted: bool = False) -> bool:
    """Record one Lease as a watch event showed it; False if it is no agent's (ignored)."""
    node = lease_node(body, namespace)
    if node is None:
        return False
    meta = body.get("metadata") or {}
    if deleted:
        AGENTS.pop(node, None)
        return True
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
    return True


def observe_all(items: list[Obj], namespace: str) -> None:
    """A full list of the namespace's agent Leases: record each, forget the nodes gone."""
    seen = {node for item in items if (node := lease_node(item, namespace))}
    for node in set(AGENTS) - seen:
        AGENTS.pop(node, None)
    for item in items:
        observe(item, namespace)


class LeaseWatch:
    """The agents' Leases of one namespace (the operator's), kept in AGENTS: a list, then
    a watch from its version until the stream ends; `follow` again after that."""

    def __init__(self, api: Api, namespace: str, on_change: Callable[[], None]) -> None:
        self.api = api
        self.namespace = namespace
        self.on_change = on_change
        self.warned: set[str] = set()

    async def follow(self) -> None:
        listed = await self.api.request(
            "GET", LEASES.path(self.namespace), query={"labelSelector": AGENT_SELECTOR}
        )
        observe_all(list(listed.get("items") or []), self.namespace)
        self.on_change()
        version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        async for event in self.api.watch(
            LEASES, self.namespace, labels=AGENT_SELECTOR, version=version
        ):
            body = event["object"]  # a dict: Api.watch checks every event
            if observe(body, self.namespace, deleted=event.get("type") == "DELETED"):
                self.on_change()
            else:
                self.ignored(body)

    def ignored(self, body: Obj) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        if name not in self.warned:
            self.warned.add(name)
            log.warning(
                f"Lease {self.namespace}/{name} ignored: an agent's Lease is named "
                f"{agent_lease_name('<node>')} after its {NODE_ANNOTATION} annotation"
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
