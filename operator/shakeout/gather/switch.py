"""The ChaosSwitch as the operator sees it: the watch's last view, and who holds the lock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from shakeout.api.switch import ChaosSwitchSpec
from shakeout.api.windows import TimeWindow
from shakeout.engine.concurrency import Holder, holders_in
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


def held_runs(switch: Obj | None) -> list[Holder]:
    """Every run the switch's status names as holding a turn (status.activeRuns, and
    status.activeRun for one an older operator wrote), alive or not."""
    return holders_in((switch or {}).get("status"))


async def live_holders(switch: Obj | None, besides: str | None = None) -> list[Holder]:
    """The holders that are alive (other than the run `besides`): read from the switch, not
    by listing every run; a dead holder is left out (its turn is taken over)."""
    held = [h for h in held_runs(switch) if not (besides and h.uid == besides)]
    alive = await asyncio.gather(*map(is_alive, held))
    return [h for h, ok in zip(held, alive, strict=True) if ok]


async def is_alive(holder: Holder) -> bool:
    """Whether the run a holder names still exists (the same object) and is not finished,
    or vanished with attacks that its rollback record still holds (being rolled back)."""
    run = await api().get_run(holder.namespace, holder.name)
    if run is None or (holder.uid and run["metadata"]["uid"] != holder.uid):
        return bool(holder.uid) and await record_exists(holder.uid)
    return not is_terminal((run.get("status") or {}).get("phase"))
