"""PodDelete: each target pod is deleted once. Cannot be rolled back."""

from __future__ import annotations

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.attacks.context import ClusterExecutor
from shakeout.attacks.fanout import each
from shakeout.kube.client import Pod, api


class PodDelete(ClusterExecutor):
    type = AttackType.POD_DELETE

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        grace = attack.pod_delete.grace_period_seconds if attack.pod_delete else 0

        async def delete(pod: Pod) -> bool:
            return await api().delete_pod(self.run.namespace, pod.name, grace)

        return sum(await each(pods, delete, self.run.halt))

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        # Irreversible (the catalogue says so, and the run closes it instead of rolling it
        # back): a deleted pod's controller makes a new one, nothing brings the old back.
        return None
