"""Node-level attacks: handed to the node agents as NodeAttack objects, one per node.

The run's status journals the attack (Applying) before any NodeAttack exists; the agent
journals each target in the NodeAttack's status before it touches it. Rollback asks the
agent (spec.rollback) and waits for its report; an agent that lost its lease rolls its
faults back on its own, which the report then says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from shakeout.api.common import API_VERSION
from shakeout.api.experiment import Attack
from shakeout.api.labels import ATTACK_LABEL, NODE_LABEL, RUN_UID_LABEL
from shakeout.api.nodeattack import MAX_NODE_TARGETS, NOT_AFTER_GRACE_SECONDS, NodeAttackPhase
from shakeout.attacks.context import AttackError, run_owner
from shakeout.gather import agents
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import Conflict, NotFound
from shakeout.kube.resources import NODE_ATTACKS

# How long the agents may take to report an apply: a base, and a share per target of the
# busiest node (its agent applies them there, ~8 at once), up to a bound. 200 targets
# on one node: 130 s.
APPLY_TIMEOUT = 30.0
APPLY_SECONDS_PER_TARGET = 0.5
MAX_APPLY_TIMEOUT = 300.0
ROLLBACK_TIMEOUT = 15.0
POLL = 0.1
# A report of an agent that lost its lease (it rolls back its faults on its own).
AGENT_DISCONNECTED = "AgentDisconnected"


def chunks(pods: list[Pod]) -> dict[str, list[list[Pod]]]:
    """Target pods per node, in slices of at most MAX_NODE_TARGETS."""
    by_node: dict[str, list[Pod]] = defaultdict(list)
    for pod in sorted(pods, key=lambda p: p.name):
        if not pod.node:
            raise AttackError(f"target pod {pod.name} is not scheduled to a node")
        by_node[pod.node].append(pod)
    return {
        node: [group[i : i + MAX_NODE_TARGETS] for i in range(0, len(group), MAX_NODE_TARGETS)]
        for node, group in by_node.items()
    }


def apply_timeout(pods: list[Pod]) -> float:
    """How long to wait for the agents' reports of an apply to these target pods."""
    per_node: dict[str | None, int] = defaultdict(int)
    for pod in pods:
        per_node[pod.node] += 1
    busiest = max(per_node.values(), default=0)
    return min(MAX_APPLY_TIMEOUT, APPLY_TIMEOUT + APPLY_SECONDS_PER_TARGET * busiest)


class NodeDispatcher:
    """The operator's side of node-level attacks of one run."""

    def __init__(
        self, namespace: str, run_name: str, run_uid: str, halt: asyncio.Event | None = None
    ) -> None:
        self.namespace = namespace
        self.run_name = run_name
        self.run_uid = run_uid
        # Set when the run is stopped: no further NodeAttack is created, and the wait for
        # the agents' reports ends at once (the rollback that follows asks them to undo).
        self.halt = halt or asyncio.Event()

    def object_name(self, attack: Attack, node: str, index: int) -> str:
        digest = hashlib.sha256(f"{self.run_uid}/{attack.name}/{node}".encode()).hexdigest()
        return f"{self.run_name[:180]}-{attack.name[:50]}-{digest[:8]}-{index}"

    async def objects(self, attack: Attack) -> list[Obj]:
        selector = f"{RUN_UID_LABEL}={self.run_uid},{ATTACK_LABEL}={attack.name}"
        return await api().list_objects(NODE_ATTACKS, self.namespace, labels=selector)

    async def apply(self, attack: Attack, pods: list[Pod]) -> int:
        """Create the NodeAttacks, wait for the agents' reports; the targets applied."""
        # The agents' own bound: the attack's clock starts once every report is in (at
        # most the apply timeout from now), it then lasts durationSeconds, plus a grace.
        timeout = apply_timeout(pods)
        not_after = datetime.now(UTC) + timedelta(
            seconds=attack.duration_seconds + timeout + NOT_AFTER_GRACE_SECONDS
        )
        for node, groups in chunks(pods).items():
            for index, group in enumerate(groups):
                if self.halt.is_set():
                    break  # the run is being stopped: the rollback asks for what went out
                body = {
                    "apiVersion": API_VERSION,
                    "kind": "NodeAttack",
                    "metadata": {
                        "name": self.object_name(attack, node, index),
                        "labels": {
                            RUN_UID_LABEL: self.run_uid,
                            NODE_LABEL: node,
                            ATTACK_LABEL: attack.name,
                        },
                        "ownerReferences": [run_owner(self.run_name, self.run_uid)],
                    },
                    "spec": {
                        "runName": self.run_name,
                        "runUID": self.run_uid,
                        "node": node,
                        "attack": attack.model_dump(by_alias=True, exclude_none=True, mode="json"),
                        "targets": [{"name": p.name, "uid": p.uid} for p in group],
                        "notAfter": not_after.isoformat().replace("+00:00", "Z"),
                    },
                }
                with contextlib.suppress(Conflict):  # created before an operator restart
                    await api().create(NODE_ATTACKS, self.namespace, body)
        reports = await self.wait(
            attack, {NodeAttackPhase.APPLIED, NodeAttackPhase.FAILED}, timeout
        )
        if self.halt.is_set():
            # Halted: what was applied so far is rolled back by the stop that follows.
            return sum(r["applied"] for r in reports)
        failed = [r for r in reports if r["phase"] != NodeAttackPhase.APPLIED]
        if failed:
            raise AttackError("; ".join(f"node {r['node']}: {r['message']}" for r in failed[:3]))
        return sum(r["applied"] for r in reports)

    async def rollback(self, attack: Attack) -> str | None:
        """Ask every agent to roll back and wait; returns a note for the report."""
        objects = await self.objects(attack)
        for obj in objects:
            if not obj["spec"].get("rollback"):
                with contextlib.suppress(NotFound):
                    await api().merge_patch(
                        NODE_ATTACKS,
                        self.namespace,
                        obj["metadata"]["name"],
                        {"spec": {"rollback": True}},
                    )
        reports = await self.wait(
            attack, {NodeAttackPhase.ROLLED_BACK, NodeAttackPhase.FAILED}, ROLLBACK_TIMEOUT
        )
        away = sorted({r["node"] for r in reports if r["phase"] == AGENT_DISCONNECTED})
        if away:
            return f"the agents of {', '.join(away)} lost their lease and roll back on their own"
        return None

    async def lost(self) -> list[str]:
        """Nodes whose agent reported the run's applied faults lost (a lapse, a restart)."""
        listing = await api().list_objects(
            NODE_ATTACKS, self.namespace, labels=f"{RUN_UID_LABEL}={self.run_uid}"
        )
        return sorted(
            {
                obj["spec"]["node"]
                for obj in listing
                if (obj.get("status") or {}).get("phase") == NodeAttackPhase.FAILED
                and not obj["spec"].get("rollback")
            }
        )

    async def wait(
        self, attack: Attack, done: set[NodeAttackPhase], timeout: float = APPLY_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Poll the agents' reports until each is in `done` or its agent is gone."""
        deadline = time.monotonic() + timeout
        while True:
            reports = []
            for obj in await self.objects(attack):
                status = obj.get("status") or {}
                node = obj["spec"]["node"]
                phase = status.get("phase")
                if phase not in done and agents.missing([node]):
                    phase = AGENT_DISCONNECTED
                reports.append(
                    {
                        "node": node,
                        "phase": phase,
                        "message": status.get("message") or f"agent of {node} disconnected",
                        "applied": sum(
                            1 for t in status.get("targets") or [] if t.get("state") == "Applied"
                        ),
                    }
                )
            if all(r["phase"] in done or r["phase"] == AGENT_DISCONNECTED for r in reports):
                return reports
            if self.halt.is_set() and NodeAttackPhase.APPLIED in done:
                return reports  # stopped while applying: no further wait
            if time.monotonic() > deadline:
                late = [r["node"] for r in reports if r["phase"] not in done]
                raise AttackError(f"no report within {timeout:.0f}s from the agents of {late}")
            if NodeAttackPhase.APPLIED in done:
                # While applying, a stop ends the wait at once instead of after the poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.halt.wait(), POLL)
            else:
                await asyncio.sleep(POLL)
