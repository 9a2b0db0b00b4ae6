"""ChaosSwitch webhook: who changed the switch, when, and which generation the change made
(the switch's watch copies them into status.history).

The stamp is three annotations that only this mutation may write: an update that writes any
of them is refused here, and the ValidatingAdmissionPolicy `shakeout-switch-rails`
(deploy/rbac/switch-rails-policy.yaml) refuses it in the API server too, webhooks or not.
A create (cluster admins only, the policy sees to it) gets a fresh stamp whatever it
carried: a switch restored from a backup is recorded as created by whoever restored it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from shakeout.admission.common import now_iso, spec_of, username
from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import CHANGED_AT, CHANGED_BY, CHANGED_GENERATION
from shakeout.api.switch import SWITCH_NAME

STAMP = (CHANGED_BY, CHANGED_AT, CHANGED_GENERATION)


def _stamp(obj: Any) -> dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping):
        return {}
    return {k: annotations[k] for k in STAMP if k in annotations}


@kopf.on.mutate(
    GROUP,
    VERSION,
    "chaosswitches",
    operations=["CREATE", "UPDATE"],
    id="switch-changed-by",
    ignore_failures=True,
)
async def record_switch_change(
    body: kopf.Body, userinfo: Any, patch: kopf.Patch, **kw: Any
) -> None:
    old = kw.get("old")
    if body.get("metadata", {}).get("name") != SWITCH_NAME:
        return
    if old and _stamp(body) != _stamp(old):
        raise kopf.AdmissionError(
            f"the annotations {', '.join(STAMP)} record who changed the switch; only the "
            "operator's webhook writes them (from the request's user), nobody may set, "
            "change or remove them",
            code=403,
        )
    if old and spec_of(old) == spec_of(body):
        return
    generation = 1
    if old:
        previous = old.get("metadata", {}).get("generation")
        generation = (previous if isinstance(previous, int) else 0) + 1
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[CHANGED_BY] = username(userinfo)
    annotations[CHANGED_AT] = now_iso()
    annotations[CHANGED_GENERATION] = str(generation)
