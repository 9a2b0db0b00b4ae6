"""The ChaosSwitch kind: the one cluster-wide Stop All / Continue switch, named default."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import ConfigDict, Field

from shakeout.api.common import Condition, Model, Resource, cel

SWITCH_NAME = "default"


class ChaosSwitchSpec(Model):
    """Whether experimenting is enabled."""

    enabled: bool = Field(
        description=(
            "true: runs may execute (Continue). false: every running run is canceled with "
            "rollback and no manual or scheduled run executes (Stop All)."
        )
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
