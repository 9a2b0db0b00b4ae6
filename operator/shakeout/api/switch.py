"""The ChaosSwitch kind: the one cluster-wide Stop All / Continue switch, named default."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field

from shakeout.api.common import Condition, Model, Resource, cel

SWITCH_NAME = "default"


PROTECTED_LABEL = "shakeout.dev/protected"
OPT_IN_LABEL = "shakeout.dev/chaos"


class NamespaceMode(StrEnum):
    OPT_OUT = "OptOut"
    OPT_IN = "OptIn"


class TargetCaps(Model):
    """Cluster-wide caps on the number of targets of any run."""

    max_targets: int | None = Field(
        default=None, ge=1, le=1000000, description="A run may target at most this many pods."
    )
    max_percent: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "A run may target at most this percent (1-100) of the pods its selector "
            "matched, rounded down but never below one pod."
        ),
    )


class ChaosSwitchSpec(Model):
    """Whether experimenting is enabled, and the cluster-wide safety rails."""

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


class RunRef(Model):
    """A reference to an ExperimentRun."""

    namespace: str = Field(description="Namespace of the run.")
    name: str = Field(description="Name of the run.")
    uid: str | None = Field(default=None, description="UID of the run.")


class SwitchChange(Model):
    """Who last flipped the switch, and when."""

    enabled: bool = Field(description="The value it was flipped to.")
    by: str = Field(description="The user who flipped it, from the admission request.")
    time: datetime = Field(description="When it was flipped.")


class ChaosSwitchStatus(Model):
    """The lock held by the active run, and the switch's history."""

    active_run: RunRef | None = Field(
        default=None,
        description="The run that holds the cluster-wide lock; at most one executes at a time.",
    )
    last_change: SwitchChange | None = Field(
        default=None, description="Who last flipped the switch, and when."
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
