"""Blast-radius rails: which namespaces may be attacked, and how many pods at most. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shakeout.api.switch import (
    OPT_IN_LABEL,
    PROTECTED_LABEL,
    ChaosSwitchSpec,
    NamespaceMode,
)

# Never attacked, whatever a selector says.
ALWAYS_PROTECTED = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class NamespaceFacts:
    name: str
    labels: dict[str, str]


def namespace_refusal(
    ns: NamespaceFacts, switch: ChaosSwitchSpec, operator_namespaces: frozenset[str]
) -> str | None:
    """Why the namespace may not be attacked, or None."""
    if ns.name in ALWAYS_PROTECTED:
        return f"namespace {ns.name} is protected: system namespaces are never targeted"
    if ns.name in operator_namespaces:
        return f"namespace {ns.name} is protected: it runs the shakeout operator"
    if ns.labels.get(PROTECTED_LABEL) == "true":
        return f"namespace {ns.name} is protected: it is labelled {PROTECTED_LABEL}=true"
    if switch.namespace_mode == NamespaceMode.OPT_IN and ns.labels.get(OPT_IN_LABEL) != "enabled":
        return (
            f"namespace {ns.name} has not opted in: the ChaosSwitch is in OptIn mode and the "
            f"namespace lacks the label {OPT_IN_LABEL}=enabled"
        )
    return None


def cap_refusal(matched: int, targets: int, switch: ChaosSwitchSpec) -> str | None:
    """Why a run with this many targets is over the cluster-wide caps, or None."""
    caps = switch.caps
    if caps is None:
        return None
    if caps.max_targets is not None and targets > caps.max_targets:
        return (
            f"the run would target {targets} pods, over the cluster-wide cap of "
            f"{caps.max_targets} (ChaosSwitch default spec.caps.maxTargets)"
        )
    # A percent cap always allows one pod: it limits spread, it does not forbid a run.
    allowed = max(1, math.floor(matched * (caps.max_percent or 0) / 100))
    if caps.max_percent is not None and targets > allowed:
        return (
            f"the run would target {targets} of {matched} matching pods, over the "
            f"cluster-wide cap of {caps.max_percent}% (ChaosSwitch default spec.caps.maxPercent)"
        )
    return None
