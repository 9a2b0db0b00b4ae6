"""Pods as the operator reads them: the few fields a target needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pod:
    name: str
    ready: bool
    deleting: bool
    uid: str = ""
    node: str | None = None
    phase: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner_kind: str | None = None
    owner_name: str | None = None
    # spec.nodeName was written by a client in the pod's own create or update (a pod
    # pinned to a node, bypassing the scheduler), not by the scheduler's binding.
    node_pinned: bool = False

    @property
    def scheduled_node(self) -> str | None:
        """The pod's node when the scheduler placed it there, else None."""
        return None if self.node_pinned else self.node


def node_pinned(meta: dict[str, Any]) -> bool:
    """Whether the pod's spec.nodeName was written by a client rather than by the
    scheduler: a managedFields entry of the pod itself (not of a subresource: the
    scheduler's binding is one) owns spec.nodeName. The binding records no such entry.

    Best effort: whoever may update a pod may also rewrite its managedFields, so a team
    can hide that it pinned its pod; the rails that hold whatever a pod says are the
    allowance per namespace, the node cap and the control-plane label.
    """
    for entry in meta.get("managedFields") or []:
        if not isinstance(entry, dict) or entry.get("subresource"):
            continue
        spec = (entry.get("fieldsV1") or {}).get("f:spec")
        if isinstance(spec, dict) and "f:nodeName" in spec:
            return True
    return False


def pod_from(item: dict[str, Any]) -> Pod:
    meta = item["metadata"]
    status = item.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    deleting = bool(meta.get("deletionTimestamp"))
    owner: dict[str, Any] = next(
        (o for o in meta.get("ownerReferences") or [] if o.get("controller")), {}
    )
    return Pod(
        name=meta["name"],
        ready=ready and not deleting,
        deleting=deleting,
        uid=meta.get("uid", ""),
        node=(item.get("spec") or {}).get("nodeName"),
        phase=status.get("phase"),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        owner_kind=owner.get("kind"),
        owner_name=owner.get("name"),
        node_pinned=node_pinned(meta),
    )


# What the pod Table's Node column shows for a pod with no spec.nodeName.
NO_NODE = "<none>"


def pods_from_table(table: dict[str, Any]) -> list[Pod]:
    """Pods from a Table listing without objects: names, nodes (spec.nodeName, the
    Node column: the API server sends every column, kubectl shows it with -o wide) and
    whether they are being deleted."""
    columns = [c["name"] for c in table.get("columnDefinitions") or []]
    name_at, status_at = columns.index("Name"), columns.index("Status")
    node_at = columns.index("Node") if "Node" in columns else None
    pods = []
    for row in table.get("rows") or []:
        cells = row["cells"]
        # kubectl's own rule: a pod with a deletionTimestamp shows as Terminating.
        deleting = cells[status_at] == "Terminating"
        node = cells[node_at] if node_at is not None and node_at < len(cells) else None
        pods.append(
            Pod(
                name=cells[name_at],
                ready=False,
                deleting=deleting,
                node=node if isinstance(node, str) and node and node != NO_NODE else None,
            )
        )
    return pods
