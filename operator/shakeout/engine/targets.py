"""Blast radius: from the pods a selector matched to the targets of a run."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from shakeout.api.common import LabelSelector, LabelSelectorOperator
from shakeout.api.experiment import TargetLimit
from shakeout.api.run import MAX_TARGET_NAMES, Targets


def limit_count(matched: int, limit: TargetLimit | None) -> int:
    """How many of `matched` pods become targets.

    Percentages round up, so that a non-zero percent of a non-empty set is never zero
    pods (10 percent of 15 pods is 2; 1 percent of 3 pods is 1; 0 percent is 0).
    """
    if limit is None:
        return matched
    if limit.count is not None:
        return min(matched, limit.count)
    assert limit.percent is not None
    return min(matched, math.ceil(matched * limit.percent / 100))


@dataclass(frozen=True)
class Selection:
    matched: int
    targets: tuple[str, ...]

    def summary(self) -> Targets:
        """The bounded form kept in status: counts and the first names."""
        return Targets(
            matched=self.matched,
            selected=len(self.targets),
            names=sorted(self.targets)[:MAX_TARGET_NAMES],
        )


def select(pod_names: list[str], limit: TargetLimit | None, seed: str) -> Selection:
    """Pick the targets among the matching pods.

    The pick is random but seeded with the run's UID, so that an operator that restarts
    mid-run picks the same pods again instead of new ones.
    """
    ordered = sorted(set(pod_names))
    count = limit_count(len(ordered), limit)
    picked = random.Random(seed).sample(ordered, count)  # noqa: S311  (not cryptographic)
    return Selection(matched=len(ordered), targets=tuple(sorted(picked)))


def selector_to_string(selector: LabelSelector) -> str:
    """The selector in the label-selector syntax of the list API (`?labelSelector=`)."""
    terms = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        if req.operator == LabelSelectorOperator.IN:
            terms.append(f"{req.key} in ({values})")
        elif req.operator == LabelSelectorOperator.NOT_IN:
            terms.append(f"{req.key} notin ({values})")
        elif req.operator == LabelSelectorOperator.EXISTS:
            terms.append(req.key)
        else:
            terms.append(f"!{req.key}")
    return ",".join(terms)


# The pods a blast radius can take: scheduled to a node, Running, and not being deleted. A
# Pending pod has no container to attack, a Succeeded or Failed one none left, and a pod
# being deleted is going anyway; a node-level attack on any of them would fail the run.
# The same rule as a field selector, so that the API server filters before it sends.
ATTACKABLE_FIELDS = "status.phase=Running,spec.nodeName!="


def attackable(phase: str | None, node: str | None, deleting: bool) -> bool:
    """Whether a pod can be a target (the rule of ATTACKABLE_FIELDS, plus not deleting)."""
    return phase == "Running" and bool(node) and not deleting
