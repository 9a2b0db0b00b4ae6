"""ScaleWorkload: a Deployment or StatefulSet is scaled; rollback restores the count it had,
which `prepare` reads for the journal before anything changes."""

from __future__ import annotations

from shakeout.api.attacks import AttackType, ScaleWorkloadParameters
from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.attacks.context import AttackError, ClusterExecutor
from shakeout.kube.client import Pod, api
from shakeout.kube.errors import NotFound


def _parameters(attack: Attack) -> ScaleWorkloadParameters:
    if attack.scale_workload is None:  # the model refuses this; a guard, not a path
        raise AttackError(f"attack {attack.name} has no scaleWorkload parameters")
    return attack.scale_workload


class ScaleWorkload(ClusterExecutor):
    type = AttackType.SCALE_WORKLOAD

    async def prepare(self, attack: Attack) -> dict[str, object]:
        ref = _parameters(attack).workload
        return {
            "previous_replicas": await api().get_replicas(ref.kind, self.run.namespace, ref.name)
        }

    async def apply(self, attack: Attack, pods: list[Pod]) -> int:
        parameters = _parameters(attack)
        ref = parameters.workload
        await api().set_replicas(ref.kind, self.run.namespace, ref.name, parameters.replicas)
        return 1

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        if result.previous_replicas is None:
            return  # never applied: nothing was journaled, nothing to restore
        ref = _parameters(attack).workload
        try:
            await api().set_replicas(
                ref.kind, self.run.namespace, ref.name, result.previous_replicas
            )
        except NotFound:
            return  # the workload was deleted meanwhile: there is nothing left to restore
