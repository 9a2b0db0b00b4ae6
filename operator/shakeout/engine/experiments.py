"""What the operator reports about an Experiment: is it valid, which attacks reverse."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shakeout.api.common import Condition, ConditionStatus
from shakeout.api.experiment import AttackSummary, Experiment, ExperimentStatus
from shakeout.api.labels import ConditionType
from shakeout.engine.conditions import set_condition


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, naming the field the way a kubectl user writes it."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(object)"
        lines.append(f"{where}: {problem['msg']}")
    return "; ".join(lines)


def experiment_status(
    body: dict[str, Any], old: ExperimentStatus | None, now: datetime
) -> ExperimentStatus:
    """The status an Experiment should have: Valid, the attacks' reversibility, and its attack
    types (each once, in the order of the attacks) for `kubectl get experiments`."""
    status = old.model_copy(deep=True) if old else ExperimentStatus()
    generation = body.get("metadata", {}).get("generation")
    try:
        exp = Experiment.model_validate(body)
    except ValidationError as err:
        status.conditions = set_condition(
            status.conditions,
            type=ConditionType.VALID,
            status=ConditionStatus.FALSE,
            reason="InvalidSpec",
            message=describe_validation_error(err)[:32768],
            now=now,
            generation=generation,
        )
        status.conditions = _stalled(status.conditions, True, now, generation)
        status.observed_generation = generation
        return status
    status.attacks = [
        AttackSummary(name=a.name, type=a.type, reversible=a.reversible) for a in exp.spec.attacks
    ]
    status.attack_types = ",".join(dict.fromkeys(a.type for a in exp.spec.attacks))
    irreversible = [a.name for a in exp.spec.attacks if not a.reversible]
    status.irreversible_attacks = len(irreversible)
    message = "the experiment can be run"
    if irreversible:
        message += "; these attacks cannot be rolled back: " + ", ".join(irreversible)
    status.conditions = set_condition(
        status.conditions,
        type=ConditionType.VALID,
        status=ConditionStatus.TRUE,
        reason="SpecValid",
        message=message,
        now=now,
        generation=generation,
    )
    status.conditions = _stalled(status.conditions, False, now, generation)
    status.observed_generation = generation
    return status


def _stalled(
    conditions: list[Condition], invalid: bool, now: datetime, generation: int | None
) -> list[Condition]:
    """kstatus (Flux, kpt) reads Stalled: an invalid Experiment is Failed there, too."""
    return set_condition(
        conditions,
        type=ConditionType.STALLED,
        status=ConditionStatus.TRUE if invalid else ConditionStatus.FALSE,
        reason="InvalidSpec" if invalid else "SpecValid",
        message="the spec is invalid: see the Valid condition" if invalid else "",
        now=now,
        generation=generation,
    )
