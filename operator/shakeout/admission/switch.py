"""ChaosSwitch webhook: who flipped the switch, and when (copied into its status)."""

from __future__ import annotations

from typing import Any

import kopf

from shakeout.admission.common import now_iso, spec_of, username
from shakeout.api.common import GROUP, VERSION
from shakeout.api.labels import CHANGED_AT, CHANGED_BY
from shakeout.api.switch import SWITCH_NAME


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
    if old and spec_of(old).get("enabled") == spec_of(body).get("enabled"):
        return
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[CHANGED_BY] = username(userinfo)
    annotations[CHANGED_AT] = now_iso()
