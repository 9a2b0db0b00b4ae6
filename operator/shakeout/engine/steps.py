"""Attack steps and a blast radius per attack, decided without I/O.

An attack starts at an offset (`startAfterSeconds`) from a base: the time the run entered
ATTACKS_STARTED, or, when it names earlier attacks in `after`, the time the last of them
ended (rolled back, closed, or a dry run's window closed). Attacks with neither start
together when the attacks start, as they always did. The run's executor starts the
PENDING attacks that are due (`due_starts`) and wakes for the next one (`next_start`);
a stop skips the PENDING ones (engine.attacks.stop_actions).

An attack with its own `blastRadius` targets the pods its selector and limit pick in the
run's namespace; any other attack those of the Experiment's `blastRadius`. The caps of the
cluster apply to the union of every attack's targets (`union`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from shakeout.api.experiment import Attack, BlastRadius, ExperimentSpec
from shakeout.api.run import AttackResult, AttackState, ExperimentRunStatus, Phase
from shakeout.engine.targets import Selection

# The states of an attack that has ended: what `after` waits for.
ENDED: frozenset[AttackState] = frozenset(
    {AttackState.ROLLED_BACK, AttackState.COMPLETED, AttackState.SIMULATED}
)


def has_steps(spec: ExperimentSpec) -> bool:
    """Whether any attack waits (startAfterSeconds or after): else all start together."""
    return any(a.start_after_seconds or a.after for a in spec.attacks)


def blast_radius_of(spec: ExperimentSpec, attack: Attack) -> BlastRadius:
    """The attack's own blast radius, else the Experiment's."""
    return attack.blast_radius if attack.blast_radius is not None else spec.blast_radius


def has_own_blast_radius(spec: ExperimentSpec) -> bool:
    """Whether any attack names its own blast radius (else one resolution serves all)."""
    return any(a.blast_radius is not None for a in spec.attacks)


def schedule_offsets(spec: ExperimentSpec) -> dict[str, tuple[int, int]]:
    """(start, end) of each attack in seconds from ATTACKS_STARTED, were every attack to
    start on time and run its full duration (`after` names only earlier attacks, so one
    pass in order is enough)."""
    offsets: dict[str, tuple[int, int]] = {}
    for attack in spec.attacks:
        base = max((offsets[n][1] for n in attack.after if n in offsets), default=0)
        start = base + attack.start_after_seconds
        offsets[attack.name] = (start, start + attack.duration_seconds)
    return offsets


def schedule_seconds(spec: ExperimentSpec) -> int:
    """How long the attacks last at most: the end of the longest chain of offsets and
    durations (with no steps, the longest attack)."""
    return max((end for _start, end in schedule_offsets(spec).values()), default=0)


def attacks_started_at(status: ExperimentRunStatus) -> datetime | None:
    """When the run entered ATTACKS_STARTED, from its timeline."""
    return next((e.time for e in status.timeline if e.phase == Phase.ATTACKS_STARTED), None)


def _ended(result: AttackResult) -> datetime | None:
    if result.state not in ENDED:
        return None
    # An attack ended before ended_at was journaled: its rollback time, else its start.
    return result.ended_at or result.rolled_back_at or result.applied_at


def start_times(status: ExperimentRunStatus) -> dict[str, datetime]:
    """When each PENDING attack is due to start, for those whose base is known: the
    attacks have started and every attack it names in `after` has ended."""
    started = attacks_started_at(status)
    if started is None or status.experiment is None:
        return {}
    results = {r.name: r for r in status.attacks}
    due: dict[str, datetime] = {}
    for attack in status.experiment.attacks:
        result = results.get(attack.name)
        if result is None or result.state != AttackState.PENDING:
            continue
        ends = [_ended(results[n]) if n in results else None for n in attack.after]
        if any(end is None for end in ends):
            continue  # an attack it waits for has not ended
        base = max([e for e in ends if e is not None], default=started)
        due[attack.name] = base + timedelta(seconds=attack.start_after_seconds)
    return due


def due_starts(status: ExperimentRunStatus, now: datetime) -> list[str]:
    """The PENDING attacks due to start at `now`, in the order of the attacks."""
    if status.phase != Phase.ATTACKS_STARTED:
        return []
    return [name for name, at in start_times(status).items() if at <= now]


def next_start(status: ExperimentRunStatus, now: datetime) -> datetime | None:
    """When the next PENDING attack is due to start, after `now`; None if none is known."""
    if status.phase != Phase.ATTACKS_STARTED:
        return None
    return min((at for at in start_times(status).values() if at > now), default=None)


def first_starts(spec: ExperimentSpec) -> list[str]:
    """The attacks that start with the phase ATTACKS_STARTED (no offset, no `after`)."""
    return [a.name for a in spec.attacks if not a.start_after_seconds and not a.after]


def union(matched: Iterable[str], selections: Iterable[Selection]) -> Selection:
    """The run's targets over every blast radius: the pods any selector matched, and the
    pods any attack targets, each counted once (what the cluster's caps apply to)."""
    targets = sorted({name for selection in selections for name in selection.targets})
    return Selection(matched=len(set(matched)), targets=tuple(targets))
