"""NodeCordon: the targets' nodes become unschedulable. Its effect reaches beyond the run's
namespace (nodes are shared by every team): the preconditions let it run only in the
namespaces the ChaosSwitch allows, on at most caps.maxNodes nodes, and the executor reads
the switch again before it journals and before it cordons.

Which nodes: those of the target pods that the scheduler placed (a pod pinned with a
spec.nodeName of its own does not choose a node for us), less the control-plane nodes
(labelled node-role.kubernetes.io/control-plane or /master) unless the switch allows them.
`prepare` journals their names before any is touched; apply and rollback go by name.

Never taking over someone else's cordon: a node already cordoned is left alone; the cordon
is a compare-and-swap on the node's resourceVersion and writes this run's record on the
node in the same request, with a fingerprint of the node's taints and annotation keys.
Rollback uncordons a node only when it still carries the record, is still cordoned, and
its fingerprint is unchanged: a node whose record was removed (an admin took the cordon
over), or that someone tainted or annotated since (a drain, an autoscaler, maintenance),
stays cordoned and the report says so. A `kubectl cordon` of a node that is already
cordoned writes nothing and cannot be seen.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.labels import CORDONED_BY
from shakeout.api.run import AttackResult
from shakeout.api.switch import ChaosSwitchSpec
from shakeout.attacks.context import AttackError, ClusterExecutor, TargetPods, no_pods
from shakeout.attacks.fanout import each
from shakeout.engine.policies import (
    cluster_scope_refusal,
    cordon_nodes,
    is_control_plane,
    node_cap_refusal,
)
from shakeout.gather.facts import control_plane_nodes
from shakeout.gather.switch import switch_spec
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import Conflict, NotFound
from shakeout.kube.resources import NODES

# Taints that the node controllers set and lift on their own (the cordon's own among
# them): not a sign that someone else is acting on the node.
CONTROLLER_TAINTS = frozenset(
    f"node.kubernetes.io/{name}"
    for name in (
        "unschedulable",
        "not-ready",
        "unreachable",
        "memory-pressure",
        "disk-pressure",
        "pid-pressure",
        "network-unavailable",
    )
)
# Compare-and-swap attempts per node in one rollback try.
CAS_ATTEMPTS = 5
SHOWN_NODES = 10


def fingerprint(node: Obj) -> str:
    """The node's taints (but the controllers' own) and annotation keys (but our record),
    hashed: what someone who drains or maintains a node changes."""
    taints = sorted(
        f"{t.get('key')}={t.get('value', '')}:{t.get('effect')}"
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("key") not in CONTROLLER_TAINTS
    )
    annotations = sorted(k for k in (node["metadata"].get("annotations") or {}) if k != CORDONED_BY)
    text = json.dumps({"taints": taints, "annotations": annotations})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _listed(names: list[str]) -> str:
    more = len(names) - SHOWN_NODES
    return ", ".join(names[:SHOWN_NODES]) + (f" and {more} more" if more > 0 else "")


class NodeCordon(ClusterExecutor):
    type = AttackType.NODE_CORDON

    async def _switch(self) -> ChaosSwitchSpec:
        spec = switch_spec(await api().get_switch())
        if spec is None:
            raise AttackError("there is no ChaosSwitch named default")
        return spec

    async def plan(self, attack: Attack, pods: list[Pod]) -> tuple[str, ...]:
        """The nodes to cordon for these targets, within the cap, in a namespace allowed
        to cordon (AttackError if not: the preconditions refused such a run already, the
        switch may have changed since)."""
        switch = await self._switch()
        what = [f"{attack.name} ({attack.type})"]
        if (problem := cluster_scope_refusal(self.run.namespace, what, switch)) is not None:
            raise AttackError(problem)
        scheduled = [n for p in pods if (n := p.scheduled_node)]
        control_plane = await control_plane_nodes() if scheduled else frozenset[str]()
        nodes = cordon_nodes(scheduled, control_plane, switch)
        if (problem := node_cap_refusal(nodes, switch)) is not None:
            raise AttackError(problem)
        return nodes

    async def prepare(self, attack: Attack, pods: TargetPods = no_pods) -> dict[str, object]:
        return {"nodes": list(await self.plan(attack, await pods()))}

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        run = self.run
        if journaled is not None and journaled.nodes is not None:
            nodes: tuple[str, ...] | list[str] = journaled.nodes
        else:
            nodes = await self.plan(attack, pods)
        switch = await self._switch()
        what = [f"{attack.name} ({attack.type})"]
        if (problem := cluster_scope_refusal(run.namespace, what, switch)) is not None:
            raise AttackError(problem)  # the allowance was withdrawn since the journal
        allowed = switch.cluster_scoped_attacks
        spare_control_plane = allowed is None or not allowed.control_plane_nodes

        async def one(name: str) -> bool:
            node = await api().get(NODES, None, name)
            if node is None:
                return False
            meta = node["metadata"]
            if run.ours((meta.get("annotations") or {}).get(CORDONED_BY), attack) is not None:
                return True  # cordoned by us before an operator restart
            if (node.get("spec") or {}).get("unschedulable"):
                return False  # cordoned by someone else: theirs to uncordon, not ours
            if spare_control_plane and is_control_plane(meta.get("labels") or {}):
                return False  # labelled control plane since the plan: never touched
            patch = {
                "metadata": {
                    # A CAS: a node cordoned meanwhile by someone else is not taken over.
                    "resourceVersion": meta["resourceVersion"],
                    "annotations": {CORDONED_BY: run.record(attack, seen=fingerprint(node))},
                },
                "spec": {"unschedulable": True},
            }
            await api().merge_patch(NODES, None, name, patch)
            return True

        return sum(await each(nodes, one, run.halt))

    async def rollback(self, attack: Attack, result: AttackResult) -> str | None:
        run = self.run
        if result.nodes is not None:
            names = list(result.nodes)
        else:
            # A run journaled before the node names were (an older operator): find its
            # record on every node, once.
            names = [n["metadata"]["name"] for n in await api().list_objects(NODES)]
        left: dict[str, list[str]] = {"changed": [], "uncordoned": []}

        async def one(name: str) -> None:
            for _ in range(CAS_ATTEMPTS):
                node = await api().get(NODES, None, name)
                if node is None:
                    return
                meta = node["metadata"]
                record: dict[str, Any] | None = run.ours(
                    (meta.get("annotations") or {}).get(CORDONED_BY), attack
                )
                if record is None:
                    return  # not ours (any more): an admin took it over, or never cordoned
                cordoned = bool((node.get("spec") or {}).get("unschedulable"))
                changed = record.get("seen") != fingerprint(node)
                patch: Obj = {
                    "metadata": {
                        "resourceVersion": meta["resourceVersion"],
                        "annotations": {CORDONED_BY: None},
                    }
                }
                if not cordoned:
                    left["uncordoned"].append(name)  # someone uncordoned it: drop our record
                elif changed:
                    left["changed"].append(name)  # someone acts on it: theirs now
                else:
                    patch["spec"] = {"unschedulable": None}
                try:
                    await api().merge_patch(NODES, None, name, patch)
                except NotFound:
                    return
                except Conflict:
                    for kept in left.values():
                        if name in kept:
                            kept.remove(name)
                    continue  # the node changed between the read and the write
                return
            raise AttackError(f"node {name} kept changing while being uncordoned")

        await each(sorted(set(names)), one)
        notes = []
        if left["changed"]:
            notes.append(
                f"left cordoned: {_listed(sorted(left['changed']))} (someone tainted or "
                "annotated them after this run cordoned them: a drain or maintenance is "
                "theirs to end)"
            )
        if left["uncordoned"]:
            notes.append(
                f"already uncordoned by someone else: {_listed(sorted(left['uncordoned']))}"
            )
        return "; ".join(notes) or None
