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
from typing import Any

from shakeout.api.common import API_VERSION, GROUP, VERSION
from shakeout.api.experiment import Attack
from shakeout.api.nodeattack import MAX_NODE_TARGETS, NODE_LABEL, RUN_UID_LABEL, NodeAttackPhase
from shakeout.handlers import agents
from shakeout.handlers.attacks import AttackError, run_owner
from shakeout.handlers.k8s import Conflict, Obj, Pod, api

APPLY_TIMEOUT = 30.0
ROLLBACK_TIMEOUT = 15.0
POLL = 0.1
ATTACK_LABEL = "shakeout.dev/attack"


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


class NodeDispatcher:
    """The operator's side of node-level attacks of one run."""

    def __init__(self, namespace: str, run_name: str, run_uid: str) -> None:
        self.namespace = namespace
        self.run_name = run_name
        self.run_uid = run_uid
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/nodeattacks"

    def object_name(self, attack: Attack, node: str, index: int) -> str:
        digest = hashlib.sha256(f"{self.run_uid}/{attack.name}/{node}".encode()).hexdigest()
        return f"{self.run_name[:180]}-{attack.name[:50]}-{digest[:8]}-{index}"

    async def objects(self, attack: Attack) -> list[Obj]:
        selector = f"{RUN_UID_LABEL}={self.run_uid},{ATTACK_LABEL}={attack.name}"
        listing = await api().request("GET", self.path, query={"labelSelector": selector})
        return list((listing or {}).get("items", []))

    async def apply(self, attack: Attack, pods: list[Pod]) -> int:
        """Create the NodeAttacks, wait for the agents' reports; the targets applied."""
        for node, groups in chunks(pods).items():
            for index, group in enumerate(groups):
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
                    },
                }
                with contextlib.suppress(Conflict):  # created before an operator restart
                    await api().request("POST", self.path, body)
        reports = await self.wait(attack, {NodeAttackPhase.APPLIED, NodeAttackPhase.FAILED})
        failed = [r for r in reports if r["phase"] != NodeAttackPhase.APPLIED]
        if failed:
            raise AttackError("; ".join(f"node {r['node']}: {r['message']}" for r in failed[:3]))
        return sum(r["applied"] for r in reports)

    async def rollback(self, attack: Attack) -> str | None:
        """Ask every agent to roll back and wait; returns a note for the report."""
        objects = await self.objects(attack)
        for obj in objects:
            if not obj["spec"].get("rollback"):
                await api().request(
                    "PATCH",
                    f"{self.path}/{obj['metadata']['name']}",
                    {"spec": {"rollback": True}},
                    merge_patch=True,
                )
        reports = await self.wait(
            attack, {NodeAttackPhase.ROLLED_BACK, NodeAttackPhase.FAILED}, ROLLBACK_TIMEOUT
        )
        away = sorted({r["node"] for r in reports if r["phase"] == "AgentDisconnected"})
        if away:
            return f"the agents of {', '.join(away)} lost their lease and roll back on their own"
        return None

    async def lost(self) -> list[str]:
        """Nodes whose agent reported the run's applied faults lost (a lapse, a restart)."""
        selector = f"{RUN_UID_LABEL}={self.run_uid}"
        listing = await api().request("GET", self.path, query={"labelSelector": selector})
        return sorted(
            {
                obj["spec"]["node"]
                for obj in (listing or {}).get("items", [])
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
                    phase = "AgentDisconnected"
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
            if all(r["phase"] in done or r["phase"] == "AgentDisconnected" for r in reports):
                return reports
            if time.monotonic() > deadline:
                late = [r["node"] for r in reports if r["phase"] not in done]
                raise AttackError(f"no report within {timeout:.0f}s from the agents of {late}")
            await asyncio.sleep(POLL)
