"""The node agent's Lease `shakeout-agent-<node>`: the operator reads from it that the
agent lives (a Lease renewed within its duration) and what its node can do (the
capabilities annotation).

The agent renews it every renew interval. What a renewal means for the faults (the
keeper's heartbeat) and what its loss means (every fault rolled back) is the agent's
part: `keep` calls it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from shakeout.api.labels import (
    AGENT_LABEL,
    AGENT_LABEL_VALUE,
    CAPABILITIES_ANNOTATION,
    NODE_ANNOTATION,
    agent_lease_name,
)
from shakeout.kube.client import Api, Obj
from shakeout.kube.leases import renewed
from shakeout.kube.resources import LEASES

log = logging.getLogger("shakeout.agent")


class FatalError(Exception):
    """The agent cannot go on (its keeper is gone): `keep` lets it through, the agent exits."""


class AgentLease:
    """The Lease of one node's agent, held by `identity`."""

    def __init__(
        self,
        api: Api,
        *,
        node: str,
        namespace: str,
        identity: str,
        duration: float,
        capabilities: Obj,
    ) -> None:
        self.api = api
        self.node = node
        self.namespace = namespace
        self.name = agent_lease_name(node)
        self.identity = identity
        self.duration = duration
        self.capabilities = capabilities
        self.last_renewal = 0.0

    def body(self, current: Obj | None) -> Obj:
        """The Lease renewed now by this agent, from the one read (None: a new one)."""
        body = renewed(current, self.name, self.namespace, self.identity, self.duration)
        meta = body["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), AGENT_LABEL: AGENT_LABEL_VALUE}
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            NODE_ANNOTATION: self.node,
            CAPABILITIES_ANNOTATION: json.dumps(self.capabilities, sort_keys=True),
        }
        return body

    async def renew(self) -> None:
        current = await self.api.get(LEASES, self.namespace, self.name)
        if current is None:
            await self.api.create(LEASES, self.namespace, self.body(None))
        else:
            # A PUT with the resourceVersion read: a concurrent writer makes it a Conflict.
            path = LEASES.path(self.namespace, self.name)
            await self.api.request("PUT", path, self.body(current))
        self.last_renewal = time.monotonic()

    def expired(self) -> bool:
        """Whether the last renewal is older than the Lease's duration."""
        return time.monotonic() - self.last_renewal > self.duration

    async def keep(
        self,
        interval: float,
        stopping: asyncio.Event,
        on_renewal: Callable[[bool], Awaitable[None]],
        on_loss: Callable[[], Awaitable[None]],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Renew every `interval` seconds until `stopping` is set.

        After each renewal: `on_renewal(again)`, `again` being true after the Lease ran
        out; an error there counts as a failed renewal. Once renewals failed for longer
        than the Lease's duration: `on_loss()`, once per loss. `before()` runs before each
        renewal. A FatalError raised by any of them ends `keep` with it: no renewal after.
        """
        out = False
        while not stopping.is_set():
            started = time.monotonic()
            try:
                if before is not None:
                    await before()
                await self.renew()
                await on_renewal(out)
                out = False
            except FatalError:
                raise
            except Exception as err:  # noqa: BLE001  (the API server may be away: keep trying)
                log.warning(f"lease renewal failed: {err}")
                if self.expired() and not out:
                    out = True
                    try:
                        await on_loss()
                    except Exception as err:  # noqa: BLE001  (the keeper's deadline still holds)
                        log.error(f"after the lease ran out: {err}")
            spent = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(0.05, interval - spent))
