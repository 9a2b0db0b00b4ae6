"""The ExperimentRun kind: one execution of an Experiment, and afterwards its report."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field

from shakeout.api.common import DNS_SUBDOMAIN, Condition, Model, Resource, cel
from shakeout.api.experiment import ExperimentSpec

# Status keeps at most this many target names: a run over 5,000 pods must not push the
# object towards etcd's size limit (Chaos Mesh overflowed it with per-pod records).
MAX_TARGET_NAMES = 20
# A check's series in the run's status: at most this many samples (the report's chart).
MAX_CHECK_SAMPLES = 60
# Node agents a run may involve: node-level attacks on more nodes are refused.
MAX_AGENT_NODES = 500
# Each attack keeps at most this many of its own target names (the report lists targets
# per attack): 16 attacks of 5 names of 253 characters stay near 20 KiB.
MAX_ATTACK_TARGET_NAMES = 5


class Phase(StrEnum):
    """A run's phases in order, CREATED → PREPARED → ATTACKS_STARTED → ATTACKS_STOPPED →
    COMPLETED; CANCELED and FAILED end a run from any phase."""

    CREATED = "CREATED"
    PREPARED = "PREPARED"
    ATTACKS_STARTED = "ATTACKS_STARTED"
    ATTACKS_STOPPED = "ATTACKS_STOPPED"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.CANCELED, Phase.FAILED})


# The order of phases for CEL; the terminal ones share the last rank.
_PHASE_RANK = (
    "{'CREATED': 0, 'PREPARED': 1, 'ATTACKS_STARTED': 2, 'ATTACKS_STOPPED': 3, "
    "'COMPLETED': 4, 'CANCELED': 4, 'FAILED': 4}"
)


class ActionRequired(StrEnum):
    YES = "Yes"
    NO = "No"


class ExperimentRef(Model):
    """The Experiment of the run's own namespace that this run executes."""

    name: str = Field(
        description="Name of the Experiment (in the run's namespace).",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class ExperimentRunSpec(Model):
    """The run request, and afterwards the team's findings."""

    experiment_ref: ExperimentRef = Field(
        description="The Experiment to run. Immutable: a run belongs to one experiment.",
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", "experimentRef is immutable")]
        },
    )
    cancel: bool = Field(
        default=False,
        description=(
            "Set to true to cancel the run: the attacks stop and are rolled back and the "
            "run ends CANCELED. Cannot be set back to false."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!oldSelf || self", "a cancel request cannot be withdrawn")
            ]
        },
    )
    dry_run: bool = Field(
        default=False,
        description=(
            "A dry run: it goes through every phase, runs its state checks, resolves its "
            "targets and journals what each attack would do, and applies nothing (no pod "
            "deleted, no NetworkPolicy, no NodeAttack, no scale, no cordon). Immutable."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", "dryRun is immutable")]
        },
    )
    findings: str | None = Field(
        default=None,
        max_length=16384,
        description="What the team learned from the run; editable after it ends.",
    )
    action_required: ActionRequired | None = Field(
        default=None,
        description="Whether additional action is required to mitigate the incident: Yes or No.",
    )


class TimelineEntry(Model):
    """When the run entered a phase."""

    phase: Phase = Field(description="The phase entered.")
    time: datetime = Field(description="When it was entered.")


class Targets(Model):
    """The pods the blast radius resolved to, bounded in size whatever their number."""

    matched: int = Field(ge=0, description="How many pods matched the selector.")
    selected: int = Field(ge=0, description="How many of them became targets (after the limit).")
    names: list[str] = Field(
        default_factory=list,
        max_length=MAX_TARGET_NAMES,
        description=f"The first {MAX_TARGET_NAMES} target pod names, sorted.",
    )


class AttackState(StrEnum):
    PENDING = "Pending"
    APPLYING = "Applying"
    APPLIED = "Applied"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    COMPLETED = "Completed"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    # A dry run's attack during its window: journaled with what it would do, never applied.
    SIMULATING = "Simulating"
    # A dry run's attack after its window (or the run's end): nothing was applied.
    SIMULATED = "Simulated"


class AttackResult(Model):
    """The outcome of one attack of the run."""

    name: str = Field(description="Name of the attack in the Experiment.")
    type: str = Field(description="Type of the attack.")
    reversible: bool = Field(description="Whether the attack can be rolled back.")
    state: AttackState = Field(description="Where the attack is.")
    targets: int = Field(default=0, ge=0, description="How many targets the attack acted on.")
    previous_replicas: int | None = Field(
        default=None,
        description="ScaleWorkload: the replica count before the attack (the rollback value).",
    )
    nodes: list[str] | None = Field(
        default=None,
        max_length=1000,
        description=(
            "NodeCordon: the nodes it cordons, journaled before any is touched; rollback "
            "uncordons, by name, those that still carry this run's record and that nobody "
            "else changed meanwhile."
        ),
    )
    applied_at: datetime | None = Field(
        default=None,
        description="When it was applied (in a dry run: when it would have been).",
    )
    rolled_back_at: datetime | None = Field(default=None, description="When it was rolled back.")
    ended_at: datetime | None = Field(
        default=None,
        description=(
            "When it ended: rolled back, closed (irreversible) or, in a dry run, its window "
            "closed. Attacks that name it in `after` start from this time."
        ),
    )
    target_names: list[str] = Field(
        default_factory=list,
        max_length=MAX_ATTACK_TARGET_NAMES,
        description=(
            f"The first {MAX_ATTACK_TARGET_NAMES} of this attack's own target pods, sorted "
            "(its own blastRadius, else the Experiment's), resolved when it started."
        ),
    )
    message: str | None = Field(default=None, max_length=1024, description="Details.")


class CheckOutcome(StrEnum):
    """What one probe of a state check found."""

    PASS = "Pass"  # noqa: S105 (not a password) the check held
    FAIL = "Fail"  # the check did not hold: the system did not behave as the hypothesis says
    ERROR = "Error"  # the check could not be evaluated (unreachable, bad query, no data)


class CheckSample(Model):
    """One probe of a state check, for the report's chart of the check over the run."""

    at: datetime = Field(description="When the probe ran.")
    outcome: CheckOutcome = Field(description="Pass, Fail or Error (could not be evaluated).")
    value: float | None = Field(
        default=None,
        description="The number the check compared (its unit in the tally), if it has one.",
    )


class StateCheckTally(Model):
    """How often a state check succeeded, failed and could not be evaluated during the run,
    its current runs of each, and its samples."""

    name: str = Field(description="Name of the check.")
    successes: int = Field(default=0, ge=0, description="Successful probes (Pass).")
    failures: int = Field(
        default=0, ge=0, description="Failed probes (Fail: the check did not hold)."
    )
    errors: int = Field(
        default=0,
        ge=0,
        description="Probes that could not be evaluated (Error: unreachable, refused, bad query).",
    )
    consecutive_successes: int = Field(
        default=0,
        ge=0,
        description="Successes since the last failure (an Error neither counts nor interrupts).",
    )
    consecutive_failures: int = Field(
        default=0,
        ge=0,
        description="Failures since the last success (an Error neither counts nor interrupts).",
    )
    consecutive_errors: int = Field(
        default=0, ge=0, description="Probes in a row, up to the last, that could not be evaluated."
    )
    degraded_at: datetime | None = Field(
        default=None,
        description=(
            "mayDegradeDuringAttacks: when the check first failed between the start of the "
            "attacks and its recovery."
        ),
    )
    recovered_at: datetime | None = Field(
        default=None,
        description=(
            "mayDegradeDuringAttacks: when the check held again after the attacks "
            "(successThreshold successes in a row, the last in the cool-down); from then on "
            "it is judged like any other check."
        ),
    )
    last_message: str | None = Field(
        default=None, max_length=1024, description="What the last probe found."
    )
    last_time: datetime | None = Field(default=None, description="When it last ran.")
    unit: str | None = Field(
        default=None, max_length=32, description="The unit of the samples' values, e.g. ms."
    )
    samples: list[CheckSample] = Field(
        default_factory=list,
        max_length=MAX_CHECK_SAMPLES,
        description=(
            f"The check over the run, at most {MAX_CHECK_SAMPLES} samples: when more were "
            "taken, evenly thinned, the first and the last kept."
        ),
    )


class UserInfo(Model):
    """An authenticated identity, as the API server reported it at admission."""

    username: str = Field(description="User name.")
    groups: list[str] = Field(default_factory=list, max_length=64, description="Groups.")


class ExperimentRunStatus(Model):
    """The run's progress, and afterwards its report."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.phase) || !(oldSelf.phase in "
                    "['COMPLETED', 'CANCELED', 'FAILED']) || self.phase == oldSelf.phase",
                    "a terminal phase is final",
                    fieldPath=".phase",
                ),
                # Whoever writes status, and however writes race, a phase never goes back.
                cel(
                    f"!has(oldSelf.phase) || (has(self.phase) && {_PHASE_RANK}[self.phase] >= "
                    f"{_PHASE_RANK}[oldSelf.phase])",
                    "a phase never goes back",
                    fieldPath=".phase",
                ),
            ]
        }
    )

    dry_run: bool | None = Field(
        default=None,
        description=(
            "The run is a dry run (spec.dryRun, recorded when the operator picked it up): "
            "nothing is applied; each attack is journaled Simulating, then Simulated."
        ),
    )
    phase: Phase | None = Field(
        default=None,
        description=(
            "CREATED, PREPARED, ATTACKS_STARTED, ATTACKS_STOPPED, then COMPLETED; or CANCELED "
            "or FAILED. A phase never goes back and a terminal phase is final."
        ),
    )
    reason: str | None = Field(
        default=None,
        max_length=128,
        description="Why the run is in its phase, e.g. StateCheckFailed or Canceled.",
    )
    message: str | None = Field(default=None, max_length=4096, description="Details of reason.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status is for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Prepared, AttacksStarted, AttacksStopped and the summary Succeeded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    timeline: list[TimelineEntry] = Field(
        default_factory=list, max_length=8, description="When each phase was entered."
    )
    experiment_generation: int | None = Field(
        default=None, description="The Experiment's generation that the run executes."
    )
    experiment: ExperimentSpec | None = Field(
        default=None,
        description=(
            "The Experiment's spec as it was when the run was picked up: the run executes "
            "this copy, so that an edit of the Experiment never changes a run under way."
        ),
    )
    targets: Targets | None = Field(default=None, description="The resolved blast radius.")
    attacks: list[AttackResult] = Field(
        default_factory=list, max_length=16, description="Per-attack results."
    )
    agents: list[str] = Field(
        default_factory=list,
        max_length=MAX_AGENT_NODES,
        description="The nodes whose node agents take part (node-level attacks only).",
    )
    state_checks: list[StateCheckTally] = Field(
        default_factory=list, max_length=8, description="Per-check tallies."
    )
    started_by: UserInfo | None = Field(default=None, description="Who created the run.")
    canceled_by: UserInfo | None = Field(default=None, description="Who canceled the run.")
    started_at: datetime | None = Field(default=None, description="When the run was picked up.")
    finished_at: datetime | None = Field(
        default=None, description="When it reached a terminal phase."
    )


class ExperimentRun(Resource):
    """One execution of an Experiment: creating it is the Run button."""

    KIND: ClassVar[str] = "ExperimentRun"
    PLURAL: ClassVar[str] = "experimentruns"

    spec: ExperimentRunSpec = Field(description="The run request and the findings.")
    status: ExperimentRunStatus | None = Field(
        default=None, description="Progress and report, written by the operator."
    )
