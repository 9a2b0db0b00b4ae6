"""Experiment webhook: what the schema cannot check (cron syntax, time zones)."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import Experiment
from shakeout.engine.experiments import describe_validation_error


# Ignore failures: GitOps must be able to apply Experiments while the operator is away
# (the Valid condition reports the same problems once it is back).
@kopf.on.validate(
    GROUP,
    VERSION,
    "experiments",
    operations=["CREATE", "UPDATE"],
    id="experiment-valid",
    ignore_failures=True,
)
async def validate_experiment(body: kopf.Body, **kw: Any) -> None:
    """Refuse a spec the models refuse, with the field. Only a change of the spec is
    judged: an object stored while the webhook was away stays deletable, and its labels
    and finalizers changeable, whatever its spec."""
    old = kw.get("old")  # kopf passes the old object, though its WebhookFn type omits it
    if old is not None and (
        old.get("spec") == body.get("spec") or body.get("metadata", {}).get("deletionTimestamp")
    ):
        return
    try:
        Experiment.model_validate(dict(body))
    except ValidationError as err:
        raise kopf.AdmissionError(describe_validation_error(err), code=422) from err
