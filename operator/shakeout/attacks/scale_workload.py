"""ScaleWorkload: a Deployment or StatefulSet of the run's namespace is scaled; rollback
restores the count it had, which `prepare` reads for the journal before anything changes.

A StatefulSet whose scale down deletes volumes (persistentVolumeClaimRetentionPolicy
.whenScaled: Delete) is scaled down only when the attack accepts the data loss (it is then
irreversible, and never rolled back). The rollback is a compare-and-swap: it restores the
count only while the workload still has the attack's count, at the resourceVersion read,
so a concurrent scale (an HPA, someone in an incident) is left alone and reported.
"""

from __future__ import annotations

from shakeout.api.attacks import AttackType, ScaleWorkloadParameters
from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.attacks.context import AttackError, ClusterExecutor, TargetPods, no_pods
from shakeout.gather.facts import workload_facts
from shakeout.kube.client import Pod, api
from shakeout.kube.errors import Conflict, NotFound

# Compare-and-swap attempts of a rollback before it gives up for this try (the run
# retries a failed rollback until it succeeds).
CAS_ATTEMPTS = 5


def _parameters(attack: Attack) -> ScaleWorkloadParameters:
    if attack.scale_workload is None:  # the model refuses this; a guard, not a path
        raise AttackError(f"attack {attack.name} has no scaleWorkload parameters")
    return attack.scale_workload


class ScaleWorkload(ClusterExecutor):
    type = AttackType.SCALE_WORKLOAD

    async def prepare(self, attack: Attack, pods: TargetPods = no_pods) -> dict[str, object]:
        parameters = _parameters(attack)
        ref = parameters.workload
        obj = await api().get_workload(ref.kind, self.run.namespace, ref.name)
        if obj is None:
            raise AttackError(f"{ref.kind} {ref.name} not found in {self.run.namespace}")
        facts = workload_facts({"kind": ref.kind, **obj})
        down = parameters.replicas < facts.replicas
        if facts.deletes_volumes_when_scaled and down and not parameters.accept_data_loss:
            # The preconditions refuse this run; the workload may have changed since.
            raise AttackError(
                f"{ref.kind} {ref.name} deletes the volumes of replicas scaled away "
                "(persistentVolumeClaimRetentionPolicy.whenScaled: Delete) and the attack "
                "does not accept data loss (scaleWorkload.acceptDataLoss)"
            )
        return {"previous_replicas": facts.replicas}

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        parameters = _parameters(attack)
        ref = parameters.workload
        await api().set_replicas(ref.kind, self.run.namespace, ref.name, parameters.replicas)
        return 1

    async def rollback(self, attack: Attack, result: AttackResult) -> str | None:
        previous = result.previous_replicas
        if previous is None:
            return None  # never applied: nothing was journaled, nothing to restore
        parameters = _parameters(attack)
        ref = parameters.workload
        namespace, name = self.run.namespace, ref.name
        for _ in range(CAS_ATTEMPTS):
            scale = await api().get_scale(ref.kind, namespace, name)
            if scale is None:
                return None  # the workload was deleted meanwhile: nothing left to restore
            current = int((scale.get("spec") or {}).get("replicas") or 0)
            if current == previous:
                return None  # never scaled, or restored already
            if current != parameters.replicas:
                return (
                    f"{ref.kind} {name} was left at {current} replicas: someone else scaled "
                    f"it during the attack (it had {previous}, the attack set "
                    f"{parameters.replicas}), so the count was not restored"
                )
            version = (scale.get("metadata") or {}).get("resourceVersion")
            try:
                await api().set_replicas(ref.kind, namespace, name, previous, version)
            except NotFound:
                return None
            except Conflict:
                continue  # changed between the read and the write: look again
            return None
        raise AttackError(
            f"{ref.kind} {name} kept changing while its count was being restored "
            f"({CAS_ATTEMPTS} compare-and-swap conflicts)"
        )
