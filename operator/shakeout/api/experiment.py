"""The Experiment kind: the template of a chaos experiment, owned by a team (namespace)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import ConfigDict, Field, JsonValue, model_validator

from shakeout.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Condition,
    LabelSelector,
    Model,
    Resource,
    cel,
)

MAX_DURATION_SECONDS = 24 * 3600


class TargetLimit(Model):
    """How many of the matching pods become targets: a count, or a percent of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.count) != has(self.percent)",
                    "give exactly one of count or percent",
                )
            ]
        }
    )

    count: int | None = Field(
        default=None, ge=1, le=100000, description="At most this many pods are targeted."
    )
    percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description=(
            "At most this percent (0-100) of the matching pods are targeted, rounded up, "
            "and at least one pod whenever any matches and percent > 0: 10 percent of 15 "
            "pods is 2 pods, 1 percent of 3 pods is 1 pod."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetLimit:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give exactly one of count or percent")
        return self


class BlastRadius(Model):
    """Which pods of the Experiment's namespace the attacks hit."""

    selector: LabelSelector = Field(
        description="Label selector over the pods of the Experiment's namespace; never empty."
    )
    limit: TargetLimit | None = Field(
        default=None,
        description="Caps the number of targets; without it every matching pod is a target.",
    )


class AttackType(StrEnum):
    # API-level: executed by the operator's built-in cluster agent.
    POD_DELETE = "PodDelete"
    SCALE_WORKLOAD = "ScaleWorkload"
    NETWORK_ISOLATION = "NetworkIsolation"
    ENDPOINT_REMOVAL = "EndpointRemoval"
    NODE_CORDON = "NodeCordon"
    # Node-level: executed by the node agent of each target's node.
    CPU_STRESS = "CpuStress"
    MEMORY_STRESS = "MemoryStress"
    NETWORK_BLACKHOLE = "NetworkBlackhole"
    PACKET_LOSS = "PacketLoss"
    BANDWIDTH_LIMIT = "BandwidthLimit"
    NETWORK_DELAY = "NetworkDelay"
    PROCESS_KILL = "ProcessKill"


# Whether an attack type can be rolled back; shown in status and reports.
REVERSIBLE: dict[AttackType, bool] = {
    AttackType.POD_DELETE: False,
    AttackType.SCALE_WORKLOAD: True,
    AttackType.NETWORK_ISOLATION: True,
    AttackType.ENDPOINT_REMOVAL: True,
    AttackType.NODE_CORDON: True,
    AttackType.CPU_STRESS: True,
    AttackType.MEMORY_STRESS: True,
    AttackType.NETWORK_BLACKHOLE: True,
    AttackType.PACKET_LOSS: True,
    AttackType.BANDWIDTH_LIMIT: True,
    AttackType.NETWORK_DELAY: True,
    AttackType.PROCESS_KILL: False,
}

# Attacks that a node agent executes on the node of each target.
NODE_LEVEL: frozenset[AttackType] = frozenset(
    {
        AttackType.CPU_STRESS,
        AttackType.MEMORY_STRESS,
        AttackType.NETWORK_BLACKHOLE,
        AttackType.PACKET_LOSS,
        AttackType.BANDWIDTH_LIMIT,
        AttackType.NETWORK_DELAY,
        AttackType.PROCESS_KILL,
    }
)


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


# The parameter field of each attack type: (field name, required).
PARAMETERS: dict[AttackType, tuple[str, bool]] = {
    AttackType.POD_DELETE: ("pod_delete", False),
    AttackType.SCALE_WORKLOAD: ("scale_workload", True),
    AttackType.NETWORK_ISOLATION: ("network_isolation", False),
    AttackType.CPU_STRESS: ("cpu_stress", False),
    AttackType.MEMORY_STRESS: ("memory_stress", True),
    AttackType.NETWORK_BLACKHOLE: ("network_blackhole", False),
    AttackType.PACKET_LOSS: ("packet_loss", True),
    AttackType.BANDWIDTH_LIMIT: ("bandwidth_limit", True),
    AttackType.NETWORK_DELAY: ("network_delay", True),
    AttackType.PROCESS_KILL: ("process_kill", False),
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _parameter_rules() -> list[JsonValue]:
    """CEL: each type's parameters are given for that type only (and when required)."""
    rules: list[JsonValue] = []
    for kind, (field, required) in PARAMETERS.items():
        key = _camel(field)
        if required:
            rules.append(
                cel(
                    f"(self.type == '{kind}') == has(self.{key})",
                    f"{key} parameters are required for, and only for, type {kind}",
                    fieldPath=f".{key}",
                )
            )
        else:
            rules.append(
                cel(
                    f"self.type == '{kind}' || !has(self.{key})",
                    f"{key} parameters belong to type {kind} only",
                    fieldPath=f".{key}",
                )
            )
    return rules


class Attack(Model):
    """One attack: what happens to the targets, for how long."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _parameter_rules()})

    name: str = Field(
        description="Name of the attack, unique in the Experiment (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    type: AttackType = Field(
        description=(
            "What the attack does. API-level: PodDelete, ScaleWorkload, NetworkIsolation, "
            "EndpointRemoval, NodeCordon. Node-level (node agents): CpuStress, MemoryStress, "
            "NetworkBlackhole, PacketLoss, BandwidthLimit, NetworkDelay, ProcessKill."
        )
    )
    duration_seconds: int = Field(
        default=60,
        ge=1,
        le=MAX_DURATION_SECONDS,
        description="How long the attack runs before it is stopped and rolled back.",
    )
    pod_delete: PodDeleteParameters | None = Field(
        default=None, description="Parameters of a PodDelete attack."
    )
    scale_workload: ScaleWorkloadParameters | None = Field(
        default=None, description="Parameters of a ScaleWorkload attack (required for it)."
    )
    network_isolation: NetworkIsolationParameters | None = Field(
        default=None, description="Parameters of a NetworkIsolation attack."
    )
    cpu_stress: CpuStressParameters | None = Field(
        default=None, description="Parameters of a CpuStress attack."
    )
    memory_stress: MemoryStressParameters | None = Field(
        default=None, description="Parameters of a MemoryStress attack (required for it)."
    )
    network_blackhole: NetworkBlackholeParameters | None = Field(
        default=None, description="Parameters of a NetworkBlackhole attack."
    )
    packet_loss: PacketLossParameters | None = Field(
        default=None, description="Parameters of a PacketLoss attack (required for it)."
    )
    bandwidth_limit: BandwidthLimitParameters | None = Field(
        default=None, description="Parameters of a BandwidthLimit attack (required for it)."
    )
    network_delay: NetworkDelayParameters | None = Field(
        default=None, description="Parameters of a NetworkDelay attack (required for it)."
    )
    process_kill: ProcessKillParameters | None = Field(
        default=None, description="Parameters of a ProcessKill attack."
    )

    @property
    def reversible(self) -> bool:
        return REVERSIBLE[AttackType(self.type)]

    @property
    def node_level(self) -> bool:
        return AttackType(self.type) in NODE_LEVEL

    def parameters(self) -> Model | None:
        """The parameters of this attack's type (None where the type has none or defaults)."""
        entry = PARAMETERS.get(AttackType(self.type))
        return getattr(self, entry[0]) if entry else None

    @model_validator(mode="after")
    def _parameters_match_type(self) -> Attack:
        for kind, (field, required) in PARAMETERS.items():
            given = getattr(self, field) is not None
            key = _camel(field)
            if required and self.type == kind and not given:
                raise ValueError(f"type {kind} needs {key} parameters")
            if given and self.type != kind:
                raise ValueError(f"{key} parameters belong to type {kind} only")
        return self


class StateCheckType(StrEnum):
    WORKLOAD_READY = "WorkloadReady"
    PODS_READY = "PodsReady"
    HTTP_GET = "HttpGet"


class WorkloadReadyCheck(Model):
    """A Deployment or StatefulSet has at least N, or X percent, ready replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.minReady) != has(self.minReadyPercent)",
                    "give exactly one of minReady or minReadyPercent",
                )
            ]
        }
    )

    workload: WorkloadRef = Field(description="The workload whose readiness is checked.")
    min_ready: int | None = Field(
        default=None, ge=0, le=10000, description="At least this many replicas are ready."
    )
    min_ready_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="At least this percent (0-100) of the desired replicas are ready.",
    )


class PodsReadyCheck(Model):
    """The blast radius' pods are ready: at least this percent of them."""

    min_ready_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="At least this percent (0-100) of the blast radius' pods are Ready.",
    )


class HttpGetCheck(Model):
    """An HTTP GET answers with the expected status (and body)."""

    url: str = Field(
        description="The http:// or https:// URL to GET.",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
    )
    expected_status: int = Field(
        default=200, ge=100, le=599, description="The HTTP status that counts as success."
    )
    body_contains: str | None = Field(
        default=None,
        max_length=1024,
        description="If set, the response body must contain this text.",
    )
    timeout_seconds: int = Field(
        default=2, ge=1, le=60, description="A request that takes longer counts as a failure."
    )


class StateCheck(Model):
    """A check of the system's health, run every intervalSeconds during the whole run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(self.type == 'WorkloadReady') == has(self.workloadReady)",
                    "workloadReady parameters are required for, and only for, WorkloadReady",
                    fieldPath=".workloadReady",
                ),
                cel(
                    "(self.type == 'HttpGet') == has(self.httpGet)",
                    "httpGet parameters are required for, and only for, HttpGet",
                    fieldPath=".httpGet",
                ),
                cel(
                    "self.type == 'PodsReady' || !has(self.podsReady)",
                    "podsReady parameters belong to type PodsReady only",
                    fieldPath=".podsReady",
                ),
            ]
        }
    )

    name: str = Field(
        description="Name of the check, unique in the Experiment (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    type: StateCheckType = Field(description="WorkloadReady, PodsReady or HttpGet.")
    interval_seconds: int = Field(default=5, ge=1, le=3600, description="How often the check runs.")
    workload_ready: WorkloadReadyCheck | None = Field(
        default=None, description="Parameters of a WorkloadReady check."
    )
    pods_ready: PodsReadyCheck | None = Field(
        default=None, description="Parameters of a PodsReady check."
    )
    http_get: HttpGetCheck | None = Field(
        default=None, description="Parameters of an HttpGet check."
    )

    @model_validator(mode="after")
    def _parameters_match_type(self) -> StateCheck:
        if (self.type == StateCheckType.WORKLOAD_READY) != (self.workload_ready is not None):
            raise ValueError(
                "workloadReady parameters are required for, and only for, WorkloadReady"
            )
        if (self.type == StateCheckType.HTTP_GET) != (self.http_get is not None):
            raise ValueError("httpGet parameters are required for, and only for, HttpGet")
        if self.type != StateCheckType.PODS_READY and self.pods_ready is not None:
            raise ValueError("podsReady parameters belong to type PodsReady only")
        return self


def schedule_error(cron: str, time_zone: str) -> str | None:
    """Why a schedule is unusable (the API server cannot check cron syntax), or None."""
    if not croniter.is_valid(cron):
        return f"invalid cron expression {cron!r}"
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {time_zone!r}"
    return None


class Schedule(Model):
    """When runs are created on their own, as a cron expression in a time zone."""

    cron: str = Field(
        description="Five-field cron expression (minute hour day-of-month month day-of-week).",
        max_length=128,
        pattern=r"^\s*\S+(\s+\S+){4}\s*$",
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone the cron expression is read in, e.g. Europe/Berlin.",
    )

    @model_validator(mode="after")
    def _usable(self) -> Schedule:
        if (error := schedule_error(self.cron, self.time_zone)) is not None:
            raise ValueError(error)
        return self

    history_limit: int = Field(
        default=10,
        ge=1,
        le=100,
        description="How many finished scheduled runs are kept; older ones are deleted.",
    )


class ExperimentSpec(Model):
    """What the experiment does: targets, attacks, checks and timing."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.attacks.all(a, self.attacks.exists_one(b, b.name == a.name))",
                    "attack names must be unique",
                    fieldPath=".attacks",
                ),
                cel(
                    "self.attacks.filter(a, a.type == 'NetworkIsolation').size() <= 1",
                    "at most one NetworkIsolation attack (its direction can be Both)",
                    fieldPath=".attacks",
                ),
                cel(
                    "!has(self.stateChecks) || "
                    "self.stateChecks.all(c, self.stateChecks.exists_one(d, d.name == c.name))",
                    "state check names must be unique",
                    fieldPath=".stateChecks",
                ),
            ]
        }
    )

    description: str | None = Field(
        default=None, max_length=4096, description="What the experiment tests, for people."
    )
    blast_radius: BlastRadius = Field(description="The pods that the attacks hit.")
    attacks: list[Attack] = Field(
        min_length=1,
        max_length=16,
        description="The attacks, started together when the warm-up ends.",
    )
    state_checks: list[StateCheck] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Checks of the system's health. The run starts its attacks after each check "
            "reported at least one success, and fails as soon as one reports a failure."
        ),
    )
    warm_up_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds between PREPARED and the start of the attacks.",
    )
    cool_down_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds after the attacks stopped during which the checks still run.",
    )
    preparation_timeout_seconds: int = Field(
        default=120,
        ge=1,
        le=3600,
        description=(
            "A run that is not PREPARED after this long (agents not connected, no check "
            "success) fails with reason PreparationTimedOut."
        ),
    )
    agent_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description=(
            "A run with node-level attacks waits in CREATED at most this long for the node "
            "agents of its targets' nodes to connect, then fails with reason "
            "AgentsNotConnected."
        ),
    )
    schedule: Schedule | None = Field(
        default=None, description="Optional cron schedule that creates runs on its own."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentSpec:
        for what, names in (
            ("attack", [a.name for a in self.attacks]),
            ("state check", [c.name for c in self.state_checks]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique")
        if sum(a.type == AttackType.NETWORK_ISOLATION for a in self.attacks) > 1:
            raise ValueError("at most one NetworkIsolation attack (its direction can be Both)")
        return self


class LastRun(Model):
    """The most recent run of the experiment."""

    name: str = Field(description="Name of the ExperimentRun.")
    phase: str | None = Field(default=None, description="Its phase when last seen.")
    created_at: datetime | None = Field(default=None, description="When it was created.")


class AttackSummary(Model):
    """What an attack of the experiment is, as the operator understands it."""

    name: str = Field(description="Name of the attack.")
    type: str = Field(description="Type of the attack.")
    reversible: bool = Field(description="Whether the attack can be rolled back.")


class ExperimentStatus(Model):
    """What the operator observed about the experiment."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status is for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Conditions of the experiment, e.g. Valid.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    attacks: list[AttackSummary] = Field(
        default_factory=list,
        max_length=16,
        description="Each attack with whether it can be rolled back.",
    )
    irreversible_attacks: int | None = Field(
        default=None, ge=0, description="How many attacks cannot be rolled back."
    )
    last_run: LastRun | None = Field(default=None, description="The most recent run.")
    last_schedule_time: datetime | None = Field(
        default=None, description="When the schedule last fell due."
    )


class Experiment(Resource):
    """A chaos experiment of a team: blast radius, attacks, state checks, timing."""

    KIND: ClassVar[str] = "Experiment"
    PLURAL: ClassVar[str] = "experiments"

    spec: ExperimentSpec = Field(description="What the experiment does.")
    status: ExperimentStatus | None = Field(default=None, description="What the operator observed.")
