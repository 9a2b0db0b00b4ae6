"""Dry runs (spec.dryRun: true): which runs are dry, and what each attack would have done.

A dry run goes through every phase of a run, with its preconditions, its lock, its state
checks and its targets, and applies nothing. What it skips is decided here and in
engine/attacks.py (`begin_simulation`: SIMULATING attacks are never applied, re-applied
or rolled back), never by the code that acts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.run import ExperimentRunStatus

# How many names a plan lists before it counts the rest.
SHOWN_NAMES = 10


def is_dry_run(requested: bool, status: ExperimentRunStatus) -> bool:
    """Whether a run is dry: its spec asks for it (spec.dryRun, immutable), or its journal
    says it is (status.dryRun, written by the operator at pick-up). Either is enough: a
    dry run applies nothing even with one of them lost, and what a real run applied is
    rolled back by its journal's attack states whatever this says."""
    return requested or bool(status.dry_run)


def listed(names: Sequence[str]) -> str:
    """Names for a message: the first SHOWN_NAMES, then a count."""
    shown = ", ".join(names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _pods(targets: Sequence[str]) -> str:
    return f"{len(targets)} pod(s)" + (f": {listed(targets)}" if targets else "")


def plan(
    attack: Attack,
    targets: Sequence[str],
    nodes: Sequence[str],
    rollback_data: Mapping[str, object],
) -> str:
    """What the attack would do in a real run now, for the dry run's journal and report.

    targets: the names of the run's target pods, sorted; nodes: their nodes, sorted and
    unique; rollback_data: what a real run journals before applying it (a scale's
    previous count, a cordon's nodes), read from the cluster the same way.
    """
    kind = AttackType(attack.type)
    if kind == AttackType.SCALE_WORKLOAD and attack.scale_workload is not None:
        ref = attack.scale_workload.workload
        before = rollback_data.get("previous_replicas")
        return (
            f"dry run: would scale {ref.kind} {ref.name} from {before} to "
            f"{attack.scale_workload.replicas} replicas"
        )
    if kind == AttackType.NODE_CORDON:
        journaled = rollback_data.get("nodes")
        cordoned = [str(n) for n in journaled] if isinstance(journaled, list | tuple) else []
        return f"dry run: would cordon {len(cordoned)} node(s): {listed(cordoned) or 'none'}"
    if kind == AttackType.POD_DELETE:
        return f"dry run: would delete {_pods(targets)} (cannot be rolled back)"
    if kind == AttackType.NETWORK_ISOLATION:
        parameters = attack.network_isolation
        direction = parameters.direction if parameters is not None else "Both"
        return (
            f"dry run: would isolate {_pods(targets)} with a deny-all NetworkPolicy "
            f"(direction {direction})"
        )
    if kind == AttackType.ENDPOINT_REMOVAL:
        return f"dry run: would take {_pods(targets)} out of their Services' endpoints"
    if attack.node_level:
        return (
            f"dry run: would hand {kind} of {_pods(targets)} to the node agents of "
            f"{len(nodes)} node(s): {listed(nodes) or 'none'}"
        )
    return f"dry run: would apply {kind} to {_pods(targets)}"
