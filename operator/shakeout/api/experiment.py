"""The Experiment kind: the template of a chaos experiment, owned by a team (namespace)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import ConfigDict, Field, model_validator

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
    POD_DELETE = "PodDelete"
    SCALE_WORKLOAD = "ScaleWorkload"


# Whether an attack type can be rolled back; shown in status and reports.
REVERSIBLE: dict[AttackType, bool] = {
    AttackType.POD_DELETE: False,
    AttackType.SCALE_WORKLOAD: True,
}


class WorkloadKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"


class WorkloadRef(Model):
    """A Deployment or StatefulSet in the Experiment's namespace."""

    kind: WorkloadKind = Field(description="Deployment or StatefulSet.")
    name: str = Field(description="Name of the workload.", max_length=253, pattern=DNS_SUBDOMAIN)


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


class Attack(Model):
    """One attack: what happens to the targets, for how long."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'ScaleWorkload' || has(self.scaleWorkload)",
                    "type ScaleWorkload needs scaleWorkload parameters",
                    fieldPath=".scaleWorkload",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.type == 'ScaleWorkload' || !has(self.scaleWorkload)",
                    "scaleWorkload parameters belong to type ScaleWorkload only",
                    fieldPath=".scaleWorkload",
                ),
                cel(
                    "self.type == 'PodDelete' || !has(self.podDelete)",
                    "podDelete parameters belong to type PodDelete only",
                    fieldPath=".podDelete",
                ),
            ]
        }
    )

    name: str = Field(
        description="Name of the attack, unique in the Experiment (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    type: AttackType = Field(description="What the attack does: PodDelete or ScaleWorkload.")
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

    @property
    def reversible(self) -> bool:
        return REVERSIBLE[AttackType(self.type)]

    @model_validator(mode="after")
    def _parameters_match_type(self) -> Attack:
        if self.type == AttackType.SCALE_WORKLOAD and self.scale_workload is None:
            raise ValueError("type ScaleWorkload needs scaleWorkload parameters")
        if self.type != AttackType.SCALE_WORKLOAD and self.scale_workload is not None:
            raise ValueError("scaleWorkload parameters belong to type ScaleWorkload only")
        if self.type != AttackType.POD_DELETE and self.pod_delete is not None:
            raise ValueError("podDelete parameters belong to type PodDelete only")
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
