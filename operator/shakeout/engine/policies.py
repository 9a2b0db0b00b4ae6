"""Blast-radius rails: which namespaces may be attacked, how many pods and nodes at most,
which attacks reach beyond the namespace, how long a run may last. Pure."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.switch import (
    CONTROL_PLANE_LABELS,
    DEFAULT_MAX_NODES,
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
    allowed = percent_allowance(matched, caps.max_percent or 0)
    if caps.max_percent is not None and targets > allowed:
        return (
            f"the run would target {targets} of {matched} matching pods, over the "
            f"cluster-wide cap of {caps.max_percent}% (ChaosSwitch default spec.caps.maxPercent)"
        )
    return None


def percent_allowance(total: int, percent: int) -> int:
    """How many of `total` a percent cap allows: rounded down, never below one."""
    return max(1, math.floor(total * percent / 100))


def scale_cap_refusal(
    attack: str, workload: str, replicas: int, to: int, switch: ChaosSwitchSpec
) -> str | None:
    """Why scaling a workload of `replicas` replicas to `to` is over the cluster-wide caps,
    or None: the replicas scaled away count as pods, against maxTargets and against
    maxPercent of the workload's replicas (a scale up takes no pod away)."""
    caps = switch.caps
    away = max(0, replicas - to)
    if caps is None or away == 0:
        return None
    if caps.max_targets is not None and away > caps.max_targets:
        return (
            f"attack {attack} would scale {workload} from {replicas} to {to} replicas, "
            f"taking {away} pods away, over the cluster-wide cap of {caps.max_targets} "
            "(ChaosSwitch default spec.caps.maxTargets)"
        )
    if caps.max_percent is not None and away > percent_allowance(replicas, caps.max_percent):
        return (
            f"attack {attack} would scale {workload} from {replicas} to {to} replicas, "
            f"taking {away} of {replicas} pods away, over the cluster-wide cap of "
            f"{caps.max_percent}% (ChaosSwitch default spec.caps.maxPercent)"
        )
    return None


def is_control_plane(labels: Mapping[str, str]) -> bool:
    """Whether a node's labels make it a control-plane node."""
    return any(key in labels for key in CONTROL_PLANE_LABELS)


def has_node_cordon(spec: ExperimentSpec) -> bool:
    """Whether any attack of the spec is a NodeCordon (the node rails apply to it)."""
    return any(a.type == AttackType.NODE_CORDON for a in spec.attacks)


def cordon_nodes(
    scheduled_nodes: Iterable[str], control_plane: Collection[str], switch: ChaosSwitchSpec
) -> tuple[str, ...]:
    """The nodes a NodeCordon may cordon, sorted and unique: those of the targets that the
    scheduler placed (`scheduled_nodes`), less the control-plane nodes unless the switch
    allows them."""
    allowed = switch.cluster_scoped_attacks
    spare_control_plane = allowed is None or not allowed.control_plane_nodes
    return tuple(
        sorted(
            {n for n in scheduled_nodes if n and not (spare_control_plane and n in control_plane)}
        )
    )


def max_nodes(switch: ChaosSwitchSpec) -> int:
    """How many nodes a run may cordon."""
    cap = switch.caps.max_nodes if switch.caps is not None else None
    return DEFAULT_MAX_NODES if cap is None else cap


def node_cap_refusal(nodes: Sequence[str], switch: ChaosSwitchSpec) -> str | None:
    """Why cordoning these nodes is over the cluster-wide cap, or None."""
    cap = max_nodes(switch)
    if len(nodes) <= cap:
        return None
    where = (
        "ChaosSwitch default spec.caps.maxNodes"
        if switch.caps is not None and switch.caps.max_nodes is not None
        else "the default when ChaosSwitch default sets no spec.caps.maxNodes"
    )
    shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    return (
        f"the run would cordon {len(nodes)} nodes ({shown}), over the cluster-wide cap of "
        f"{cap} ({where})"
    )


def cluster_scope_refusal(
    namespace: str, attacks: Sequence[str], switch: ChaosSwitchSpec
) -> str | None:
    """Why the namespace may not run these attacks of scope Cluster, or None."""
    allowed = switch.cluster_scoped_attacks
    if not attacks or (allowed is not None and namespace in allowed.namespaces):
        return None
    return (
        f"{', '.join(attacks)}: attacks whose effect reaches beyond the namespace are not "
        f"allowed for namespace {namespace}; a cluster admin allows them per namespace in "
        "ChaosSwitch default spec.clusterScopedAttacks.namespaces"
    )


def run_length_refusal(seconds: int, switch: ChaosSwitchSpec) -> str | None:
    """Why a run of this length (warm-up, attack steps, cool-down) is over the cap."""
    cap = switch.max_run_seconds
    if cap is None or seconds <= cap:
        return None
    return (
        f"the run would last {seconds} s (warm-up, attacks and their steps, cool-down), over "
        f"the cluster-wide cap of {cap} s (ChaosSwitch default spec.maxRunSeconds): shorten "
        "the Experiment's warmUpSeconds, durationSeconds, startAfterSeconds or coolDownSeconds"
    )
