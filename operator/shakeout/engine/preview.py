"""An Experiment's preview: what a run created now would touch, and whether the rails would
let it in. Pure: the operator gathers the facts the way a run's own checks do
(gather/facts.py, with every candidate pod rather than one run's pick) and writes what
this returns into the Experiment's status.preview.

Why the verdict can be trusted: it is the precondition chain of a run (PREVIEW, in
engine/preconditions.py: what admission evaluates, but the lock) over the same facts. A
run picks its targets at random among the candidates (seeded with its UID, unknown
before it exists), so the checks that look at the targets' nodes (the agents, the node
cap of a cordon, the limit of agent nodes) are evaluated over the nodes of every
candidate: those checks only get stricter with more nodes, so "allowed" holds for
whichever pick a run makes; "refused" may be stricter than one lucky pick.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shakeout.api.experiment import (
    MAX_PREVIEW_NAMES,
    ExperimentPreview,
    PreviewAgent,
    PreviewPod,
)
from shakeout.engine.policies import cordon_nodes, has_node_cordon
from shakeout.engine.preconditions import (
    PREVIEW,
    RunFacts,
    agent_problems,
    evaluate,
    irreversible_attacks,
    node_attack_types,
)

# A request (the annotation shakeout.dev/preview-requested) is echoed back only in this
# form: it is user-written and lands in a status others read.
REQUEST_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# An Experiment's preview is computed at most once in this many seconds, whatever asks.
MIN_SECONDS_BETWEEN = 2.0
# ... and at most once in this many times what its last computation took: a preview is
# background work on the event loop that serves the webhooks and starts the attacks, and
# one over a blast radius of 10,000 pods takes a few hundred ms (recomputed after each
# Stop All and Continue, it took a third of the operator's time in bench/scale.py).
COST_SPACING = 20.0
# The spacing never grows past this: a preview asked for is still answered within it.
MAX_SPACING = 60.0
NOT_CONNECTED = (
    "no live Lease: a run would wait agentTimeoutSeconds for it, then fail (AgentsNotConnected)"
)


@dataclass(frozen=True)
class Candidate:
    """A pod that the blast radius can take now, and its node."""

    name: str
    node: str | None


@dataclass(frozen=True)
class Stamp:
    """What decides whether a preview is due: when, for which generation, answering which
    request (all the operator keeps of a preview in memory, whatever its size)."""

    time: datetime
    generation: int | None
    request: str | None

    @classmethod
    def of(cls, preview: ExperimentPreview) -> Stamp:
        return cls(preview.time, preview.observed_generation, preview.request)


def valid_request(value: object) -> str | None:
    """The preview request as it may be echoed, or None when it is absent or malformed."""
    if isinstance(value, str) and REQUEST_PATTERN.fullmatch(value):
        return value
    return None


def refresh_due(
    last: Stamp | None,
    *,
    generation: int | None,
    request: str | None,
    now: datetime,
    interval: float,
    last_attempt: datetime | None,
    rails_changed: bool = False,
    cost: float = 0.0,
) -> bool:
    """Whether an Experiment's preview should be computed now: never within
    MIN_SECONDS_BETWEEN of the last attempt, nor within COST_SPACING times the seconds it
    took (`cost`, up to MAX_SPACING); else when there is none, when it is for another
    generation of the spec, when the switch's rails changed since it was computed, when a
    new request asks, or when the preview (or the last attempt, which may have failed) is
    `interval` seconds old (0: only on changes and requests)."""
    spacing = min(MAX_SPACING, max(MIN_SECONDS_BETWEEN, COST_SPACING * cost))
    if last_attempt is not None and now - last_attempt < timedelta(seconds=spacing):
        return False
    if last is None or last.generation != generation or rails_changed:
        return True
    if request is not None and request != last.request:
        return True
    latest = max(last.time, last_attempt) if last_attempt is not None else last.time
    return interval > 0 and now - latest >= timedelta(seconds=interval)


def _verdict(facts: RunFacts) -> tuple[bool, str | None, str]:
    refusal = evaluate(PREVIEW, facts)
    if refusal is not None:
        return False, str(refusal.reason), refusal.message
    selection = facts.selection
    matched = selection.matched if selection else 0
    selected = len(selection.targets) if selection else 0
    message = f"a run created now would be admitted: {selected} of {matched} matching pods"
    if selected < matched:
        message += ", picked at random when it starts (seeded with its UID)"
    return True, None, message + " (if no other run holds the lock)"


def _agents(facts: RunFacts, nodes: Sequence[str], missing: Collection[str]) -> list[PreviewAgent]:
    if facts.experiment is None or not node_attack_types(facts.experiment):
        return []
    problems: dict[str, list[str]] = {}
    for node, problem in agent_problems(facts):
        problems.setdefault(node, []).append(problem)
    agents = []
    for node in nodes[:MAX_PREVIEW_NAMES]:
        connected = node not in missing
        said = problems.get(node) or ([] if connected else [NOT_CONNECTED])
        agents.append(
            PreviewAgent(node=node, connected=connected, problem="; ".join(said)[:1024] or None)
        )
    return agents


def _cordoned(facts: RunFacts) -> list[str]:
    spec, switch = facts.experiment, facts.switch
    if spec is None or switch is None:
        return []
    if not has_node_cordon(spec):
        return []
    nodes = cordon_nodes(facts.scheduled_target_nodes, facts.control_plane_nodes, switch)
    return list(nodes[:MAX_PREVIEW_NAMES])


def preview(
    facts: RunFacts,
    candidates: Sequence[Candidate],
    missing_agents: Collection[str],
    *,
    now: datetime,
    generation: int | None,
    request: str | None,
) -> ExperimentPreview:
    """The preview of an Experiment from the facts a run's checks look at, gathered with
    every candidate pod (`candidates`, whose nodes are facts.target_nodes); the agents of
    `missing_agents` hold no live Lease."""
    allowed, reason, message = _verdict(facts)
    selection = facts.selection
    pods = sorted(candidates, key=lambda c: c.name)
    nodes = sorted({c.node for c in candidates if c.node})
    spec = facts.experiment
    return ExperimentPreview(
        time=now,
        observed_generation=generation,
        request=request,
        allowed=allowed,
        reason=reason,
        message=message[:4096],
        matched=selection.matched if selection else 0,
        selected=len(selection.targets) if selection else 0,
        pods=[PreviewPod(name=c.name, node=c.node) for c in pods[:MAX_PREVIEW_NAMES]],
        nodes=nodes[:MAX_PREVIEW_NAMES],
        node_count=len(nodes),
        agents=_agents(facts, nodes, missing_agents),
        cordon_nodes=_cordoned(facts),
        irreversible_attacks=list(irreversible_attacks(spec))[:16] if spec else [],
    )
