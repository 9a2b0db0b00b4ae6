"""The Experiment kind: the template of a chaos experiment, owned by a team (namespace)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, get_args

from croniter import CroniterBadDateError, croniter
from pydantic import ConfigDict, Field, StringConstraints, model_validator

from shakeout.api.attacks import (
    CATALOGUE,
    PARAMETER_FIELDS,
    AttackDescriptor,
    AttackType,
    BandwidthLimitParameters,
    CpuStressParameters,
    Level,
    MemoryStressParameters,
    NetworkBlackholeParameters,
    NetworkDelayParameters,
    NetworkIsolationParameters,
    PacketLossParameters,
    PodDeleteParameters,
    ProcessKillParameters,
    ScaleWorkloadParameters,
    Scope,
    parameter_problem,
    parameter_rules,
)
from shakeout.api.checks import StateCheck
from shakeout.api.common import DNS_LABEL, Condition, LabelSelector, Model, Resource, cel
from shakeout.api.windows import (
    TimeWindow,
    require_unique_names,
    time_zone_error,
    unique_window_names,
)

MAX_DURATION_SECONDS = 24 * 3600
AFTER_EARLIER_ONLY = (
    "attacks[].after: may name only attacks listed before it in attacks (no unknown "
    "names, no cycles)"
)
# A check that may degrade during the attacks must be probed in the cool-down to recover.
DEGRADE_NEEDS_COOL_DOWN = (
    "coolDownSeconds: a state check with mayDegradeDuringAttacks recovers in the cool-down: "
    "give coolDownSeconds of at least its intervalSeconds"
)


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


def _parameters(kind: AttackType) -> Any:
    """The Attack field of a type's parameters, described from the catalogue."""
    article = "an" if kind[0] in "AEIOU" else "a"
    required = " (required for it)" if CATALOGUE[kind].parameters_required else ""
    return Field(default=None, description=f"Parameters of {article} {kind} attack{required}.")


def _type_description() -> str:
    def names(level: Level) -> str:
        return ", ".join(t for t, d in CATALOGUE.items() if d.level is level)

    return (
        f"What the attack does. API-level: {names(Level.API)}. "
        f"Node-level (node agents): {names(Level.NODE)}."
    )


# The parameters of each attack type sit in a field of their own, named and typed by the
# type's descriptor (api/attacks.py): the CEL rules of the CRD and Attack's validator are
# both made from the catalogue, and the fields are checked against it on import. (A model's
# docstring is its description in the CRD, hence a comment.)
AttackName = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]


class Attack(Model):
    """One attack: what happens to the targets, for how long, and when it starts."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": parameter_rules(PARAMETER_FIELDS)}
    )

    name: str = Field(
        description="Name of the attack, unique in the Experiment (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    type: AttackType = Field(description=_type_description())
    duration_seconds: int = Field(
        default=60,
        ge=1,
        le=MAX_DURATION_SECONDS,
        description="How long the attack runs before it is stopped and rolled back.",
    )
    start_after_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description=(
            "Seconds the attack waits before it starts: counted from ATTACKS_STARTED, or, "
            "with `after`, from when the last of those attacks ended. 0 with no `after`: "
            "it starts with the attacks (all such attacks start together)."
        ),
    )
    after: list[AttackName] = Field(
        default_factory=list,
        max_length=15,
        description=(
            "Names of attacks listed before this one in `attacks`: this attack starts once "
            "each of them has ended (rolled back or closed). Only earlier attacks may be "
            "named, so the steps read top to bottom and cannot form a cycle."
        ),
    )
    blast_radius: BlastRadius | None = Field(
        default=None,
        description=(
            "This attack's own targets: a selector and limit over the pods of the run's "
            "namespace. Unset: the Experiment's blastRadius. The cluster's caps apply to "
            "the union of every attack's targets."
        ),
    )
    pod_delete: PodDeleteParameters | None = _parameters(AttackType.POD_DELETE)
    scale_workload: ScaleWorkloadParameters | None = _parameters(AttackType.SCALE_WORKLOAD)
    network_isolation: NetworkIsolationParameters | None = _parameters(AttackType.NETWORK_ISOLATION)
    cpu_stress: CpuStressParameters | None = _parameters(AttackType.CPU_STRESS)
    memory_stress: MemoryStressParameters | None = _parameters(AttackType.MEMORY_STRESS)
    network_blackhole: NetworkBlackholeParameters | None = _parameters(AttackType.NETWORK_BLACKHOLE)
    packet_loss: PacketLossParameters | None = _parameters(AttackType.PACKET_LOSS)
    bandwidth_limit: BandwidthLimitParameters | None = _parameters(AttackType.BANDWIDTH_LIMIT)
    network_delay: NetworkDelayParameters | None = _parameters(AttackType.NETWORK_DELAY)
    process_kill: ProcessKillParameters | None = _parameters(AttackType.PROCESS_KILL)

    @property
    def descriptor(self) -> AttackDescriptor:
        return CATALOGUE[AttackType(self.type)]

    @property
    def reversible(self) -> bool:
        """The type's, but a scale that accepts data loss cannot be undone."""
        accepts_loss = self.scale_workload is not None and self.scale_workload.accept_data_loss
        return self.descriptor.reversible and not accepts_loss

    @property
    def cluster_scoped(self) -> bool:
        """Whether its effect reaches beyond the run's namespace (see api/attacks.py Scope)."""
        return self.descriptor.scope is Scope.CLUSTER

    @property
    def node_level(self) -> bool:
        return self.descriptor.level is Level.NODE

    def parameters(self) -> Model | None:
        """The parameters of this attack's type (None where the type has none or defaults)."""
        field = self.descriptor.parameters_field
        parameters: Model | None = getattr(self, field) if field else None
        return parameters

    @model_validator(mode="after")
    def _parameters_match_type(self) -> Attack:
        if (problem := parameter_problem(self, self.type, PARAMETER_FIELDS)) is not None:
            raise ValueError(problem)
        return self


def _check_parameter_fields() -> None:
    """Each descriptor's parameters_field is an Attack field of its parameters_model (or
    None), and every parameter field of Attack belongs to a descriptor: a type added to the
    catalogue without its field, or a field without its descriptor, fails on import."""
    fixed = {"name", "type", "duration_seconds", "start_after_seconds", "after", "blast_radius"}
    declared = {
        d.parameters_field: {d.parameters_model, type(None)}
        for d in CATALOGUE.values()
        if d.parameters_field is not None
    }
    fields = {
        name: set(get_args(f.annotation))
        for name, f in Attack.model_fields.items()
        if name not in fixed
    }
    if fields != declared:
        raise TypeError(f"Attack's parameter fields {fields} differ from the catalogue's")


_check_parameter_fields()


def schedule_error(cron: str, time_zone: str) -> str | None:
    """Why a schedule is unusable (the API server cannot check cron syntax), or None."""
    if not croniter.is_valid(cron):
        return f"invalid cron expression {cron!r}"
    if (error := time_zone_error(time_zone)) is not None:
        return error
    # Valid syntax that never falls due (`0 0 31 2 *`: February 31st) would make every
    # look at the schedule fail: refused here instead.
    try:
        croniter(cron, _CRON_BASE).get_next(datetime)
    except CroniterBadDateError:
        return f"cron expression {cron!r} never falls due"
    return None


_CRON_BASE = datetime(2000, 1, 1)


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
    max_wait_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description=(
            "A scheduled run that finds another run holding what it needs (the cluster's "
            "or its namespace's turn, or one of its pods, nodes or workloads) waits for it "
            "up to this long, then is recorded FAILED with the reason. 0: it fails at once."
        ),
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
                    "self.attacks.all(i, a, !has(a.after) || a.after.all(n, "
                    "self.attacks.exists(j, b, j < i && b.name == n)))",
                    AFTER_EARLIER_ONLY,
                    fieldPath=".attacks",
                ),
                unique_window_names("allowedWindows"),
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
                cel(
                    "!has(self.stateChecks) || self.stateChecks.all(c, "
                    "!has(c.mayDegradeDuringAttacks) || !c.mayDegradeDuringAttacks || "
                    "(has(self.coolDownSeconds) && has(c.intervalSeconds) && "
                    "self.coolDownSeconds >= c.intervalSeconds))",
                    DEGRADE_NEEDS_COOL_DOWN,
                    fieldPath=".coolDownSeconds",
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
        description=(
            "The attacks. Each starts when the warm-up ends, unless it sets "
            "startAfterSeconds or after (attack steps); ATTACKS_STOPPED is entered when the "
            "last one has ended."
        ),
    )
    state_checks: list[StateCheck] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Checks of the system's health. The run starts its attacks once each check that "
            "applies before them holds (successThreshold successes in a row), and fails when "
            "one fails failureThreshold times in a row (StateCheckFailed) or cannot be "
            "evaluated that many times in a row (StateCheckNotEvaluated)."
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
            "A run that is not PREPARED after this long (agents not connected, a check that "
            "does not hold) fails with reason PreparationTimedOut, or StateCheckNotEvaluated "
            "when every check it waited for could not be evaluated."
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
    allowed_windows: list[TimeWindow] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "When runs of this Experiment may execute: a run must start inside one of "
            "these windows (a manual run outside them is refused, a scheduled one is "
            "recorded FAILED OutsideWindow). Empty: any time outside the cluster's "
            "blackout windows."
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentSpec:
        for what, names in (
            ("attack", [a.name for a in self.attacks]),
            ("state check", [c.name for c in self.state_checks]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique")
        names = [a.name for a in self.attacks]
        for i, attack in enumerate(self.attacks):
            if any(n not in names[:i] for n in attack.after):
                raise ValueError(AFTER_EARLIER_ONLY + f": attack {attack.name}")
        require_unique_names(self.allowed_windows, "allowedWindows")
        if sum(a.type == AttackType.NETWORK_ISOLATION for a in self.attacks) > 1:
            raise ValueError("at most one NetworkIsolation attack (its direction can be Both)")
        if any(
            c.may_degrade_during_attacks and self.cool_down_seconds < c.interval_seconds
            for c in self.state_checks
        ):
            raise ValueError(DEGRADE_NEEDS_COOL_DOWN)
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


# The preview keeps at most this many names of each kind, whatever the cluster's size.
MAX_PREVIEW_NAMES = 50


class PreviewPod(Model):
    """A pod a run would take its targets from, and its node."""

    name: str = Field(description="Name of the pod.")
    node: str | None = Field(default=None, description="Its node.")


class PreviewAgent(Model):
    """The node agent of a node that a run's node-level attacks would involve."""

    node: str = Field(description="The node.")
    connected: bool = Field(description="Whether its agent holds a live Lease now.")
    problem: str | None = Field(
        default=None,
        max_length=1024,
        description="Why it could not do the attacks (not connected, attack unknown...).",
    )


class ExperimentPreview(Model):
    """What a run created now would touch, and whether the rails would let it in.

    Computed by the operator with the functions a run's own checks use (the precondition
    chain of engine/preconditions.py over the facts gathered by gather/facts.py), so that
    it never disagrees with a run made at the same moment. Refreshed every
    --preview-interval seconds, when the spec changes, and on request (the annotation
    shakeout.dev/preview-requested, which kubectl shakeout preview sets).
    """

    time: datetime = Field(description="When the preview was computed.")
    observed_generation: int | None = Field(
        default=None, description="The Experiment's .metadata.generation it was computed for."
    )
    request: str | None = Field(
        default=None,
        max_length=64,
        description="The value of the annotation shakeout.dev/preview-requested it answers.",
    )
    allowed: bool = Field(
        description=(
            "Whether the rails would admit a run created now: the switch, the namespace "
            "rails, the caps, the Experiment's limits and the agents (not the lock: see "
            "the switch's status.activeRun)."
        )
    )
    reason: str | None = Field(
        default=None, max_length=128, description="The refusal's reason, e.g. OverTargetCap."
    )
    message: str = Field(max_length=4096, description="The verdict, for people.")
    matched: int = Field(ge=0, description="Pods that match the selector and can be attacked.")
    selected: int = Field(
        ge=0, description="How many of them a run would target (after spec.blastRadius.limit)."
    )
    pods: list[PreviewPod] = Field(
        default_factory=list,
        max_length=MAX_PREVIEW_NAMES,
        description=f"The first {MAX_PREVIEW_NAMES} matching pods by name, with their nodes.",
    )
    nodes: list[str] = Field(
        default_factory=list,
        max_length=MAX_PREVIEW_NAMES,
        description=f"The first {MAX_PREVIEW_NAMES} nodes of the matching pods.",
    )
    node_count: int = Field(default=0, ge=0, description="How many nodes the matching pods use.")
    agents: list[PreviewAgent] = Field(
        default_factory=list,
        max_length=MAX_PREVIEW_NAMES,
        description="The node agents that node-level attacks would involve (first ones).",
    )
    cordon_nodes: list[str] = Field(
        default_factory=list,
        max_length=MAX_PREVIEW_NAMES,
        description="The nodes a NodeCordon would cordon (first ones).",
    )
    irreversible_attacks: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="The attacks that cannot be rolled back, as NAME (Type).",
    )


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
    attack_types: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "The attack types of the experiment, each once, comma-separated in the order of "
            "the attacks (the Attacks column of kubectl get experiments)."
        ),
    )
    irreversible_attacks: int | None = Field(
        default=None, ge=0, description="How many attacks cannot be rolled back."
    )
    last_run: LastRun | None = Field(default=None, description="The most recent run.")
    preview: ExperimentPreview | None = Field(
        default=None,
        description=(
            "What a run created now would touch and whether the rails would allow it "
            "(kubectl shakeout preview)."
        ),
    )
    last_schedule_time: datetime | None = Field(
        default=None, description="When the schedule last fell due."
    )


class Experiment(Resource):
    """A chaos experiment of a team: blast radius, attacks, state checks, timing."""

    KIND: ClassVar[str] = "Experiment"
    PLURAL: ClassVar[str] = "experiments"

    spec: ExperimentSpec = Field(description="What the experiment does.")
    status: ExperimentStatus | None = Field(default=None, description="What the operator observed.")
