"""ExperimentRun webhooks: the Run button's preconditions (a refused run is never stored),
and who started or canceled a run, from the admission request's user info (which a client
cannot forge). The mutating ones ignore failures, so that a cancel works even while the
operator is down; the validating one then refuses a run whose creator is not recorded, or
recorded as someone else than the requester (a hand-written annotation), and the pick-up
refuses a stored run without a readable record (SEC-21).

Only the operator's own scheduled runs skip the preconditions here (they are recorded
FAILED at pick-up instead): decided by the requesting user, never by the run's trigger
label, which any creator can set (SEC-20).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from shakeout import metrics
from shakeout.admission.common import spec_of, user_json, username
from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import CANCELED_BY, SCHEDULED_TRIGGER, STARTED_BY, TRIGGER_LABEL
from shakeout.engine.preconditions import (
    ADMISSION,
    CREATOR_NOT_RECORDED,
    evaluate,
    irreversible_attacks,
)
from shakeout.gather.facts import (
    IDENTITIES,
    gather_run_facts,
    is_operator,
    operator_identity,
    recorded_user,
)
from shakeout.options import OPTIONS

log = logging.getLogger("shakeout.admission")


@kopf.on.startup(id="run-identities")
async def learn_identities(**_: Any) -> None:
    """The webhooks are served: every run's creator is recorded from now on, and the
    operator's own user is learnt (the creator of its scheduled runs)."""
    IDENTITIES.recorded = True
    IDENTITIES.operator = await operator_identity()
    if IDENTITIES.operator is None:
        log.warning(
            "the operator's own user is not known: its scheduled runs are checked "
            "at admission like any other"
        )
    else:
        log.info(f"the operator is {IDENTITIES.operator.username}")


def creator_problem(annotations: Mapping[str, Any], userinfo: Any) -> str | None:
    """Why the run's recorded creator cannot be trusted, or None: the mutating webhook
    records the requester; a missing, unreadable or different record was not written by
    it (the webhook is down or deleted, and the creator wrote the annotation)."""
    recorded = recorded_user(annotations, STARTED_BY)
    requester = username(userinfo)
    if recorded is None:
        return CREATOR_NOT_RECORDED
    if recorded.username != requester:
        return (
            f"the annotation {STARTED_BY} names {recorded.username}, but {requester} creates "
            "the run: who started a run is recorded by the operator, never written by hand"
        )
    return None


@kopf.on.validate(GROUP, VERSION, "experimentruns", operations=["CREATE"], id="run-preconditions")
async def validate_run(body: kopf.Body, userinfo: Any, warnings: list[str], **_: Any) -> None:
    meta = body.get("metadata", {})
    scheduled = (meta.get("labels") or {}).get(TRIGGER_LABEL) == SCHEDULED_TRIGGER
    if scheduled and is_operator(username(userinfo)):
        # The operator's scheduled run is always recorded: if a precondition fails, the
        # operator ends it FAILED with the reason (and never attacks), so the team sees
        # the run it missed. Anyone else's run is checked whatever its labels say.
        return
    if (problem := creator_problem(meta.get("annotations") or {}, userinfo)) is not None:
        raise kopf.AdmissionError(problem, code=403)
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
        if body.get("spec", {}).get("dryRun"):
            warnings.append(
                "a dry run: nothing is applied; in a real run these attacks could not be "
                "rolled back: " + ", ".join(names)
            )
        else:
            warnings.append(
                "this run contains attacks that cannot be rolled back: " + ", ".join(names)
            )


@kopf.on.mutate(
    GROUP,
    VERSION,
    "experimentruns",
    operations=["CREATE"],
    id="run-started-by",
    ignore_failures=True,
)
async def record_started_by(userinfo: Any, patch: kopf.Patch, **_: Any) -> None:
    patch.setdefault("metadata", {}).setdefault("annotations", {})[STARTED_BY] = user_json(userinfo)


@kopf.on.mutate(
    GROUP,
    VERSION,
    "experimentruns",
    operations=["UPDATE"],
    id="run-canceled-by",
    ignore_failures=True,
)
async def record_canceled_by(body: kopf.Body, userinfo: Any, patch: kopf.Patch, **kw: Any) -> None:
    old = kw.get("old")  # kopf passes the old object, though its WebhookFn type omits it
    was = bool(spec_of(old).get("cancel"))
    if spec_of(body).get("cancel") and not was:
        annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[CANCELED_BY] = user_json(userinfo)
