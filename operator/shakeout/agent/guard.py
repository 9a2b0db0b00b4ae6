"""What the node agent enforces on its own, whatever the operator does: nothing is applied
or kept while the ChaosSwitch is off or gone, and no fault outlives its NodeAttack's
notAfter (docs/node-agent.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from shakeout.agent.nodeattacks import not_after, switch_enabled
from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.client import Api, Obj
from shakeout.kube.resources import SWITCHES

log = logging.getLogger("shakeout.agent")

SWITCH_OFF = "the ChaosSwitch is disabled (Stop All) or gone"
NOT_AFTER_PASSED = "its notAfter passed"


class NodeGuard:
    def __init__(self, api: Api, on_switch_off: Callable[[], Awaitable[None]]) -> None:
        self.api = api
        # Called when the switch goes off: every fault of the node is rolled back.
        self.on_switch_off = on_switch_off
        # The ChaosSwitch: False once it is disabled or deleted (nothing applied then).
        self.switch_on = True
        self.switching: asyncio.Task[None] | None = None
        # NodeAttack uid -> when this agent first saw it (the bound of one without notAfter).
        self.first_seen: dict[str, float] = {}

    def switch_event(self, event: Obj) -> None:
        """One watch event of the ChaosSwitch `default` (in the event loop)."""
        gone = event["type"] == "DELETED"
        self.switch_seen(not gone and switch_enabled(event["object"]))

    async def read_switch(self) -> None:
        """Read the ChaosSwitch (at start and each resync: a watch may miss an event)."""
        try:
            switch = await self.api.get(SWITCHES, None, SWITCH_NAME)
        except Exception as err:  # noqa: BLE001  (keep what we knew; the watch goes on)
            log.warning(f"reading the ChaosSwitch failed: {err}")
            return
        self.switch_seen(switch_enabled(switch))

    def switch_seen(self, enabled: bool) -> None:
        was, self.switch_on = self.switch_on, enabled
        if was and not enabled:
            log.warning("the ChaosSwitch is disabled or gone: rolling back every fault")
            self.switching = asyncio.ensure_future(self.on_switch_off())
        elif enabled and not was:
            log.info("the ChaosSwitch is enabled again")

    def bound(self, obj: Obj) -> float:
        """When the NodeAttack's faults end, whatever the operator does (epoch seconds)."""
        uid = obj["metadata"]["uid"]
        return not_after(obj, self.first_seen.setdefault(uid, time.time()))

    def forget(self, uid: str) -> None:
        self.first_seen.pop(uid, None)

    def refusal(self, obj: Obj) -> str | None:
        """Why the agent itself refuses to keep the NodeAttack (None: it may)."""
        if not self.switch_on:
            return SWITCH_OFF
        if obj.get("spec") and time.time() >= self.bound(obj):
            return NOT_AFTER_PASSED
        return None
