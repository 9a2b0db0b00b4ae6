"""The blast-radius rails on the objects read from the cluster: the namespace's labels and
the switch (the callers read them together with their other reads, at once)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shakeout.api.switch import ChaosSwitchSpec
from shakeout.engine.policies import NamespaceFacts, cap_refusal, namespace_refusal
from shakeout.handlers.settings import OPTIONS


def switch_spec(switch: dict[str, Any] | None) -> ChaosSwitchSpec:
    """The switch's spec; a missing or unreadable one is a disabled switch with no caps."""
    try:
        return ChaosSwitchSpec.model_validate((switch or {}).get("spec") or {"enabled": False})
    except ValidationError:
        return ChaosSwitchSpec(enabled=False)


def rails_refusal(
    facts: NamespaceFacts, switch: dict[str, Any] | None, matched: int, targets: int
) -> tuple[str | None, str | None]:
    """(why the namespace may not be attacked, why the run is over the caps)."""
    spec = switch_spec(switch)
    return (
        namespace_refusal(facts, spec, OPTIONS.protected_namespaces),
        cap_refusal(matched, targets, spec),
    )
