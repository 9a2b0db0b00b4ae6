"""State checks: the system's health, checked during the whole run (gather/checks.py runs them).

`CHECK_PARAMETERS` says which field holds each check type's parameters and whether they are
required; the CRD's CEL rules and the pydantic validator of StateCheck are both made from
it, so that they cannot say different things.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from shakeout.api.attacks import ParameterField, WorkloadRef, parameter_problem, parameter_rules
from shakeout.api.common import DNS_LABEL, Model, cel


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


# The parameter field of each check type: a PodsReady check has defaults for all of its.
CHECK_PARAMETERS: tuple[ParameterField, ...] = (
    ParameterField(StateCheckType.WORKLOAD_READY, "workload_ready", required=True),
    ParameterField(StateCheckType.PODS_READY, "pods_ready", required=False),
    ParameterField(StateCheckType.HTTP_GET, "http_get", required=True),
)


class StateCheck(Model):
    """A check of the system's health, run every intervalSeconds during the whole run."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": parameter_rules(CHECK_PARAMETERS)}
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
        if (problem := parameter_problem(self, self.type, CHECK_PARAMETERS)) is not None:
            raise ValueError(problem)
        return self
