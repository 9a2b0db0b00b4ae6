"""The Experiments' previews (status.preview): one loop over the Experiments the watch
shows, each refreshed when its spec changes, when the switch's spec changes, when someone
asks (the annotation shakeout.dev/preview-requested) and every --preview-interval seconds.

Bounded whatever the cluster's size: at most MAX_PER_TICK previews are computed per tick
(the ones asked for or changed first, then the oldest), each with one cached list of the
blast radius' pods, and no Experiment more often than engine.preview.MIN_SECONDS_BETWEEN.
No kopf timer per Experiment (kopf would put a finalizer on each; see scheduler.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shakeout.api.labels import PREVIEW_REQUESTED
from shakeout.engine.preconditions import node_attack_types
from shakeout.engine.preview import Candidate, Stamp, preview, refresh_due, valid_request
from shakeout.gather import agents
from shakeout.gather.facts import gather_run_facts
from shakeout.kube.client import api
from shakeout.options import OPTIONS

log = logging.getLogger("shakeout.previews")

# Previews computed per tick of the loop (one tick a second).
MAX_PER_TICK = 4
# The seed of the preview's own pick: only its counts are used (a run picks with its UID).
PREVIEW_SEED = "preview"


@dataclass
class Tracked:
    """An Experiment as its last watch event showed it, and its preview as last known."""

    namespace: str
    name: str
    generation: int | None
    request: str | None
    last: Stamp | None = None
    attempted: datetime | None = None
    # The switch's spec changed since the preview was computed.
    rails_changed: bool = False
    # Seconds the last computation took (it spaces the next: engine.preview.refresh_due).
    cost: float = 0.0


TRACKED: dict[tuple[str, str], Tracked] = {}


def _stored_stamp(body: dict[str, Any]) -> Stamp | None:
    """The stamp of the preview in an Experiment's status (three fields read, no more);
    None when there is none or it cannot be read (it is then computed again)."""
    raw = (body.get("status") or {}).get("preview")
    if not isinstance(raw, dict):
        return None
    try:
        written = datetime.fromisoformat(str(raw["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    if written.tzinfo is None:
        return None  # not written by the operator (which writes UTC)
    generation = raw.get("observedGeneration")
    return Stamp(
        time=written,
        generation=generation if isinstance(generation, int) else None,
        request=valid_request(raw.get("request")),
    )


def observe(event_type: str, body: dict[str, Any]) -> None:
    """Keep TRACKED current with one watch event of an Experiment."""
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        TRACKED.pop(key, None)
        return
    stored = _stored_stamp(body)
    known = TRACKED.get(key)
    if (
        known is not None
        and known.last is not None
        and (stored is None or stored.time < known.last.time)
    ):
        stored = known.last  # our own write has not come back yet
    TRACKED[key] = Tracked(
        namespace=key[0],
        name=key[1],
        generation=meta.get("generation"),
        request=valid_request((meta.get("annotations") or {}).get(PREVIEW_REQUESTED)),
        last=stored,
        attempted=known.attempted if known is not None else None,
        rails_changed=known.rails_changed if known is not None else False,
        cost=known.cost if known is not None else 0.0,
    )


@dataclass
class SwitchSeen:
    """The switch's generation (its spec's) as last seen; None before any event."""

    generation: int | None = None
    seen: bool = False


SWITCH_SEEN = SwitchSeen()


def switch_seen(event_type: str, body: dict[str, Any]) -> None:
    """One watch event of the ChaosSwitch: when its spec changed (a rail, Stop All, the
    switch created or deleted), every preview is due again (at most MAX_PER_TICK a tick,
    as always). The first event after a start only records the generation."""
    generation = None if event_type == "DELETED" else (body.get("metadata") or {}).get("generation")
    changed = SWITCH_SEEN.seen and generation != SWITCH_SEEN.generation
    SWITCH_SEEN.generation, SWITCH_SEEN.seen = generation, True
    if changed:
        for tracked in TRACKED.values():
            tracked.rails_changed = True


async def refresh(tracked: Tracked, now: datetime) -> None:
    """Compute one Experiment's preview with the gatherer and the checks of a run, and
    write it to its status; what it took is kept in tracked.cost, failed or not."""
    began = time.monotonic()
    try:
        await _refresh(tracked, now)
    finally:
        tracked.cost = time.monotonic() - began


async def _refresh(tracked: Tracked, now: datetime) -> None:
    facts, pods, _switch, generation = await gather_run_facts(
        tracked.namespace,
        tracked.name,
        PREVIEW_SEED,
        protected_namespaces=OPTIONS.protected_namespaces,
        every_candidate=True,
    )
    # The list was parsed in one go; let a webhook or an attack waiting on the loop go
    # first before the preview's own pick over every candidate.
    await asyncio.sleep(0)
    if not facts.experiment_found:
        TRACKED.pop((tracked.namespace, tracked.name), None)
        return
    spec = facts.experiment
    node_level = spec is not None and bool(node_attack_types(spec))
    missing = agents.missing(list(facts.target_nodes)) if node_level else ()
    result = preview(
        facts,
        [Candidate(p.name, p.node) for p in pods],
        missing,
        now=now,
        generation=generation,
        request=tracked.request,
    )
    body = result.to_k8s()
    # A merge patch keeps what it does not name: say explicitly what is gone.
    body.update({"reason": result.reason, "request": result.request})
    await api().patch_experiment_status(tracked.namespace, tracked.name, {"preview": body})
    tracked.last = Stamp.of(result)
    tracked.rails_changed = False
    if generation is not None:
        tracked.generation = generation


def _urgency(tracked: Tracked) -> tuple[int, float]:
    """Asked for or its spec changed first, then those the rails changed, then the oldest."""
    last = tracked.last
    if last is None or last.generation != tracked.generation:
        return 0, 0.0
    if tracked.request is not None and tracked.request != last.request:
        return 0, 0.0
    return (1 if tracked.rails_changed else 2), last.time.timestamp()


async def tick(now: datetime, interval: float) -> None:
    """Refresh the previews that are due, at most MAX_PER_TICK of them."""
    due = [
        t
        for t in TRACKED.values()
        if refresh_due(
            t.last,
            generation=t.generation,
            request=t.request,
            now=now,
            interval=interval,
            last_attempt=t.attempted,
            rails_changed=t.rails_changed,
            cost=t.cost,
        )
    ]
    batch = sorted(due, key=_urgency)[:MAX_PER_TICK]
    for tracked in batch:
        tracked.attempted = now
    results = await asyncio.gather(*(refresh(t, now) for t in batch), return_exceptions=True)
    for tracked, result in zip(batch, results, strict=True):
        if isinstance(result, Exception):
            log.warning(f"preview of {tracked.namespace}/{tracked.name} failed: {result}")
        elif isinstance(result, BaseException):
            raise result
