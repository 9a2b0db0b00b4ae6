"""Admission webhooks served by the operator.

Validating: the Run button's preconditions (refused runs are never stored). Mutating:
who started or canceled a run, and who flipped the ChaosSwitch, taken from the admission
request's user info (a client cannot forge that). The mutating hooks ignore failures so
that cancel and Stop All work even while the operator is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import Experiment
from shakeout.api.switch import SWITCH_NAME
from shakeout.engine.experiments import describe_validation_error
from shakeout.engine.preconditions import RunRequest, refusal
from shakeout.handlers import agents, metrics
from shakeout.handlers import switch as lock
from shakeout.handlers.blast_radius import (
    ADMITTED,
    SelectorError,
    needs_detail,
    resolve_target_pods,
)
from shakeout.handlers.k8s import api
from shakeout.handlers.rails import rails_refusal
from shakeout.handlers.runs import CANCELED_BY, STARTED_BY
from shakeout.handlers.schedules import TRIGGER_LABEL
from shakeout.handlers.switch import CHANGED_AT, CHANGED_BY, now_iso


def _spec(obj: Any) -> dict[str, Any]:
    """An object's spec, or {}: mutating webhooks run before the schema is checked, so a
    spec may be anything at all (the schema then refuses it with its own message)."""
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    return dict(spec) if isinstance(spec, Mapping) else {}


def _who(userinfo: Any) -> str:
    info = dict(userinfo or {})
    return json.dumps(
        {"username": info.get("username", "unknown"), "groups": list(info.get("groups") or [])},
        separators=(",", ":"),
    )


async def gather_run_request(namespace: str, experiment: str, uid: str | None) -> RunRequest:
    # Independent reads at once: admission is on the path to the first fault.
    switch, obj, facts = await asyncio.gather(
        api().get_switch(),
        api().get_experiment(namespace, experiment),
        api().namespace_facts(namespace),
    )
    active = await lock.active_run(switch, besides=uid)
    error, matched, targets, agent_problem = None, 0, 0, None
    irreversible: tuple[str, ...] = ()
    if obj is not None:
        try:
            spec = Experiment.model_validate(obj).spec
        except ValidationError as err:
            error = describe_validation_error(err)
        else:
            detail = needs_detail(spec)
            try:
                selection, pods = await resolve_target_pods(
                    namespace, spec.blast_radius, seed=uid or "", detail=detail
                )
            except SelectorError as err:
                error = str(err)
            else:
                if uid:
                    ADMITTED.keep(uid, spec.blast_radius, detail, (selection, pods))
                matched, targets = selection.matched, len(selection.targets)
                nodes = sorted({p.node for p in pods if p.node})
                agent_problem = agents.unsupported(spec, nodes)
                irreversible = tuple(
                    f"{a.name} ({a.type})" for a in spec.attacks if not a.reversible
                )
    namespace_problem, cap_problem = rails_refusal(facts, switch, matched, targets)
    return RunRequest(
        namespace=namespace,
        experiment=experiment,
        switch_exists=switch is not None,
        switch_enabled=bool(switch and switch.get("spec", {}).get("enabled")),
        active_runs=(active,) if active else (),
        experiment_found=obj is not None,
        experiment_error=error,
        matched_pods=matched,
        targets=targets,
        namespace_refusal=namespace_problem,
        cap_refusal=cap_problem,
        agent_refusal=agent_problem,
        irreversible=irreversible,
    )


@kopf.on.validate(GROUP, VERSION, "experimentruns", operation="CREATE", id="run-preconditions")
async def validate_run(body: kopf.Body, warnings: list[str], **_: Any) -> None:
    meta = body.get("metadata", {})
    if (meta.get("labels") or {}).get(TRIGGER_LABEL) == "schedule":
        # A scheduled run is always recorded: if a precondition fails, the operator ends it
        # FAILED with the reason (and never attacks), so the team sees the run it missed.
        return
    ref = (body.get("spec", {}).get("experimentRef") or {}).get("name", "")
    with metrics.WEBHOOK_DURATION.labels("run-preconditions").time():
        request = await gather_run_request(meta.get("namespace", ""), ref, meta.get("uid"))
    if (message := refusal(request)) is not None:
        raise kopf.AdmissionError(message, code=403)
    if request.irreversible:
        # Said before the run starts: kubectl prints admission warnings to the user.
        warnings.append(
            "this run contains attacks that cannot be rolled back: "
            + ", ".join(request.irreversible)
        )


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
def validate_experiment(body: kopf.Body, **kw: Any) -> None:
    """What the schema cannot check (cron syntax, time zones), refused with the field.

    Only a change of the spec is judged: an object stored while the webhook was away stays
    deletable, and its labels and finalizers changeable, whatever its spec.
    """
    old = kw.get("old")  # kopf passes the old object, though its WebhookFn type omits it
    if old is not None and (
        old.get("spec") == body.get("spec") or body.get("metadata", {}).get("deletionTimestamp")
    ):
        return
    try:
        Experiment.model_validate(dict(body))
    except ValidationError as err:
        raise kopf.AdmissionError(describe_validation_error(err), code=422) from err


@kopf.on.mutate(
    GROUP,
    VERSION,
    "experimentruns",
    operation="CREATE",
    id="run-started-by",
    ignore_failures=True,
)
def record_started_by(userinfo: Any, patch: kopf.Patch, **_: Any) -> None:
    patch.setdefault("metadata", {}).setdefault("annotations", {})[STARTED_BY] = _who(userinfo)


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
    was = bool(_spec(old).get("cancel"))
    if _spec(body).get("cancel") and not was:
        patch.setdefault("metadata", {}).setdefault("annotations", {})[CANCELED_BY] = _who(userinfo)


@kopf.on.mutate(
    GROUP,
    VERSION,
    "chaosswitches",
    operations=["CREATE", "UPDATE"],
    id="switch-changed-by",
    ignore_failures=True,
)
def record_switch_change(body: kopf.Body, userinfo: Any, patch: kopf.Patch, **kw: Any) -> None:
    old = kw.get("old")
    if body.get("metadata", {}).get("name") != SWITCH_NAME:
        return
    before = _spec(old).get("enabled")
    after = _spec(body).get("enabled")
    if old and before == after:
        return
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[CHANGED_BY] = str(dict(userinfo or {}).get("username", "unknown"))
    annotations[CHANGED_AT] = now_iso()
