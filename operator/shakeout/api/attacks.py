"""The attack catalogue: every attack type, its parameters, and what it is, in one table.

`CATALOGUE` holds one AttackDescriptor per AttackType. Everything else that depends on
the type is derived from it: REVERSIBLE and NODE_LEVEL, the Attack model's CEL rules and
validator (api/experiment.py), which targets are listed whole (gather/targets.py), the
node agent's parameter models (agent/node/faults.py). The executors are registries of
their own, keyed by type and checked against the catalogue by tests/unit/test_catalogue.py:
attacks/cluster.py for the API level, agent/node/faults.py for the node level
(docs/adding-an-attack.md walks through a new type).

This module imports nothing of shakeout but api.common: the node agent's fault layer
imports it, and its keeper must start fast and never depend on a cluster.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field, JsonValue
from pydantic.alias_generators import to_camel

from shakeout.api.common import DNS_SUBDOMAIN, Model, cel


class AttackType(StrEnum):
    # API-level: executed by the operator itself (attacks/cluster.py).
    POD_DELETE = "PodDelete"
    SCALE_WORKLOAD = "ScaleWorkload"
    NETWORK_ISOLATION = "NetworkIsolation"
    ENDPOINT_REMOVAL = "EndpointRemoval"
    NODE_CORDON = "NodeCordon"
    # Node-level: executed by the node agent of each target's node (agent/node/faults.py).
    CPU_STRESS = "CpuStress"
    MEMORY_STRESS = "MemoryStress"
    NETWORK_BLACKHOLE = "NetworkBlackhole"
    PACKET_LOSS = "PacketLoss"
    BANDWIDTH_LIMIT = "BandwidthLimit"
    NETWORK_DELAY = "NetworkDelay"
    PROCESS_KILL = "ProcessKill"


class Level(StrEnum):
    """Who executes an attack type."""

    API = "API"  # the operator, through the Kubernetes API
    NODE = "Node"  # the node agent of each target's node, handed a NodeAttack


class Scope(StrEnum):
    """How far an attack type's effect reaches."""

    # Only the run's own namespace (its targets, its workloads, what it creates there).
    NAMESPACE = "Namespace"
    # Beyond it (cluster-scoped objects every team shares: nodes): allowed only for the
    # namespaces a cluster admin named in the ChaosSwitch (spec.clusterScopedAttacks).
    CLUSTER = "Cluster"


# -- the parameter models ---------------------------------------------------------------


class WorkloadKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"


class WorkloadRef(Model):
    """A Deployment or StatefulSet in the Experiment's namespace."""

    kind: WorkloadKind = Field(description="Deployment or StatefulSet.")
    name: str = Field(description="Name of the workload.", max_length=253, pattern=DNS_SUBDOMAIN)


class Direction(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"
    BOTH = "Both"


class PodDeleteParameters(Model):
    """Parameters of PodDelete: deletes each target pod once. Cannot be rolled back."""

    grace_period_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Grace period of the pod deletion; 0 kills at once.",
    )


class ScaleWorkloadParameters(Model):
    """Parameters of ScaleWorkload: scales a workload, rollback restores the old count."""

    workload: WorkloadRef = Field(description="The workload to scale.")
    replicas: int = Field(ge=0, le=10000, description="The replica count during the attack.")
    accept_data_loss: bool = Field(
        default=False,
        description=(
            "Scale down a StatefulSet whose persistentVolumeClaimRetentionPolicy.whenScaled "
            "is Delete, which deletes the volumes of the replicas scaled away (refused "
            "without this). The attack is then irreversible: it is reported so, and the "
            "count is not restored."
        ),
    )


class NetworkIsolationParameters(Model):
    """NetworkIsolation: a NetworkPolicy denies the targets' traffic; rollback deletes it."""

    direction: Direction = Field(
        default=Direction.BOTH, description="Which traffic is denied: Ingress, Egress or Both."
    )


class CpuStressParameters(Model):
    """CpuStress: worker processes that keep CPUs busy, in the target pod's cgroup."""

    workers: int = Field(default=1, ge=1, le=64, description="Busy processes, one CPU each.")


class MemoryStressParameters(Model):
    """MemoryStress: a process that allocates and holds memory, in the pod's cgroup."""

    megabytes: int = Field(ge=1, le=65536, description="MiB allocated and held.")


class NetworkBlackholeParameters(Model):
    """NetworkBlackhole: nftables in the target's network namespace drops all traffic."""

    direction: Direction = Field(
        default=Direction.BOTH, description="Which traffic is dropped: Ingress, Egress or Both."
    )


class PacketLossParameters(Model):
    """PacketLoss: nftables in the target's network namespace drops a share of packets."""

    percent: int = Field(ge=1, le=100, description="Percent (1-100) of the packets dropped.")
    direction: Direction = Field(
        default=Direction.BOTH, description="Which traffic loses packets: Ingress, Egress or Both."
    )


class BandwidthLimitParameters(Model):
    """BandwidthLimit: a tc tbf qdisc caps the target's outgoing throughput."""

    rate_kbit: int = Field(ge=8, le=100_000_000, description="The cap in kbit/s.")
    burst_kbyte: int = Field(
        default=32, ge=2, le=1_048_576, description="Bucket size in KiB (bytes sent at full speed)."
    )


class NetworkDelayParameters(Model):
    """NetworkDelay: a tc netem qdisc delays the target's outgoing packets."""

    delay_ms: int = Field(ge=1, le=60_000, description="Added delay in milliseconds.")
    jitter_ms: int = Field(default=0, ge=0, le=60_000, description="Jitter in milliseconds.")


class KillSignal(StrEnum):
    KILL = "KILL"
    TERM = "TERM"


class ProcessKillParameters(Model):
    """ProcessKill: signals the target pod's processes. Cannot be rolled back."""

    signal: KillSignal = Field(default=KillSignal.KILL, description="KILL or TERM.")
    process_name: str | None = Field(
        default=None,
        max_length=15,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Only processes with this name (comm, at most 15 characters); else all.",
    )


# -- one parameter field per type -------------------------------------------------------


@dataclass(frozen=True)
class ParameterField:
    """On a model whose `type` picks one of several parameter fields: one type's field.

    The rule, for CEL and pydantic alike: a type's parameters are refused on any other
    type, and a type whose parameters are required cannot go without them.
    """

    type: str
    field: str  # the Python (snake_case) name; `key` is the wire (camelCase) name
    required: bool

    @property
    def key(self) -> str:
        return to_camel(self.field)


def parameter_rules(fields: Iterable[ParameterField]) -> list[JsonValue]:
    """The CEL rules of `fields`, one per field, each naming its field."""
    rules: list[JsonValue] = []
    for entry in fields:
        kind, key = entry.type, entry.key
        if entry.required:
            rule = cel(
                f"(self.type == '{kind}') == has(self.{key})",
                f"{key} parameters are required for, and only for, type {kind}",
                fieldPath=f".{key}",
            )
        else:
            rule = cel(
                f"self.type == '{kind}' || !has(self.{key})",
                f"{key} parameters belong to type {kind} only",
                fieldPath=f".{key}",
            )
        rules.append(rule)
    return rules


def parameter_problem(obj: object, kind: str, fields: Iterable[ParameterField]) -> str | None:
    """What the rules of `fields` refuse about `obj`, of type `kind` (the first problem in
    table order), or None. A parameter field is given when it is not None."""
    for entry in fields:
        present = getattr(obj, entry.field) is not None
        if entry.required and kind == entry.type and not present:
            return f"type {entry.type} needs {entry.key} parameters"
        if present and kind != entry.type:
            return f"{entry.key} parameters belong to type {entry.type} only"
    return None


# -- the catalogue ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AttackDescriptor:
    """What the rest of the code needs to know about an attack type.

    `parameters_field` is the Attack field (snake_case) that holds the parameters, of
    type `parameters_model`; a type without parameters has neither. `needs_pod_detail`:
    the executor needs more of a target than its name (node, labels, UID, owner), so the
    targets are listed whole; node-level types always do (they are dispatched per node,
    and the agent checks the UID). `privileges`: what executing it needs, each
    `<what> (<why>)`: RBAC as `<resources>: <verbs>` for the operator's ClusterRole
    (deploy/base/operator-rbac.yaml), Linux capabilities and host access for the node
    agent's DaemonSet (deploy/base/agent.yaml); node-level types also need the
    operator's NodeAttack rights, which every one of them shares.
    """

    type: AttackType
    level: Level
    reversible: bool
    parameters_field: str | None = None
    # builtins.type: inside this class, `type` is the field above.
    parameters_model: builtins.type[Model] | None = None
    parameters_required: bool = False
    needs_pod_detail: bool = False
    scope: Scope = Scope.NAMESPACE
    privileges: tuple[str, ...]
    summary: str

    def __post_init__(self) -> None:
        if (self.parameters_field is None) != (self.parameters_model is None):
            raise ValueError(f"{self.type}: give both parameters_field and parameters_model")
        if self.parameters_required and self.parameters_field is None:
            raise ValueError(f"{self.type}: required parameters need a parameters_field")
        if self.level is Level.NODE and not self.needs_pod_detail:
            raise ValueError(f"{self.type}: a node-level attack needs whole target pods")
        if not self.privileges or not self.summary:
            raise ValueError(f"{self.type}: say what it does and which privileges it needs")

    @property
    def parameter_field(self) -> ParameterField | None:
        if self.parameters_field is None:
            return None
        return ParameterField(self.type, self.parameters_field, self.parameters_required)


# What the node agent needs for every attack that finds a target pod on its node.
_FIND_POD = (
    "hostPID (the pod's processes in the host's /proc)",
    "CAP_SYS_PTRACE (read other processes' /proc/<pid>/ns and cgroup files)",
)
_ENTER_NETNS = "CAP_SYS_ADMIN (setns into the pod's network namespace)"

_DESCRIPTORS = (
    AttackDescriptor(
        type=AttackType.POD_DELETE,
        level=Level.API,
        reversible=False,
        parameters_field="pod_delete",
        parameters_model=PodDeleteParameters,
        privileges=("pods: delete",),
        summary="Deletes each target pod once, with a grace period; cannot be rolled back.",
    ),
    AttackDescriptor(
        type=AttackType.SCALE_WORKLOAD,
        level=Level.API,
        reversible=True,
        parameters_field="scale_workload",
        parameters_model=ScaleWorkloadParameters,
        parameters_required=True,
        privileges=("deployments/scale, statefulsets/scale: get, patch",),
        summary="Scales a Deployment or StatefulSet; rollback restores the count it had.",
    ),
    AttackDescriptor(
        type=AttackType.NETWORK_ISOLATION,
        level=Level.API,
        reversible=True,
        parameters_field="network_isolation",
        parameters_model=NetworkIsolationParameters,
        privileges=(
            "networkpolicies: create, delete (a deny-all policy over the marked targets)",
            "pods: list, patch (the isolation mark, removed after the run)",
        ),
        summary=(
            "Marks the targets with a label that a deny-all NetworkPolicy selects; rollback "
            "deletes the policy."
        ),
    ),
    AttackDescriptor(
        type=AttackType.ENDPOINT_REMOVAL,
        level=Level.API,
        reversible=True,
        needs_pod_detail=True,
        privileges=(
            "services: list (which Services select a target)",
            "pods: list, patch (the labels removed, recorded on the pod)",
            "replicasets, statefulsets, daemonsets, jobs: get (selectors that must keep matching)",
        ),
        summary=(
            "Removes the labels that the targets' Services select and their controller does "
            "not; rollback puts them back."
        ),
    ),
    AttackDescriptor(
        type=AttackType.NODE_CORDON,
        level=Level.API,
        reversible=True,
        needs_pod_detail=True,
        scope=Scope.CLUSTER,
        privileges=(
            "nodes: get, list, patch (cordon, and uncordon what this run cordoned; list "
            "only the control-plane nodes, by label)",
        ),
        summary="Cordons the targets' nodes; rollback uncordons those this run cordoned.",
    ),
    AttackDescriptor(
        type=AttackType.CPU_STRESS,
        level=Level.NODE,
        reversible=True,
        parameters_field="cpu_stress",
        parameters_model=CpuStressParameters,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            "CAP_SYS_ADMIN (enter the pod's network namespace, join its cgroup)",
            "hostPath /sys/fs/cgroup (the stress processes join the pod's cgroup)",
            "CAP_KILL (stop the stress processes)",
        ),
        summary="Worker processes in the target pod's cgroup keep CPUs busy.",
    ),
    AttackDescriptor(
        type=AttackType.MEMORY_STRESS,
        level=Level.NODE,
        reversible=True,
        parameters_field="memory_stress",
        parameters_model=MemoryStressParameters,
        parameters_required=True,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            "CAP_SYS_ADMIN (enter the pod's network namespace, join its cgroup)",
            "hostPath /sys/fs/cgroup (the stress process joins the pod's cgroup)",
            "CAP_KILL (stop the stress process)",
        ),
        summary="A process in the target pod's cgroup allocates and holds memory.",
    ),
    AttackDescriptor(
        type=AttackType.NETWORK_BLACKHOLE,
        level=Level.NODE,
        reversible=True,
        parameters_field="network_blackhole",
        parameters_model=NetworkBlackholeParameters,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            _ENTER_NETNS,
            "CAP_NET_ADMIN (nftables in the pod's network namespace)",
        ),
        summary="nftables in the target's network namespace drops all its traffic.",
    ),
    AttackDescriptor(
        type=AttackType.PACKET_LOSS,
        level=Level.NODE,
        reversible=True,
        parameters_field="packet_loss",
        parameters_model=PacketLossParameters,
        parameters_required=True,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            _ENTER_NETNS,
            "CAP_NET_ADMIN (nftables in the pod's network namespace)",
        ),
        summary="nftables in the target's network namespace drops a share of its packets.",
    ),
    AttackDescriptor(
        type=AttackType.BANDWIDTH_LIMIT,
        level=Level.NODE,
        reversible=True,
        parameters_field="bandwidth_limit",
        parameters_model=BandwidthLimitParameters,
        parameters_required=True,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            _ENTER_NETNS,
            "CAP_NET_ADMIN (a tc qdisc in the pod's network namespace)",
        ),
        summary="A tc tbf qdisc caps the target's outgoing throughput.",
    ),
    AttackDescriptor(
        type=AttackType.NETWORK_DELAY,
        level=Level.NODE,
        reversible=True,
        parameters_field="network_delay",
        parameters_model=NetworkDelayParameters,
        parameters_required=True,
        needs_pod_detail=True,
        privileges=(
            *_FIND_POD,
            _ENTER_NETNS,
            "CAP_NET_ADMIN (a tc qdisc in the pod's network namespace)",
        ),
        summary="A tc netem qdisc delays the target's outgoing packets.",
    ),
    AttackDescriptor(
        type=AttackType.PROCESS_KILL,
        level=Level.NODE,
        reversible=False,
        parameters_field="process_kill",
        parameters_model=ProcessKillParameters,
        needs_pod_detail=True,
        privileges=(*_FIND_POD, "CAP_KILL (signal the pod's processes)"),
        summary="Signals the target pod's processes; cannot be rolled back.",
    ),
)

CATALOGUE: dict[AttackType, AttackDescriptor] = {d.type: d for d in _DESCRIPTORS}

# A type without a descriptor (or with two) would fail at its first lookup, deep in a run:
# refuse it when the package is imported instead.
if len(CATALOGUE) != len(_DESCRIPTORS) or set(CATALOGUE) != set(AttackType):
    raise TypeError("CATALOGUE must hold exactly one descriptor for every AttackType")

# -- derived tables ---------------------------------------------------------------------

# Whether an attack type can be rolled back; shown in status and reports.
REVERSIBLE: dict[AttackType, bool] = {t: d.reversible for t, d in CATALOGUE.items()}

# Attacks that a node agent executes on the node of each target.
NODE_LEVEL: frozenset[AttackType] = frozenset(
    t for t, d in CATALOGUE.items() if d.level is Level.NODE
)

# Attacks whose effect reaches beyond the run's namespace (the ChaosSwitch must allow them).
CLUSTER_SCOPED: frozenset[AttackType] = frozenset(
    t for t, d in CATALOGUE.items() if d.scope is Scope.CLUSTER
)

# The parameter field of each type that has one, in the order of the catalogue.
PARAMETER_FIELDS: tuple[ParameterField, ...] = tuple(
    f for d in CATALOGUE.values() if (f := d.parameter_field) is not None
)


def descriptor(attack_type: str) -> AttackDescriptor:
    """The descriptor of a type (a ValueError for a name that is no AttackType)."""
    return CATALOGUE[AttackType(attack_type)]
