"""The blast radius on the live cluster: the pods it matches now, and the targets among them."""

from __future__ import annotations

from shakeout.api.experiment import BlastRadius
from shakeout.engine.targets import Selection, select, selector_to_string
from shakeout.handlers.k8s import Pod, api


async def resolve_target_pods(
    namespace: str, blast_radius: BlastRadius, seed: str
) -> tuple[Selection, list[Pod]]:
    """List the matching pods (those being deleted do not count) and pick the targets.

    Returns the pick and the target pods' objects (node, labels, owner) for the attacks.
    """
    pods = await api().list_pods(namespace, selector_to_string(blast_radius.selector), cached=True)
    live = [p for p in pods if not p.deleting]
    selection = select([p.name for p in live], blast_radius.limit, seed)
    chosen = set(selection.targets)
    return selection, [p for p in live if p.name in chosen]
