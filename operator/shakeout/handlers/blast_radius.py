"""The blast radius on the live cluster: the pods it matches now, and the targets among them."""

from __future__ import annotations

from shakeout.api.experiment import BlastRadius
from shakeout.engine.targets import Selection, select, selector_to_string
from shakeout.handlers.k8s import api


async def resolve_targets(namespace: str, blast_radius: BlastRadius, seed: str) -> Selection:
    """List the matching pods (those being deleted do not count) and pick the targets."""
    pods = await api().list_pods(namespace, selector_to_string(blast_radius.selector))
    return select([p.name for p in pods if not p.deleting], blast_radius.limit, seed)
