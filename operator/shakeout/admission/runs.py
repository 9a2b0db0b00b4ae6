"""ExperimentRun webhooks: the Run button's preconditions (a refused run is never stored),
and who started or canceled a run, from the admission request's user info (which a client
cannot forge). The mutating ones ignore failures, so that a cancel works even while the
operator is down."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout import metrics
from shakeout.admission.common import spec_of, user_json
from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import CANCELED_BY, SCHEDULED_TRIGGER, STARTED_BY, TRIGGER_LABEL
from shakeout.engine.preconditions import ADMISSION, evaluate, irreversible_attacks
from shakeout.gather.facts import gather_run_facts
from shakeout.options import OPTIONS


@kopf.on.validate(GROUP, VERSION, "experimentruns", operation="CREATE", id="run-preconditions")
async def validate_run(body: kopf.Body, warnings: list[str], **_: Any) -> None:
    meta = body.get("metadata", {})
    if (meta.get("labels") or {}).get(TRIGGER_LABEL) == SCHEDULED_TRIGGER:
        # A scheduled run is always recorded: if a precondition fails, the operator ends it
        # FAILED with the reason (and never attacks), so the team sees the run it missed.
        return
    ref = (body.get("spec", {}).get("experimentRef") or {}).get("name", "")
    with metrics.WEBHOOK_DURATION.labels("run-preconditions").time():
        facts, _pods, _switch, _generation = await gather_run_facts(
            meta.get("namespace", ""),
            ref,
            meta.get("uid") or "",
            protected_namespaces=OPTIONS.protected_namespaces,
            lock=True,
        )
    if (refusal := evaluate(ADMISSION, facts)) is not None:
        raise kopf.AdmissionError(refusal.message, code=403)
    if facts.experiment is not None and (names := irreversible_attacks(facts.experiment)):
        # Said before the run starts: kubectl prints admission warnings to the user.
        warnings.append("this run contains attacks that cannot be rolled back: " + ", ".join(names))


@kopf.on.mutate(
    GROUP,
    VERSION,
    "experimentruns",
    operation="CREATE",
    id="run-started-by",
    ignore_failures=True,
)
def record_started_by(userinfo: Any, patch: kopf.Patch, **_: Any) -> None:
    patch.setdefault("metadata", {}).setdefault("annotations", {})[STARTED_BY] = user_json(userinfo)


@kopf.on.mutate(
    GROUP,
    VERSION,
    "experimentruns",
    operation="UPDATE",
    id="run-canceled-by",
    ignore_failures=True,
)
def record_canceled_by(body: kopf.Body, userinfo: Any, patch: kopf.Patch, **kw: Any) -> None:
    old = kw.get("old")  # kopf passes the old object, though its WebhookFn type omits it
    was = bool(spec_of(old).get("cancel"))
    if spec_of(body).get("cancel") and not was:
        annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[CANCELED_BY] = user_json(userinfo)
