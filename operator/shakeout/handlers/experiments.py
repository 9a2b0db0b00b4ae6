"""Experiment handlers: keep status.conditions[Valid] and the attack summary current."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import ExperimentStatus
from shakeout.engine.experiments import experiment_status


@kopf.on.resume(GROUP, VERSION, "experiments")
@kopf.on.create(GROUP, VERSION, "experiments")
@kopf.on.update(GROUP, VERSION, "experiments", field="spec")
async def reconcile_experiment(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **_: Any
) -> None:
    old = ExperimentStatus.model_validate(dict(status)) if status else None
    new = experiment_status(dict(body), old, datetime.now(UTC))
    # Only the fields this handler owns: lastRun and lastScheduleTime have writers of their own.
    owned = {"conditions", "attacks", "attackTypes", "irreversibleAttacks", "observedGeneration"}
    rendered = {k: v for k, v in new.to_k8s().items() if k in owned}
    current = {k: v for k, v in (old.to_k8s() if old else {}).items() if k in owned}
    if rendered != current:
        patch.status.update(rendered)
