"""coordination.k8s.io Leases, as the node agents and the operator replicas hold them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shakeout.kube.resources import LEASES

Obj = dict[str, Any]


def micro_time(moment: datetime | None = None) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_path(namespace: str, name: str) -> str:
    return LEASES.path(namespace, name)


def renewed(current: Obj | None, name: str, namespace: str, identity: str, duration: float) -> Obj:
    """The Lease held by `identity` and renewed now, from the one read (None: a new one).

    Keeps what else the object carries (labels, annotations, resourceVersion for the CAS);
    a change of holder records acquireTime and counts a transition.
    """
    meta: Obj = dict((current or {}).get("metadata") or {})
    meta.update(name=name, namespace=namespace)
    spec = dict((current or {}).get("spec") or {})
    if spec.get("holderIdentity") != identity:
        spec["acquireTime"] = micro_time()
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=max(1, round(duration)),
        renewTime=micro_time(),
    )
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
