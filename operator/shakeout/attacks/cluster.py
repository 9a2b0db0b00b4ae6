"""API-level attacks and their rollback, executed by the operator itself.

Every method is idempotent: applying twice gives the same state, rolling back twice
restores the same state, a target that is gone is skipped. The caller journals each attack
in the run's status before calling in here; per target, the record of what was changed
lives on the changed object itself (a label or an annotation written in the same request
as the change), so that a rollback after an operator restart finds every target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from shakeout.api.attacks import AttackType, Direction
from shakeout.api.common import API_VERSION
from shakeout.api.experiment import Attack
from shakeout.api.labels import CORDONED_BY, ISOLATED, REMOVED_LABELS, RUN_UID_LABEL
from shakeout.api.run import AttackResult
from shakeout.attacks.fanout import each
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import Conflict, NotFound
from shakeout.kube.resources import NETWORK_POLICIES, NODES, POD_OWNERS, PODS, SERVICES


def run_owner(name: str, uid: str) -> Obj:
    """An ownerReference to a run: what an attack creates goes when the run is deleted."""
    return {"apiVersion": API_VERSION, "kind": "ExperimentRun", "name": name, "uid": uid}


class AttackError(Exception):
    """An attack could not be applied or rolled back; the message says why."""


def _selector_keys(obj: Obj | None) -> set[str]:
    selector = ((obj or {}).get("spec") or {}).get("selector") or {}
    keys = set(selector.get("matchLabels") or {})
    keys.update(e["key"] for e in selector.get("matchExpressions") or [])
    return keys


class ClusterAttacks:
    """Executes the API-level attacks of one run in the run's namespace."""

    def __init__(
        self,
        namespace: str,
        run_name: str = "",
        run_uid: str = "",
        halt: asyncio.Event | None = None,
    ) -> None:
        self.namespace = namespace
        self.run_name = run_name
        self.run_uid = run_uid
        # Set when the run is stopped: an attack being applied starts no further target.
        self.halt = halt or asyncio.Event()

    def owner_reference(self) -> Obj:
        return run_owner(self.run_name, self.run_uid)

    def record(self, attack: Attack, **extra: Any) -> str:
        return json.dumps({"run": self.run_uid, "attack": attack.name, **extra}, sort_keys=True)

    def ours(self, annotation: str | None, attack: Attack) -> dict[str, Any] | None:
        try:
            value = json.loads(annotation or "")
        except ValueError:
            return None
        mine = isinstance(value, dict) and value.get("run") == self.run_uid
        return value if mine and value.get("attack") == attack.name else None

    async def patch_pod(self, name: str, patch: Obj) -> bool:
        """Merge-patch a target; False when it is gone."""
        try:
            await api().merge_patch(PODS, self.namespace, name, patch)
        except NotFound:
            return False
        return True

    # -- the catalogue -----------------------------------------------------------

    async def prepare(self, attack: Attack) -> dict[str, object]:
        """What to journal before applying: for a scale, the count to restore."""
        if attack.type == AttackType.SCALE_WORKLOAD:
            assert attack.scale_workload is not None
            ref = attack.scale_workload.workload
            return {
                "previous_replicas": await api().get_replicas(ref.kind, self.namespace, ref.name)
            }
        return {}

    async def apply(self, attack: Attack, pods: list[Pod]) -> int:
        """Apply the attack; returns how many targets it acted on."""
        kind = AttackType(attack.type)
        if kind == AttackType.SCALE_WORKLOAD:
            assert attack.scale_workload is not None
            ref = attack.scale_workload.workload
            await api().set_replicas(
                ref.kind, self.namespace, ref.name, attack.scale_workload.replicas
            )
            return 1
        if kind == AttackType.NETWORK_ISOLATION:
            return await self.isolate(attack, pods)
        if kind == AttackType.ENDPOINT_REMOVAL:
            return await self.remove_endpoints(attack, pods)
        if kind == AttackType.NODE_CORDON:
            return await self.cordon(attack, pods)
        grace = attack.pod_delete.grace_period_seconds if attack.pod_delete else 0

        async def delete(pod: Pod) -> bool:
            return await api().delete_pod(self.namespace, pod.name, grace)

        return sum(await each(pods, delete, self.halt))

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        """Undo a reversible attack; a no-op for what was never applied or is undone."""
        kind = AttackType(attack.type)
        if kind == AttackType.SCALE_WORKLOAD:
            assert attack.scale_workload is not None
            if result.previous_replicas is None:
                return  # never applied: nothing was journaled, nothing to restore
            ref = attack.scale_workload.workload
            await api().set_replicas(ref.kind, self.namespace, ref.name, result.previous_replicas)
        elif kind == AttackType.NETWORK_ISOLATION:
            await self.end_isolation(attack)
        elif kind == AttackType.ENDPOINT_REMOVAL:
            await self.restore_endpoints(attack)
        elif kind == AttackType.NODE_CORDON:
            await self.uncordon(attack)

    # -- NetworkIsolation: a deny-all NetworkPolicy over labelled targets ----------

    def policy_name(self, attack: Attack) -> str:
        return f"shakeout-{attack.name}-{self.run_uid[:8]}"

    async def isolate(self, attack: Attack, pods: list[Pod]) -> int:
        label = ISOLATED
        direction = attack.network_isolation.direction if attack.network_isolation else "Both"
        types = ["Ingress", "Egress"] if direction == Direction.BOTH else [str(direction)]
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": self.policy_name(attack),
                "labels": {RUN_UID_LABEL: self.run_uid},
                # Deleting the run deletes the policy too (after our own rollback).
                "ownerReferences": [self.owner_reference()],
            },
            # No rules: everything of the listed directions is denied.
            "spec": {"podSelector": {"matchLabels": {label: self.run_uid}}, "policyTypes": types},
        }
        with contextlib.suppress(Conflict):  # already there: applied before a restart
            await api().create(NETWORK_POLICIES, self.namespace, policy)

        async def mark(pod: Pod) -> bool:
            return await self.patch_pod(pod.name, {"metadata": {"labels": {label: self.run_uid}}})

        return sum(await each(pods, mark, self.halt))

    async def end_isolation(self, attack: Attack) -> None:
        """Deleting the policy ends the fault, in one request whatever the targets; the
        marks left on the pods select nothing any more and are removed afterwards
        (handlers/cleanup.py), off the path of Stop All."""
        await api().delete(NETWORK_POLICIES, self.namespace, self.policy_name(attack))

    async def unmark(self) -> None:
        """Remove this run's isolation marks from its pods (idempotent)."""
        # Names are all it needs (not 3 KiB of JSON a pod); read fresh, not from the cache.
        marked = await api().list_pod_names(
            self.namespace, f"{ISOLATED}={self.run_uid}", cached=False
        )
        await each([p.name for p in marked], self.unmark_pod)

    async def unmark_pod(self, name: str) -> None:
        """Remove the mark only if it is still this run's: the next run may have marked
        the pod since it was listed (a JSON Patch whose test makes it conditional)."""
        key = "/metadata/labels/" + ISOLATED.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "test", "path": key, "value": self.run_uid}, {"op": "remove", "path": key}]
        with contextlib.suppress(Conflict, NotFound):
            await api().request("PATCH", PODS.path(self.namespace, name), json_patch=patch)

    # -- EndpointRemoval: drop the labels that only Services select ----------------

    async def remove_endpoints(self, attack: Attack, pods: list[Pod]) -> int:
        selectors = [
            dict((svc.get("spec") or {}).get("selector") or {})
            for svc in await api().list_objects(SERVICES, self.namespace)
        ]
        owners: dict[tuple[str, str], set[str]] = {}
        problems: list[str] = []

        async def owner_keys(pod: Pod) -> set[str]:
            if pod.owner_kind not in POD_OWNERS or pod.owner_name is None:
                return set()
            key = (pod.owner_kind, pod.owner_name)
            if key not in owners:
                owner = await api().get(POD_OWNERS[pod.owner_kind], self.namespace, pod.owner_name)
                owners[key] = _selector_keys(owner)
            return owners[key]

        async def remove(pod: Pod) -> bool:
            if self.ours(pod.annotations.get(REMOVED_LABELS), attack) is not None:
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
                    "annotations": {REMOVED_LABELS: self.record(attack, labels=removed)},
                }
            }
            return await self.patch_pod(pod.name, patch)

        done: int = sum(await each(pods, remove, self.halt))
        if done == 0 and problems:
            raise AttackError("no target could leave its endpoints: " + "; ".join(problems[:3]))
        return done

    async def restore_endpoints(self, attack: Attack) -> None:
        pods = await api().list_pods(self.namespace, "")

        async def restore(pod: Pod) -> None:
            record = self.ours(pod.annotations.get(REMOVED_LABELS), attack)
            if record is None:
                return
            patch = {
                "metadata": {
                    "labels": dict(record.get("labels") or {}),
                    "annotations": {REMOVED_LABELS: None},
                }
            }
            await self.patch_pod(pod.name, patch)

        await each(pods, restore)

    # -- NodeCordon: the targets' nodes become unschedulable -----------------------

    async def cordon(self, attack: Attack, pods: list[Pod]) -> int:
        nodes = sorted({p.node for p in pods if p.node})

        async def one(name: str) -> bool:
            node = await api().get(NODES, None, name)
            if node is None:
                return False
            annotations = node["metadata"].get("annotations") or {}
            if self.ours(annotations.get(CORDONED_BY), attack) is not None:
                return True  # cordoned by us before an operator restart
            if (node.get("spec") or {}).get("unschedulable"):
                return False  # cordoned by someone else: theirs to uncordon, not ours
            patch = {
                "metadata": {
                    # A CAS: a node cordoned meanwhile by someone else is not taken over.
                    "resourceVersion": node["metadata"]["resourceVersion"],
                    "annotations": {CORDONED_BY: self.record(attack)},
                },
                "spec": {"unschedulable": True},
            }
            await api().merge_patch(NODES, None, name, patch)
            return True

        return sum(await each(nodes, one, self.halt))

    async def uncordon(self, attack: Attack) -> None:

        async def one(node: Obj) -> None:
            meta = node["metadata"]
            if self.ours((meta.get("annotations") or {}).get(CORDONED_BY), attack) is None:
                return
            patch = {
                "metadata": {"annotations": {CORDONED_BY: None}},
                "spec": {"unschedulable": None},
            }
            with contextlib.suppress(NotFound):
                await api().merge_patch(NODES, None, meta["name"], patch)

        await each(await api().list_objects(NODES), one)
