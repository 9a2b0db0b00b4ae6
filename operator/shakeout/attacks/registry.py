"""The attacks of one run, each handed to the executor of its level (its descriptor in
api/attacks.py says which): the operator itself for API-level attacks (attacks/cluster.py),
the node agents, through NodeAttacks, for node-level ones (attacks/node.py)."""

from __future__ import annotations

import asyncio

from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.attacks.cluster import ClusterAttacks
from shakeout.attacks.context import TargetPods, no_pods
from shakeout.attacks.node import NodeDispatcher
from shakeout.kube.client import Pod


class RunAttacks:
    """Apply, roll back and clean up the attacks of one run; `halt` stops an apply."""

    def __init__(self, namespace: str, run_name: str, run_uid: str, halt: asyncio.Event) -> None:
        self.cluster = ClusterAttacks(namespace, run_name, run_uid, halt)
        self.nodes = NodeDispatcher(namespace, run_name, run_uid, halt)

    async def prepare(self, attack: Attack, pods: TargetPods = no_pods) -> dict[str, object]:
        """What to journal before applying (the rollback data), read from the cluster."""
        if attack.node_level:
            return {}  # the agents journal their targets themselves (NodeAttack status)
        return await self.cluster.prepare(attack, pods)

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        """Apply the attack to the targets; how many it acted on."""
        if attack.node_level:
            return await self.nodes.apply(attack, pods)
        return await self.cluster.apply(attack, pods, journaled)

    async def rollback(self, attack: Attack, result: AttackResult) -> str | None:
        """Undo the attack (idempotent); a note for the report, if any."""
        if attack.node_level:
            return await self.nodes.rollback(attack)
        return await self.cluster.rollback(attack, result)

    async def lost_nodes(self) -> list[str]:
        """Nodes whose agent reported this run's applied faults lost."""
        return await self.nodes.lost()

    async def clean_up(self, attacks: list[AttackResult]) -> None:
        """After the run ended: remove what selects nothing any more (isolation marks)."""
        await self.cluster.clean_up(a.type for a in attacks)
