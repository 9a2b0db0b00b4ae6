"""EndpointRemoval: the targets leave their Services' endpoints by losing the labels that
only their Services select (not their controller, which would replace an orphaned pod).
The labels removed are recorded on the pod in the same request; rollback puts them back."""

from __future__ import annotations

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.labels import REMOVED_LABELS
from shakeout.api.run import AttackResult
from shakeout.attacks.context import AttackError, ClusterExecutor
from shakeout.attacks.fanout import each
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.resources import POD_OWNERS, SERVICES


def _selector_keys(obj: Obj | None) -> set[str]:
    selector = ((obj or {}).get("spec") or {}).get("selector") or {}
    keys = set(selector.get("matchLabels") or {})
    keys.update(e["key"] for e in selector.get("matchExpressions") or [])
    return keys


class EndpointRemoval(ClusterExecutor):
    type = AttackType.ENDPOINT_REMOVAL

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        run = self.run
        selectors = [
            dict((svc.get("spec") or {}).get("selector") or {})
            for svc in await api().list_objects(SERVICES, run.namespace)
        ]
        owners: dict[tuple[str, str], set[str]] = {}
        problems: list[str] = []

        async def owner_keys(pod: Pod) -> set[str]:
            if pod.owner_kind not in POD_OWNERS or pod.owner_name is None:
                return set()
            key = (pod.owner_kind, pod.owner_name)
            if key not in owners:
                owner = await api().get(POD_OWNERS[pod.owner_kind], run.namespace, pod.owner_name)
                owners[key] = _selector_keys(owner)
            return owners[key]

        async def remove(pod: Pod) -> bool:
            if run.ours(pod.annotations.get(REMOVED_LABELS), attack) is not None:
                return True  # removed before an operator restart
            selected = [s for s in selectors if s and s.items() <= pod.labels.items()]
            keys = set().union(*selected) - await owner_keys(pod) if selected else set()
            if not keys:
                why = (
                    "no Service selects it"
                    if not selected
                    else (f"its {pod.owner_kind} selects every label its Services select")
                )
                problems.append(f"{pod.name}: {why}")
                return False
            removed = {k: pod.labels[k] for k in sorted(keys)}
            patch = {
                "metadata": {
                    "labels": dict.fromkeys(removed),
                    "annotations": {REMOVED_LABELS: run.record(attack, labels=removed)},
                }
            }
            return await run.patch_pod(pod.name, patch)

        done: int = sum(await each(pods, remove, run.halt))
        if done == 0 and problems:
            raise AttackError("no target could leave its endpoints: " + "; ".join(problems[:3]))
        return done

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        run = self.run
        pods = await api().list_pods(run.namespace, "")

        async def restore(pod: Pod) -> None:
            record = run.ours(pod.annotations.get(REMOVED_LABELS), attack)
            if record is None:
                return
            patch = {
                "metadata": {
                    "labels": dict(record.get("labels") or {}),
                    "annotations": {REMOVED_LABELS: None},
                }
            }
            await run.patch_pod(pod.name, patch)

        await each(pods, restore)
