"""The ChaosSwitch as the operator sees it: the watch's last view, and who holds the lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shakeout.api.switch import ChaosSwitchSpec
from shakeout.api.windows import TimeWindow
from shakeout.engine.runs import is_terminal
from shakeout.gather.records import record_exists
from shakeout.kube.client import Obj, api


@dataclass
class SwitchView:
    """The last state of the switch that the watch delivered."""

    known: bool = False
    enabled: bool = False
    # The switch's spec.blackoutWindows: every live run looks at them at each step.
    blackout_windows: tuple[TimeWindow, ...] = ()


SWITCH = SwitchView()


def switch_spec(switch: Obj | None) -> ChaosSwitchSpec | None:
    """The switch's spec; None when there is no switch. An unreadable one (stored before the
    schema checked it) counts as a disabled switch with no caps."""
    if switch is None:
        return None
    try:
        return ChaosSwitchSpec.model_validate(switch.get("spec") or {"enabled": False})
    except ValidationError:
        return ChaosSwitchSpec(enabled=False)


def is_enabled(switch: Obj | None) -> bool:
    spec = switch_spec(switch)
    return spec is not None and spec.enabled


async def switch_enabled() -> bool:
    """Whether experimenting is enabled: the watch's view, or a read before it arrived."""
    if SWITCH.known:
        return SWITCH.enabled
    return is_enabled(await api().get_switch())


def blackout_windows_of(switch: Obj | None) -> tuple[TimeWindow, ...]:
    spec = switch_spec(switch)
    return tuple(spec.blackout_windows) if spec is not None else ()


async def blackout_windows() -> Sequence[TimeWindow]:
    """The switch's blackout windows: the watch's view, or a read before it arrived."""
    if SWITCH.known:
        return SWITCH.blackout_windows
    return blackout_windows_of(await api().get_switch())


def lock_ref(switch: Obj | None) -> dict[str, Any] | None:
    """The run that the switch's status names as the lock holder, if any."""
    holder = ((switch or {}).get("status") or {}).get("activeRun")
    return holder if isinstance(holder, dict) and holder.get("name") else None


async def holder_alive(ref: dict[str, Any]) -> bool:
    """Whether the run a lock names still exists (the same object) and is not finished, or
    vanished with attacks that its rollback record still holds (being rolled back)."""
    run = await api().get_run(str(ref.get("namespace", "")), str(ref["name"]))
    if run is None or (ref.get("uid") and run["metadata"]["uid"] != ref["uid"]):
        return bool(ref.get("uid")) and await record_exists(str(ref["uid"]))
    return not is_terminal((run.get("status") or {}).get("phase"))


async def lock_holder(switch: Obj | None, besides: str | None = None) -> str | None:
    """NAMESPACE/NAME of the live run that holds the lock (other than the run `besides`),
    or None: read in O(1) from the switch, not by listing every run."""
    ref = lock_ref(switch)
    if ref is None or (besides and ref.get("uid") == besides):
        return None
    return f"{ref.get('namespace')}/{ref['name']}" if await holder_alive(ref) else None
