"""The ChaosSwitch kind: the one cluster-wide Stop All / Continue switch, named default."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, StringConstraints, ValidationError, model_validator

from shakeout.api.common import DNS_LABEL, Condition, Model, Resource, cel
from shakeout.api.labels import CHANGED_AT, CHANGED_BY, CHANGED_GENERATION
from shakeout.api.windows import TimeWindow, require_unique_names, unique_window_names

SWITCH_NAME = "default"

# Who a change is recorded as when no webhook stamped it (webhooks deleted or down).
UNKNOWN_CHANGER = "unknown (no webhook)"
HISTORY_LENGTH = 20


PROTECTED_LABEL = "shakeout.dev/protected"
OPT_IN_LABEL = "shakeout.dev/chaos"


class Concurrency(StrEnum):
    """How many runs may execute at once."""

    CLUSTER = "Cluster"  # one run in the whole cluster (the default)
    NAMESPACE = "Namespace"  # one run per namespace


class NamespaceMode(StrEnum):
    OPT_OUT = "OptOut"
    OPT_IN = "OptIn"


NamespaceName = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]

# How many nodes a run may cordon when the admin set no caps.maxNodes: one (a safe default).
DEFAULT_MAX_NODES = 1

# Labels that make a node a control-plane node (the current one, and the one before 1.24).
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


class ClusterScopedAttacks(Model):
    """Who may run the attacks whose effect reaches beyond the run's namespace (those of
    scope Cluster in the catalogue: NodeCordon), and on what."""

    namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "The namespaces whose runs may use attacks of scope Cluster (NodeCordon); "
            "a run of any other namespace that has one is refused. Empty or unset: none."
        ),
    )
    control_plane_nodes: bool = Field(
        default=False,
        description=(
            "Whether such attacks may affect control-plane nodes (labelled "
            + " or ".join(CONTROL_PLANE_LABELS)
            + "); false (the default): those nodes are never touched."
        ),
    )


class TargetCaps(Model):
    """Cluster-wide caps on the number of targets of any run."""

    max_targets: int | None = Field(
        default=None,
        ge=1,
        le=1000000,
        description=(
            "A run may target at most this many pods; a ScaleWorkload may take at most "
            "this many replicas away."
        ),
    )
    max_percent: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "A run may target at most this percent (1-100) of the pods its selector "
            "matched, and a ScaleWorkload take away at most this percent of the workload's "
            "replicas, rounded down but never below one pod."
        ),
    )
    max_nodes: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "A run may cordon at most this many nodes (NodeCordon, counted after leaving "
            f"out the nodes it may not touch); unset: {DEFAULT_MAX_NODES}."
        ),
    )


# A cluster-wide Prometheus URL: http(s), a host, an optional port and path prefix; no
# credentials, query or fragment. Link-local (cloud metadata) hosts are refused besides.
PROMETHEUS_URL = r"^https?://[-.a-zA-Z0-9]+(:[0-9]{1,5})?(/[-._a-zA-Z0-9]+)*/?$"
PROMETHEUS_URL_LINK_LOCAL = r"^https?://169[.]254[.]"
LINK_LOCAL_REFUSED = "metricChecks.prometheusUrl: link-local addresses are refused"


class MetricChecks(Model):
    """Which Prometheus servers the Prometheus and Alert state checks may ask: the admin's
    choice, never a team's (a check names a server only within what is allowed here)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.prometheusUrl) || !self.prometheusUrl.matches('"
                    + PROMETHEUS_URL_LINK_LOCAL.replace("\\", "\\\\")
                    + "')",
                    LINK_LOCAL_REFUSED,
                )
            ]
        }
    )

    prometheus_url: str | None = Field(
        default=None,
        max_length=512,
        pattern=PROMETHEUS_URL,
        description=(
            "The cluster's Prometheus, for checks that name no Service: "
            "http(s)://HOST[:PORT][/PREFIX], no credentials (e.g. "
            "http://prometheus.monitoring.svc:9090). Unset: such checks cannot be evaluated."
        ),
    )
    service_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "The namespaces whose Services a check may name as its Prometheus "
            "(service.namespace); empty: none, only prometheusUrl."
        ),
    )

    @model_validator(mode="after")
    def _no_metadata_host(self) -> MetricChecks:
        if self.prometheus_url is not None and re.match(
            PROMETHEUS_URL_LINK_LOCAL, self.prometheus_url
        ):
            raise ValueError(LINK_LOCAL_REFUSED)
        return self


class ChaosSwitchSpec(Model):
    """Whether experimenting is enabled, and the cluster-wide safety rails."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [unique_window_names("blackoutWindows")]}
    )

    enabled: bool = Field(
        description=(
            "true: runs may execute (Continue). false: every running run is canceled with "
            "rollback and no manual or scheduled run executes (Stop All)."
        )
    )
    namespace_mode: NamespaceMode = Field(
        default=NamespaceMode.OPT_OUT,
        description=(
            "OptOut: every namespace may be targeted except protected ones (kube-system, "
            "kube-public, kube-node-lease, the operator's own, and those labelled "
            f"{PROTECTED_LABEL}=true). OptIn: additionally, only namespaces labelled "
            f"{OPT_IN_LABEL}=enabled may be targeted."
        ),
    )
    caps: TargetCaps | None = Field(
        default=None, description="Cluster-wide caps on the number of targets per run."
    )
    cluster_scoped_attacks: ClusterScopedAttacks | None = Field(
        default=None,
        description=(
            "Which namespaces may run attacks whose effect reaches beyond the namespace "
            "(NodeCordon); unset: none may."
        ),
    )
    max_run_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3 * 24 * 3600,
        description=(
            "A run may last at most this long: its Experiment's warm-up, attacks (the longest "
            "chain of attack steps' offsets and durations) and cool-down together (the run lock "
            "is held that long); unset: no cap beyond the Experiment's own limits."
        ),
    )

    concurrency: Concurrency = Field(
        default=Concurrency.CLUSTER,
        description=(
            "Cluster (the default): one run executes in the whole cluster at a time. "
            "Namespace: one run per namespace at a time. In either mode no two live runs "
            "may hold the same pod, node or workload; Stop All stops every run."
        ),
    )
    blackout_windows: list[TimeWindow] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "When no run may execute, cluster-wide (holidays, change freezes, peak hours): "
            "a run is refused inside one, and a run still going when one begins is "
            "canceled with rollback."
        ),
    )
    metric_checks: MetricChecks | None = Field(
        default=None,
        description=(
            "Which Prometheus servers Prometheus and Alert state checks may query; unset: "
            "none (such checks cannot be evaluated)."
        ),
    )

    @model_validator(mode="after")
    def _unique_windows(self) -> ChaosSwitchSpec:
        require_unique_names(self.blackout_windows, "blackoutWindows")
        return self


class RunRef(Model):
    """A reference to an ExperimentRun."""

    namespace: str = Field(description="Namespace of the run.")
    name: str = Field(description="Name of the run.")
    uid: str | None = Field(default=None, description="UID of the run.")


class HeldRun(RunRef):
    """A run holding its turn (the cluster's, or its namespace's), and what it holds beyond
    its own namespace. Pods and workloads are namespaced: one run per namespace keeps two
    runs off one of them. Nodes are shared by every namespace, so they are listed."""

    nodes: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="The nodes its NodeCordon attacks may cordon (compared across namespaces).",
    )


# How many runs may hold a turn at once (Namespace mode: one per namespace).
MAX_HELD_RUNS = 1000


class SwitchChange(Model):
    """Who last flipped the switch, and when."""

    enabled: bool = Field(description="The value it was flipped to.")
    by: str = Field(description="The user who flipped it, from the admission request.")
    time: datetime = Field(description="When it was flipped.")


class SwitchHistoryEntry(Model):
    """One change of the switch's spec, as the operator's watch saw it."""

    generation: int = Field(ge=1, description="The .metadata.generation the change produced.")
    by: str = Field(
        max_length=512,
        description=(
            "The user who made the change, from the admission request (the mutating "
            f"webhook); '{UNKNOWN_CHANGER}' when no webhook stamped it."
        ),
    )
    time: datetime = Field(
        description="When: the webhook's time, or when the operator saw it if unstamped."
    )
    enabled: bool = Field(description="spec.enabled after the change.")
    enabled_changed: bool = Field(
        default=False, description="Whether spec.enabled changed (a Stop All or a Continue)."
    )
    rails: list[str] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "The spec fields other than enabled (the rails: caps, namespaceMode, ...) that "
            "the change set, changed or removed; all those set when no earlier spec is known."
        ),
    )
    spec: ChaosSwitchSpec = Field(description="The whole spec after the change.")


class ChaosSwitchStatus(Model):
    """The lock held by the active run, and the switch's history."""

    active_run: RunRef | None = Field(
        default=None,
        description=(
            "A run that holds the lock (the first of activeRuns; null when no run holds "
            "it). In Cluster mode the one run executing."
        ),
    )
    active_runs: list[HeldRun] = Field(
        default_factory=list,
        max_length=MAX_HELD_RUNS,
        description=(
            "Every run holding its turn, and the nodes each holds: one in Cluster mode, "
            "one per namespace in Namespace mode. Taken and released with a compare-and-"
            "swap on this object's resourceVersion."
        ),
    )
    last_change: SwitchChange | None = Field(
        default=None, description="Who last flipped the switch, and when."
    )
    history: list[SwitchHistoryEntry] = Field(
        default_factory=list,
        max_length=HISTORY_LENGTH,
        description=(
            f"Every change of the spec, oldest first, the last {HISTORY_LENGTH}: who, when "
            "and what (enabled, and which rails)."
        ),
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status is for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Conditions of the switch.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ChaosSwitch(Resource):
    """The cluster-wide switch: Stop All (enabled false) and Continue (enabled true)."""

    KIND: ClassVar[str] = "ChaosSwitch"
    PLURAL: ClassVar[str] = "chaosswitches"

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.metadata.name == '{SWITCH_NAME}'",
                    f"metadata.name: the ChaosSwitch must be named '{SWITCH_NAME}' "
                    "(there is one per cluster)",
                )
            ]
        }
    )

    spec: ChaosSwitchSpec = Field(description="Whether experimenting is enabled.")
    status: ChaosSwitchStatus | None = Field(
        default=None, description="The lock and the history, written by the operator."
    )


def _normal_spec(spec: Any) -> dict[str, Any]:
    """A spec as the model reads it (defaults filled in, nothing unset), for comparing."""
    raw = dict(spec) if isinstance(spec, Mapping) else {}
    try:
        return ChaosSwitchSpec.model_validate(raw).model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
    except ValidationError:
        return raw


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def history_entry(body: Mapping[str, Any], now: datetime) -> SwitchHistoryEntry | None:
    """The history entry of the switch's current generation, or None when it is recorded
    already (or the object has no generation yet).

    Who and when come from the webhook's stamp only when the stamp names this very
    generation (the policy lets the stamp change only with a spec change, to the requesting
    user and the new generation); otherwise who is UNKNOWN_CHANGER and when is `now`. What
    is the spec compared with the last recorded one; with none recorded, every rail set.
    """
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    if not isinstance(generation, int) or generation < 1:
        return None
    status = body.get("status") or {}
    history = status.get("history") or []
    last = history[-1] if history and isinstance(history[-1], Mapping) else None
    recorded = last.get("generation") if last is not None else None
    if isinstance(recorded, int) and recorded >= generation:
        return None
    spec = _normal_spec(body.get("spec"))
    enabled = bool(spec.get("enabled"))
    annotations = meta.get("annotations") or {}
    by, at = annotations.get(CHANGED_BY), _parse_time(annotations.get(CHANGED_AT))
    if annotations.get(CHANGED_GENERATION) == str(generation) and by and at is not None:
        who, when = str(by), at
    else:
        who, when = UNKNOWN_CHANGER, now
    if last is not None and isinstance(last.get("spec"), Mapping):
        before = _normal_spec(last["spec"])
        enabled_changed = bool(before.get("enabled")) != enabled
        rails = sorted(
            k for k in set(spec) | set(before) if k != "enabled" and spec.get(k) != before.get(k)
        )
    else:
        flipped = status.get("lastChange")
        enabled_changed = not isinstance(flipped, Mapping) or flipped.get("enabled") != enabled
        # Every rail set to other than its default (an unset list is not a rail set).
        default = _normal_spec({"enabled": enabled})
        rails = sorted(k for k in spec if k != "enabled" and spec.get(k) != default.get(k))
    try:
        after = ChaosSwitchSpec.model_validate(spec)
    except ValidationError:
        after = ChaosSwitchSpec(enabled=enabled)
    return SwitchHistoryEntry(
        generation=generation,
        by=who[:512],
        time=when,
        enabled=enabled,
        enabled_changed=enabled_changed,
        rails=rails[:32],
        spec=after,
    )


def describe_change(entry: SwitchHistoryEntry) -> str:
    """The Event's message for one change of the switch."""
    parts = []
    if entry.enabled_changed:
        parts.append(
            "Stop All (enabled: false)" if not entry.enabled else "Continue (enabled: true)"
        )
    if entry.rails:
        parts.append("rails changed: " + ", ".join(entry.rails))
    if not parts:
        parts.append(f"spec changed (enabled: {str(entry.enabled).lower()})")
    return f"{'; '.join(parts)}, by {entry.by} (generation {entry.generation})"
