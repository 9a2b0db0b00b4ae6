"""State checks: the system's health, checked during the whole run (gather/checks.py runs them).

`CHECK_PARAMETERS` says which field holds each check type's parameters and whether they are
required; the CRD's CEL rules and the pydantic validator of StateCheck are both made from
it, so that they cannot say different things.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from shakeout.api.attacks import ParameterField, WorkloadRef, parameter_problem, parameter_rules
from shakeout.api.common import DNS_LABEL, DNS_SUBDOMAIN, Model, cel


class StateCheckType(StrEnum):
    WORKLOAD_READY = "WorkloadReady"
    PODS_READY = "PodsReady"
    HTTP_GET = "HttpGet"
    PROMETHEUS = "Prometheus"
    ALERT = "Alert"


class HttpScheme(StrEnum):
    HTTP = "http"
    HTTPS = "https"


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


class SecretKeyRef(Model):
    """A key of a Secret in the run's namespace."""

    name: str = Field(
        description="Name of the Secret, in the run's namespace.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(
        description="The key in the Secret's data.",
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class HeaderValueSource(Model):
    """Where a header's value comes from: never inline text in the spec."""

    secret_key_ref: SecretKeyRef = Field(
        description="The value is this key of a Secret in the run's namespace, read by the "
        "operator when the check runs."
    )


class HttpHeader(Model):
    """A request header whose value (a credential) is read from a Secret."""

    name: str = Field(
        description="The header's name, e.g. Authorization.",
        max_length=128,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
    )
    value_from: HeaderValueSource = Field(description="Where the header's value is read from.")


class ServiceTarget(Model):
    """A Service of the run's own namespace, by name: the operator resolves it to its
    ClusterIP through the API."""

    name: str = Field(
        description="Name of the Service, in the run's namespace.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    port: int = Field(ge=1, le=65535, description="A port the Service declares.")
    path: str = Field(
        default="/",
        max_length=1024,
        pattern=r"^/[^\s#]*$",
        description="The path (and query) to GET, starting with /.",
    )
    scheme: HttpScheme = Field(default=HttpScheme.HTTP, description="http or https.")


# URLs the API server refuses whatever the operator's allow-list says: credentials in the
# URL, and link-local (cloud metadata) address literals.
URL_USERINFO = r"^https?://[^/?#]*@"
URL_LINK_LOCAL = r"^https?://(169[.]254[.]|\[([fF][eE][89abAB]|::[fF]{4}:169[.]254[.]))"


def _cel_string(regex: str) -> str:
    """A regex as the body of a single-quoted CEL string literal."""
    return regex.replace("\\", "\\\\").replace("'", "\\'")


URL_CREDENTIALS = (
    "httpGet.url: credentials in the URL are refused; "
    "give them as headers with valueFrom.secretKeyRef"
)
URL_METADATA = "httpGet.url: link-local addresses (cloud metadata) are refused"
ONE_TARGET = "httpGet: give exactly one of service or url"


class HttpGetCheck(Model):
    """An HTTP GET answers with the expected status (and body).

    The target is a Service of the run's own namespace (service), or a url whose host is a
    Service of the run's namespace (NAME.NAMESPACE.svc[.cluster.local]) or a host that a
    cluster admin allows (operator flag --allow-check-host). Everything else is refused.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.service) != has(self.url)", ONE_TARGET),
                cel(
                    "!has(self.url) || !self.url.matches('" + _cel_string(URL_USERINFO) + "')",
                    URL_CREDENTIALS,
                ),
                cel(
                    "!has(self.url) || !self.url.matches('" + _cel_string(URL_LINK_LOCAL) + "')",
                    URL_METADATA,
                ),
            ]
        }
    )

    service: ServiceTarget | None = Field(
        default=None, description="A Service of the run's own namespace to GET."
    )
    url: str | None = Field(
        default=None,
        description="The http:// or https:// URL to GET: its host must be a Service of the "
        "run's namespace (NAME.NAMESPACE.svc[.cluster.local]) or a host an admin allows "
        "(--allow-check-host). No credentials in it: use headers.",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
    )
    headers: list[HttpHeader] = Field(
        default_factory=list,
        max_length=8,
        description="Request headers, each read from a Secret of the run's namespace.",
    )
    expected_status: int = Field(
        default=200, ge=100, le=599, description="The HTTP status that counts as success."
    )
    body_contains: str | None = Field(
        default=None,
        max_length=1024,
        description="If set, the first 64 KiB of the response body must contain this text.",
    )
    timeout_seconds: int = Field(
        default=2, ge=1, le=60, description="A request that takes longer counts as a failure."
    )

    @model_validator(mode="after")
    def _one_safe_target(self) -> HttpGetCheck:
        if (self.service is None) == (self.url is None):
            raise ValueError(ONE_TARGET)
        if self.url is not None:
            if re.match(URL_USERINFO, self.url):
                raise ValueError(URL_CREDENTIALS)
            if re.match(URL_LINK_LOCAL, self.url):
                raise ValueError(URL_METADATA)
        return self


class PrometheusService(Model):
    """A Prometheus server as a Service, in a namespace the cluster admin allows
    (ChaosSwitch spec.metricChecks.serviceNamespaces): the operator resolves it to its
    ClusterIP through the API."""

    namespace: str = Field(
        description="Namespace of the Service: one the admin allows.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    name: str = Field(description="Name of the Service.", max_length=63, pattern=DNS_LABEL)
    port: int = Field(default=9090, ge=1, le=65535, description="A port the Service declares.")
    scheme: HttpScheme = Field(default=HttpScheme.HTTP, description="http or https.")
    path_prefix: str = Field(
        default="",
        max_length=256,
        pattern=r"^(/[-._a-zA-Z0-9]+)*$",
        description="The server's route prefix (--web.route-prefix), e.g. /prometheus; "
        "empty: none.",
    )


class Comparison(StrEnum):
    LESS_THAN = "LessThan"
    LESS_OR_EQUAL = "LessOrEqual"
    GREATER_THAN = "GreaterThan"
    GREATER_OR_EQUAL = "GreaterOrEqual"
    EQUAL = "Equal"
    NOT_EQUAL = "NotEqual"


# What a threshold may be: finite, and within what a float64 holds exactly enough to compare.
THRESHOLD_BOUND = 1e15


class PrometheusCheck(Model):
    """A PromQL expression whose value must satisfy a comparison.

    The query is an instant query at the time of the probe; every series of the result
    must satisfy `<value> <comparison> <threshold>`. A result with no series could not
    be evaluated (Error): write `... or vector(0)` when absence means zero.
    """

    query: str = Field(
        description="The PromQL expression: an instant vector or a scalar.",
        min_length=1,
        max_length=4096,
    )
    comparison: Comparison = Field(
        description="What must hold between each value of the result and the threshold: "
        "LessThan, LessOrEqual, GreaterThan, GreaterOrEqual, Equal or NotEqual."
    )
    threshold: float = Field(
        ge=-THRESHOLD_BOUND,
        le=THRESHOLD_BOUND,
        allow_inf_nan=False,
        description="The number each value is compared with.",
    )
    service: PrometheusService | None = Field(
        default=None,
        description="The Prometheus to ask, as a Service in a namespace the admin allows; "
        "unset: the cluster's Prometheus (ChaosSwitch spec.metricChecks.prometheusUrl).",
    )
    timeout_seconds: int = Field(
        default=5, ge=1, le=60, description="A query that takes longer could not be evaluated."
    )


LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$"
BAD_LABEL_NAME = "alert.matchLabels: a label name is letters, digits and _, not first a digit"


class AlertCheck(Model):
    """No alert whose labels include all of matchLabels is firing (pending ones do not
    count), as the Prometheus' /api/v1/alerts lists them."""

    # Label names are checked by CEL: structural schemas have no patternProperties.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.matchLabels.all(k, size(k) <= 128 && k.matches('"
                    + _cel_string(LABEL_NAME)
                    + "'))",
                    BAD_LABEL_NAME,
                )
            ]
        }
    )

    match_labels: dict[str, Annotated[str, StringConstraints(max_length=1024)]] = Field(
        min_length=1,
        max_length=16,
        description="Labels an alert must all carry (exact values) to count, e.g. "
        "{alertname: HighErrorRate}. At least one: a catch-all would also count the "
        "always-firing Watchdog alerts many setups have.",
    )
    service: PrometheusService | None = Field(
        default=None,
        description="The Prometheus to ask, as a Service in a namespace the admin allows; "
        "unset: the cluster's Prometheus (ChaosSwitch spec.metricChecks.prometheusUrl).",
    )
    timeout_seconds: int = Field(
        default=5, ge=1, le=60, description="A request that takes longer could not be evaluated."
    )

    @model_validator(mode="after")
    def _label_names(self) -> AlertCheck:
        if not all(re.match(LABEL_NAME, k) for k in self.match_labels):
            raise ValueError(BAD_LABEL_NAME)
        return self


# The parameter field of each check type: a PodsReady check has defaults for all of its.
CHECK_PARAMETERS: tuple[ParameterField, ...] = (
    ParameterField(StateCheckType.WORKLOAD_READY, "workload_ready", required=True),
    ParameterField(StateCheckType.PODS_READY, "pods_ready", required=False),
    ParameterField(StateCheckType.HTTP_GET, "http_get", required=True),
    ParameterField(StateCheckType.PROMETHEUS, "prometheus", required=True),
    ParameterField(StateCheckType.ALERT, "alert", required=True),
)


class CheckPhase(StrEnum):
    """When a state check applies, in the run's terms."""

    # CREATED and PREPARED (the warm-up): its successes prepare the run.
    BEFORE_ATTACKS = "BeforeAttacks"
    # ATTACKS_STARTED: from the start of the attacks until every one has stopped.
    DURING_ATTACKS = "DuringAttacks"
    # ATTACKS_STOPPED: the cool-down.
    AFTER_ATTACKS = "AfterAttacks"
    # All of the above.
    THROUGHOUT = "Throughout"


THROUGHOUT_ALONE = "phases: Throughout covers every phase; give it alone"
DEGRADE_NEEDS_PHASES = (
    "mayDegradeDuringAttacks: the check must apply during and after the attacks "
    "(phases DuringAttacks and AfterAttacks, or Throughout): it recovers in the cool-down"
)


class StateCheck(Model):
    """A check of the system's health, run every intervalSeconds in the phases it applies to."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *parameter_rules(CHECK_PARAMETERS),
                cel(
                    "!has(self.mayDegradeDuringAttacks) || !self.mayDegradeDuringAttacks || "
                    "!has(self.phases) || 'Throughout' in self.phases || "
                    "('DuringAttacks' in self.phases && 'AfterAttacks' in self.phases)",
                    DEGRADE_NEEDS_PHASES,
                    fieldPath=".mayDegradeDuringAttacks",
                ),
            ]
        }
    )

    name: str = Field(
        description="Name of the check, unique in the Experiment (a DNS label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    type: StateCheckType = Field(
        description="WorkloadReady, PodsReady, HttpGet, Prometheus or Alert."
    )
    interval_seconds: int = Field(default=5, ge=1, le=3600, description="How often the check runs.")
    phases: list[CheckPhase] = Field(
        default=[CheckPhase.THROUGHOUT],
        min_length=1,
        max_length=3,
        description=(
            "When the check applies: BeforeAttacks (CREATED and the warm-up; only these "
            "checks prepare the run), DuringAttacks, AfterAttacks (the cool-down), or "
            "Throughout (the default). Outside them it is not run and not judged."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                cel("!('Throughout' in self) || size(self) == 1", THROUGHOUT_ALONE)
            ],
        },
    )
    failure_threshold: int = Field(
        default=1,
        ge=1,
        le=100,
        description=(
            "This many failures in a row fail the run (StateCheckFailed: the hypothesis was "
            "refuted), and this many probes in a row that could not be evaluated end it too "
            "(StateCheckNotEvaluated). A probe that could not be evaluated neither counts as "
            "nor interrupts a run of failures or successes. Before PREPARED failures are "
            "waited out."
        ),
    )
    success_threshold: int = Field(
        default=1,
        ge=1,
        le=100,
        description=(
            "This many successes in a row make the check hold: to prepare the run (checks "
            "that apply before the attacks), and to recover after the attacks "
            "(mayDegradeDuringAttacks)."
        ),
    )
    may_degrade_during_attacks: bool = Field(
        default=False,
        description=(
            "The check may fail from the start of the attacks until it holds again "
            "(successThreshold successes in a row, the last in the cool-down); if it failed "
            "and does not hold again before coolDownSeconds are over, the run fails "
            "(StateCheckFailed). Needs the check to apply during and after the attacks."
        ),
    )
    workload_ready: WorkloadReadyCheck | None = Field(
        default=None, description="Parameters of a WorkloadReady check."
    )
    pods_ready: PodsReadyCheck | None = Field(
        default=None, description="Parameters of a PodsReady check."
    )
    http_get: HttpGetCheck | None = Field(
        default=None, description="Parameters of an HttpGet check."
    )
    prometheus: PrometheusCheck | None = Field(
        default=None, description="Parameters of a Prometheus (PromQL) check."
    )
    alert: AlertCheck | None = Field(default=None, description="Parameters of an Alert check.")

    @model_validator(mode="after")
    def _parameters_match_type(self) -> StateCheck:
        if (problem := parameter_problem(self, self.type, CHECK_PARAMETERS)) is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _phases_fit(self) -> StateCheck:
        phases = set(self.phases)
        if len(phases) != len(self.phases):
            raise ValueError("phases: each phase once")
        if CheckPhase.THROUGHOUT in phases and len(phases) > 1:
            raise ValueError(THROUGHOUT_ALONE)
        if self.may_degrade_during_attacks and not (
            {CheckPhase.DURING_ATTACKS, CheckPhase.AFTER_ATTACKS} <= phases
            or CheckPhase.THROUGHOUT in phases
        ):
            raise ValueError(DEGRADE_NEEDS_PHASES)
        return self
