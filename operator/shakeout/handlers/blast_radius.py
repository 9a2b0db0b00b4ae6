"""The blast radius on the live cluster: the pods it matches now, and the targets among them."""

from __future__ import annotations

import time

from kubernetes.client.exceptions import ApiException

from shakeout.api.experiment import NODE_LEVEL, AttackType, BlastRadius, ExperimentSpec
from shakeout.engine.targets import Selection, select, selector_to_string
from shakeout.handlers.k8s import Pod, api

# How long a resolution stays fresh enough to attack with: with no warm-up, the targets the
# run was admitted with are the ones its pick-up and its attacks use (listing thousands of
# pods is most of the time to the first fault; pods deleted meanwhile are skipped).
FRESH_TARGETS = 2.0


class SelectorError(Exception):
    """The blast radius' selector cannot be used to list pods."""


# Attacks that need more of a target than its name: its node, labels, UID or owner.
NEED_DETAIL = NODE_LEVEL | {AttackType.ENDPOINT_REMOVAL, AttackType.NODE_CORDON}


def needs_detail(spec: ExperimentSpec) -> bool:
    return any(AttackType(a.type) in NEED_DETAIL for a in spec.attacks)


async def resolve_target_pods(
    namespace: str, blast_radius: BlastRadius, seed: str, detail: bool = True
) -> tuple[Selection, list[Pod]]:
    """List the matching pods (those being deleted do not count) and pick the targets.

    Returns the pick and the target pods: whole (node, labels, owner) with `detail`, else
    names only, listed as a Table (an order of magnitude fewer bytes to move and parse).
    """
    selector = selector_to_string(blast_radius.selector)
    try:
        if detail:
            pods = await api().list_pods(namespace, selector, cached=True)
        else:
            pods = await api().list_pod_names(namespace, selector)
    except ApiException as err:
        if err.status != 400:
            raise
        # Stored before the schema checked label keys: refused, never retried forever.
        raise SelectorError(f"the API server refuses the selector {selector!r}") from err
    live = [p for p in pods if not p.deleting]
    selection = select([p.name for p in live], blast_radius.limit, seed)
    chosen = set(selection.targets)
    return selection, [p for p in live if p.name in chosen]


class RecentResolutions:
    """Resolutions kept for FRESH_TARGETS seconds, by run UID and blast radius (a changed
    blast radius or need of detail is a miss), for a later step of the same run."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, bool], tuple[float, Selection, list[Pod]]] = {}

    @staticmethod
    def _key(uid: str, blast_radius: BlastRadius, detail: bool) -> tuple[str, str, bool]:
        return uid, blast_radius.model_dump_json(), detail

    def keep(
        self,
        uid: str,
        blast_radius: BlastRadius,
        detail: bool,
        resolved: tuple[Selection, list[Pod]],
    ) -> None:
        now = time.monotonic()
        for key in [k for k, (at, _, _) in self._kept.items() if now - at >= FRESH_TARGETS]:
            del self._kept[key]
        self._kept[self._key(uid, blast_radius, detail)] = (now, *resolved)

    def take(
        self, uid: str, blast_radius: BlastRadius, detail: bool
    ) -> tuple[Selection, list[Pod]] | None:
        kept = self._kept.pop(self._key(uid, blast_radius, detail), None)
        if kept is None or time.monotonic() - kept[0] >= FRESH_TARGETS:
            return None
        return kept[1], kept[2]


# What the admission webhook resolved for a run, for that run's pick-up moments later (when
# the same operator process serves both; otherwise the pick-up resolves again).
ADMITTED = RecentResolutions()
