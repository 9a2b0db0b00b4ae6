"""The operator's built-in cluster agent: API-level attacks and their rollback.

Every method is idempotent: applying a scale twice sets the same count, rolling it back
twice restores the same count, deleting a pod that is gone is a no-op. The caller
journals each step in the run's status before calling in here.
"""

from __future__ import annotations

import asyncio

from shakeout.api.experiment import Attack, AttackType
from shakeout.api.run import AttackResult
from shakeout.handlers.k8s import api

# Pod deletions in flight at once: enough for 1,000 targets in about a second, few
# enough not to trip the API server's priority-and-fairness limits.
DELETE_CONCURRENCY = 32


class ClusterAgent:
    """Executes API-level attacks in one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def prepare(self, attack: Attack) -> dict[str, object]:
        """What to journal before applying: for a scale, the count to restore."""
        if attack.type == AttackType.SCALE_WORKLOAD:
            assert attack.scale_workload is not None
            ref = attack.scale_workload.workload
            return {
                "previous_replicas": await api().get_replicas(ref.kind, self.namespace, ref.name)
            }
        return {}

    async def apply(self, attack: Attack, targets: tuple[str, ...]) -> int:
        """Apply the attack; returns how many targets it acted on."""
        if attack.type == AttackType.SCALE_WORKLOAD:
            assert attack.scale_workload is not None
            ref = attack.scale_workload.workload
            await api().set_replicas(
                ref.kind, self.namespace, ref.name, attack.scale_workload.replicas
            )
            return 1
        grace = attack.pod_delete.grace_period_seconds if attack.pod_delete else 0
        limiter = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def delete(name: str) -> bool:
            async with limiter:
                return await api().delete_pod(self.namespace, name, grace)

        deleted = await asyncio.gather(*(delete(name) for name in targets))
        return sum(deleted)

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        """Undo a reversible attack (only ScaleWorkload is, among the cluster's attacks)."""
        if attack.type != AttackType.SCALE_WORKLOAD:
            return
        assert attack.scale_workload is not None
        if result.previous_replicas is None:
            return  # never applied: nothing was journaled, nothing to restore
        ref = attack.scale_workload.workload
        await api().set_replicas(ref.kind, self.namespace, ref.name, result.previous_replicas)
