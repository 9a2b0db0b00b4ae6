"""The blast radius on the live cluster: the pods it matches now, and the targets among them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from shakeout.api.experiment import BlastRadius, ExperimentSpec
from shakeout.engine import steps
from shakeout.engine.policies import has_node_cordon
from shakeout.engine.targets import (
    ATTACKABLE_FIELDS,
    Selection,
    attackable,
    select,
    selector_to_string,
)
from shakeout.kube.client import Pod, api
from shakeout.kube.errors import Invalid

# How long a resolution stays fresh enough to attack with: with no warm-up, the targets the
# run was admitted with are the ones its pick-up and its attacks use (listing thousands of
# pods is most of the time to the first fault; pods deleted meanwhile are skipped).
FRESH_TARGETS = 2.0


class SelectorError(Exception):
    """The blast radius' selector cannot be used to list pods."""


def needs_detail(spec: ExperimentSpec) -> bool:
    """Whether an attack of the spec needs more of a target than its name (its node, labels,
    UID or owner): its descriptor says so (api/attacks.py, needs_pod_detail)."""
    return any(a.descriptor.needs_pod_detail for a in spec.attacks)


def preview_needs_detail(spec: ExperimentSpec) -> bool:
    """Whether an Experiment's preview needs whole pods. It shows each candidate's name
    and node, which a Table carries; only a NodeCordon's check asks which nodes the
    scheduler chose (Pod.scheduled_node: managedFields, in whole pods). A preview is
    computed again after every change of the switch (each Stop All), so for a blast
    radius of 10,000 pods this is 3 MB of Table instead of 60 MB of pods on the loop."""
    return has_node_cordon(spec)


async def attackable_pods(
    namespace: str, blast_radius: BlastRadius, detail: bool = True
) -> list[Pod]:
    """The pods the blast radius matches that can be attacked (engine.targets.attackable):
    whole (node, labels, owner) with `detail`, else names only, listed as a Table (an
    order of magnitude fewer bytes to move and parse). The API server filters by
    ATTACKABLE_FIELDS; whole pods are checked again here."""
    selector = selector_to_string(blast_radius.selector)
    try:
        if detail:
            pods = await api().list_pods(namespace, selector, cached=True, fields=ATTACKABLE_FIELDS)
            return [p for p in pods if attackable(p.phase, p.node, p.deleting)]
        pods = await api().list_pod_names(namespace, selector, fields=ATTACKABLE_FIELDS)
        return [p for p in pods if not p.deleting]
    except Invalid as err:
        # Stored before the schema checked label keys: refused, never retried forever.
        raise SelectorError(f"the API server refuses the selector {selector!r}") from err


async def resolve_target_pods(
    namespace: str, blast_radius: BlastRadius, seed: str, detail: bool = True
) -> tuple[Selection, list[Pod]]:
    """List the matching pods that can be attacked (attackable_pods) and pick the targets.

    Returns the pick and the target pods (whole with `detail`, else names only).
    """
    live = await attackable_pods(namespace, blast_radius, detail)
    selection = select([p.name for p in live], blast_radius.limit, seed)
    chosen = set(selection.targets)
    return selection, [p for p in live if p.name in chosen]


# At most this many resolutions are kept at once (each may hold thousands of pods): the
# admission endpoint can be called by anyone who reaches it, so what it keeps is bounded.
MAX_KEPT = 64

Key = tuple[str, str, str, bool]


class RecentResolutions:
    """Resolutions kept for FRESH_TARGETS seconds, at most MAX_KEPT, by namespace, run UID
    and blast radius (a changed blast radius or need of detail is a miss), for a later step
    of the same run.

    The namespace is part of the key because what the admission webhook keeps comes from
    the review as posted: a forged review can only seed a resolution of the pods of the
    namespace it names, which no run of another namespace ever takes. A run in the
    namespace it names, with the UID it names, resolves the same pods with the same seed.
    """

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._kept: dict[Key, tuple[float, Selection, list[Pod]]] = {}

    @staticmethod
    def _key(namespace: str, uid: str, blast_radius: BlastRadius, detail: bool) -> Key:
        return namespace, uid, blast_radius.model_dump_json(), detail

    def keep(
        self,
        namespace: str,
        uid: str,
        blast_radius: BlastRadius,
        detail: bool,
        resolved: tuple[Selection, list[Pod]],
    ) -> None:
        if not namespace or not uid:
            return  # nothing could ever take it
        now = time.monotonic()
        for key in [k for k, (at, _, _) in self._kept.items() if now - at >= FRESH_TARGETS]:
            del self._kept[key]
        key = self._key(namespace, uid, blast_radius, detail)
        self._kept.pop(key, None)
        while len(self._kept) >= self.max_kept:
            del self._kept[next(iter(self._kept))]  # the oldest first
        self._kept[key] = (now, *resolved)

    def take(
        self, namespace: str, uid: str, blast_radius: BlastRadius, detail: bool
    ) -> tuple[Selection, list[Pod]] | None:
        kept = self._kept.pop(self._key(namespace, uid, blast_radius, detail), None)
        if kept is None or time.monotonic() - kept[0] >= FRESH_TARGETS:
            return None
        return kept[1], kept[2]

    def drop(self, namespace: str, uid: str) -> None:
        """Forget every resolution of the run: its next step resolves its targets anew."""
        for key in [k for k in self._kept if k[:2] == (namespace, uid)]:
            del self._kept[key]

    def __len__(self) -> int:
        return len(self._kept)


# Resolutions of this process, for the next step of the same run moments later: what the
# admission webhook resolved, for the run's pick-up (when the same operator process serves
# both; otherwise the pick-up resolves again), and what the pick-up resolved, for the
# attacks right after it.
RECENT = RecentResolutions()


async def resolve_targets(
    namespace: str, spec: ExperimentSpec, uid: str
) -> tuple[Selection, list[Pod]]:
    """The run's targets now: the resolution of an earlier step of the same run (same
    namespace and UID) if it is fresh (FRESH_TARGETS) and for the same blast radius, else
    listed anew; kept for the next step. Whether whole pods are listed follows from the
    attacks (needs_detail)."""
    detail = needs_detail(spec)
    resolved = RECENT.take(namespace, uid, spec.blast_radius, detail)
    if resolved is None:
        resolved = await resolve_target_pods(namespace, spec.blast_radius, uid, detail)
    RECENT.keep(namespace, uid, spec.blast_radius, detail, resolved)
    return resolved


@dataclass(frozen=True)
class AttackTargets:
    """The targets of a run's attacks (engine/steps.py): the union over every blast radius
    (what the caps apply to), the target pods of that union, each attack's own pick and
    pods, and every pod any blast radius can take (the preview's candidates)."""

    union: Selection
    pods: list[Pod]
    by_attack: dict[str, tuple[Selection, list[Pod]]]
    candidates: list[Pod] = field(default_factory=list)

    def pods_of(self, names: Iterable[str]) -> list[Pod]:
        """The target pods of the attacks `names`, each once, by name."""
        pods = {p.name: p for n in names for p in self.by_attack[n][1]}
        return [pods[n] for n in sorted(pods)]


async def resolve_attack_targets(
    namespace: str,
    spec: ExperimentSpec,
    uid: str,
    names: Collection[str] | None = None,
    detail: bool | None = None,
) -> AttackTargets:
    """Each attack's targets now (of `names` only, when given). With no attack of its own
    blast radius, one resolution serves every attack, as resolve_targets (the one kept
    for the next step of the run); otherwise each distinct blast radius is listed once and
    picked with the run's seed, so that a restart picks the same pods again. detail:
    whole pods or not (default: as the attacks need, needs_detail); the preview's own."""
    attacks = [a for a in spec.attacks if names is None or a.name in names]
    if not steps.has_own_blast_radius(spec):
        selection, pods = await resolve_targets(namespace, spec, uid)
        shared = {a.name: (selection, pods) for a in attacks}
        return AttackTargets(selection, pods, shared, pods)
    if detail is None:
        detail = needs_detail(spec)
    radii = {r.model_dump_json(): r for a in attacks if (r := steps.blast_radius_of(spec, a))}
    listed = await asyncio.gather(
        *(attackable_pods(namespace, radius, detail) for radius in radii.values())
    )
    picks: dict[str, tuple[Selection, list[Pod]]] = {}
    candidates: dict[str, Pod] = {}
    for (key, radius), live in zip(radii.items(), listed, strict=True):
        selection = select([p.name for p in live], radius.limit, uid)
        chosen = set(selection.targets)
        picks[key] = (selection, [p for p in live if p.name in chosen])
        candidates.update((p.name, p) for p in live)
    by_attack = {a.name: picks[steps.blast_radius_of(spec, a).model_dump_json()] for a in attacks}
    union = steps.union(candidates, (s for s, _ in picks.values()))
    targets = {p.name: p for _, chosen_pods in picks.values() for p in chosen_pods}
    return AttackTargets(
        union,
        [targets[n] for n in sorted(targets)],
        by_attack,
        [candidates[n] for n in sorted(candidates)],
    )
