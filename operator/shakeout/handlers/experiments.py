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
def reconcile_experiment(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    old = ExperimentStatus.model_validate(dict(status)) if status else None
    new = experiment_status(dict(body), old, datetime.now(UTC))
    rendered = new.to_k8s()
    if old is None or rendered != old.to_k8s():
        patch.status.update(rendered)
