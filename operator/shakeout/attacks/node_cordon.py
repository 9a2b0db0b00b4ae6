"""NodeCordon: the targets' nodes become unschedulable. A node cordoned by someone else is
left alone, and rollback uncordons only the nodes that carry this run's record."""

from __future__ import annotations

import contextlib

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.labels import CORDONED_BY
from shakeout.api.run import AttackResult
from shakeout.attacks.context import ClusterExecutor
from shakeout.attacks.fanout import each
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import NotFound
from shakeout.kube.resources import NODES


class NodeCordon(ClusterExecutor):
    type = AttackType.NODE_CORDON

    async def apply(self, attack: Attack, pods: list[Pod]) -> int:
        run = self.run
        nodes = sorted({p.node for p in pods if p.node})

        async def one(name: str) -> bool:
            node = await api().get(NODES, None, name)
            if node is None:
                return False
            annotations = node["metadata"].get("annotations") or {}
            if run.ours(annotations.get(CORDONED_BY), attack) is not None:
                return True  # cordoned by us before an operator restart
            if (node.get("spec") or {}).get("unschedulable"):
                return False  # cordoned by someone else: theirs to uncordon, not ours
            patch = {
                "metadata": {
                    # A CAS: a node cordoned meanwhile by someone else is not taken over.
                    "resourceVersion": node["metadata"]["resourceVersion"],
                    "annotations": {CORDONED_BY: run.record(attack)},
                },
                "spec": {"unschedulable": True},
            }
            await api().merge_patch(NODES, None, name, patch)
            return True

        return sum(await each(nodes, one, run.halt))

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        run = self.run

        async def one(node: Obj) -> None:
            meta = node["metadata"]
            if run.ours((meta.get("annotations") or {}).get(CORDONED_BY), attack) is None:
                return
            patch = {
                "metadata": {"annotations": {CORDONED_BY: None}},
                "spec": {"unschedulable": None},
            }
            with contextlib.suppress(NotFound):
                await api().merge_patch(NODES, None, meta["name"], patch)

        await each(await api().list_objects(NODES), one)
