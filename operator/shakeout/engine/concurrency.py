"""Who may execute at the same time: the pure rules of the run lock.

The lock lives on the ChaosSwitch's status (execution/lock.py takes and releases it with a
compare-and-swap). It is a list of holders, status.activeRuns, each with the nodes it
holds; status.activeRun names the first of them (null when there is none), so that what
read the single holder before still reads "a run holds the lock".

Two runs conflict when
* the mode is Cluster: any two runs (one run executes at a time, cluster-wide);
* the mode is Namespace: two runs of one namespace (which keeps two runs off one pod or
  workload: both are namespaced), or two runs whose NodeCordon attacks may cordon a
  common node (nodes are shared by every namespace).
A holder whose nodes are not known (named only by status.activeRun, as an older operator
wrote it) conflicts with every run. Whatever the mode, holders taken under the other mode
count: switching the mode never lets two runs share anything, it only changes what the
next run is compared on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shakeout.api.common import ConditionStatus
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.run import ExperimentRunStatus, Phase, UserInfo
from shakeout.api.switch import ChaosSwitchSpec, Concurrency
from shakeout.engine.conditions import set_condition
from shakeout.engine.policies import cordon_nodes, has_node_cordon
from shakeout.engine.runs import MESSAGE_LIMIT, Reason, Transition, enter

# The condition a scheduled run shows while it waits for its turn (phase still unset).
WAITING = "Waiting"
SHOWN_NODES = 5


@dataclass(frozen=True)
class Holder:
    """A run that holds (or asks for) a turn, and the nodes it holds."""

    namespace: str
    name: str
    uid: str
    nodes: tuple[str, ...] = ()
    # False for a holder named only by status.activeRun: what it holds is not known.
    nodes_known: bool = True

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def as_status(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class Conflict:
    """Why a run may not take its turn now: the reason, the holder, and a message."""

    reason: Reason
    holder: Holder
    message: str


def holders_in(status: Mapping[str, Any] | None) -> list[Holder]:
    """The holders a switch's status names: status.activeRuns, and status.activeRun when
    it names a run activeRuns does not (written by an older operator: holds everything).
    Entries that are not well formed are skipped (the schema keeps them out)."""
    status = status or {}
    held: list[Holder] = []
    for entry in status.get("activeRuns") or []:
        if isinstance(entry, Mapping) and entry.get("name") and entry.get("uid"):
            nodes = entry.get("nodes") or []
            held.append(
                Holder(
                    namespace=str(entry.get("namespace", "")),
                    name=str(entry["name"]),
                    uid=str(entry["uid"]),
                    nodes=tuple(sorted({str(n) for n in nodes if isinstance(n, str)})),
                )
            )
    single = status.get("activeRun")
    if isinstance(single, Mapping) and single.get("name"):
        uid = str(single.get("uid") or "")
        if not uid or all(h.uid != uid for h in held):
            held.append(
                Holder(
                    namespace=str(single.get("namespace", "")),
                    name=str(single["name"]),
                    uid=uid,
                    nodes_known=False,
                )
            )
    return held


def held_nodes(
    spec: ExperimentSpec | None,
    scheduled_nodes: Iterable[str],
    control_plane: Iterable[str],
    switch: ChaosSwitchSpec | None,
) -> tuple[str, ...]:
    """The nodes a run holds: those its NodeCordon attacks may cordon (none without one)."""
    if spec is None or switch is None:
        return ()
    if not has_node_cordon(spec):
        return ()
    return cordon_nodes(scheduled_nodes, frozenset(control_plane), switch)


def _shown(nodes: Sequence[str]) -> str:
    more = len(nodes) - SHOWN_NODES
    return ", ".join(nodes[:SHOWN_NODES]) + (f" and {more} more" if more > 0 else "")


def conflict(mode: Concurrency, me: Holder, others: Iterable[Holder]) -> Conflict | None:
    """The first live holder (other than `me`) that `me` may not execute beside, or None.
    A turn taken (AnotherRunActive) is said before nodes held (TargetsHeld)."""
    others = [h for h in others if not (me.uid and h.uid == me.uid)]
    for holder in others:
        if mode == Concurrency.CLUSTER:
            return Conflict(
                Reason.ANOTHER_RUN_ACTIVE,
                holder,
                f"another run is executing: {holder.ref} holds the cluster-wide lock; only "
                "one run executes at a time, cluster-wide (concurrency: Cluster; wait for it "
                "to end, or stop it with kubectl shakeout stop)",
            )
        if holder.namespace == me.namespace:
            return Conflict(
                Reason.ANOTHER_RUN_ACTIVE,
                holder,
                f"another run is executing: {holder.ref} holds namespace {me.namespace}'s "
                "turn; one run executes per namespace at a time (concurrency: Namespace; "
                "wait for it to end, or stop it with kubectl shakeout stop)",
            )
        if not holder.nodes_known:
            return Conflict(
                Reason.ANOTHER_RUN_ACTIVE,
                holder,
                f"another run is executing: {holder.ref} holds the lock, and what it holds "
                "is not recorded (status.activeRun only); wait for it to end",
            )
    for holder in others:
        shared = sorted(set(me.nodes) & set(holder.nodes))
        if shared:
            return Conflict(
                Reason.TARGETS_HELD,
                holder,
                f"run {holder.ref} holds node(s) {_shown(shared)} that this run's NodeCordon "
                "would cordon; no two runs hold one node (wait for it to end)",
            )
    return None


def contenders(mode: Concurrency, me: Holder, held: Iterable[Holder]) -> list[Holder]:
    """The holders `me` would conflict with, were they alive: the only ones whose liveness
    matters for its turn."""
    return [h for h in held if conflict(mode, me, [h]) is not None]


def taken(live: Sequence[Holder], me: Holder) -> list[Holder]:
    """The holders after `me` takes its turn: the live ones (dead holders are taken over),
    and `me` last (or in its place, with what it holds now)."""
    return [h for h in live if h.uid != me.uid] + [me]


def released(held: Sequence[Holder], uid: str) -> list[Holder] | None:
    """The holders after run `uid` gives its turn back; None when it holds none."""
    if all(h.uid != uid for h in held):
        return None
    return [h for h in held if h.uid != uid]


def lock_status(held: Sequence[Holder]) -> dict[str, Any]:
    """The switch's status fields for these holders: activeRuns, and activeRun naming the
    first (null when there is none). A holder known only from activeRun stays there."""
    kept = [h for h in held if h.nodes_known]
    first = held[0] if held else None
    single = (
        None
        if first is None
        else {"namespace": first.namespace, "name": first.name, "uid": first.uid or None}
    )
    if single is not None and single["uid"] is None:
        del single["uid"]
    return {"activeRuns": [h.as_status() for h in kept], "activeRun": single}


# -- a scheduled run waiting for its turn ---------------------------------------------------


def wait_deadline(created: datetime, max_wait_seconds: int) -> datetime:
    """Until when a scheduled run waits for its turn: from its creation (set by the API
    server, so neither a restart nor anything a user writes moves it)."""
    return created + timedelta(seconds=max_wait_seconds)


def may_wait(scheduled: bool, max_wait_seconds: int, now: datetime, deadline: datetime) -> bool:
    """Whether a run refused its turn waits: only a scheduled one, within its bound. The
    bound is its Experiment's schedule.maxWaitSeconds, so a forged trigger label buys no
    more than what the team's own Experiment allows."""
    return scheduled and max_wait_seconds > 0 and now < deadline


def waiting(
    status: ExperimentRunStatus,
    found: Conflict,
    deadline: datetime,
    now: datetime,
    generation: int | None,
) -> ExperimentRunStatus:
    """The status of a run waiting for its turn: phase unset, the Waiting condition naming
    whom it waits for and until when."""
    message = f"waiting until {deadline.isoformat()} for its turn: {found.message}"
    new = status.model_copy(deep=True)
    new.reason = found.reason
    new.message = message[:MESSAGE_LIMIT]
    new.conditions = set_condition(
        new.conditions,
        type=WAITING,
        status=ConditionStatus.TRUE,
        reason=found.reason,
        message=message[:MESSAGE_LIMIT],
        now=now,
        generation=generation,
    )
    return new


def waited(status: ExperimentRunStatus) -> bool:
    """Whether the run waited for its turn (its Waiting condition is set)."""
    return any(c.type == WAITING for c in status.conditions)


def end_wait(
    status: ExperimentRunStatus,
    transition: Transition,
    now: datetime,
    generation: int | None,
    *,
    started_by: UserInfo | None = None,
    canceled_by: UserInfo | None = None,
) -> ExperimentRunStatus:
    """A waiting run that ends before its turn (canceled, Stop All, its bound passed):
    picked up and ended at once, nothing touched; the Waiting condition turns False."""
    base = status.model_copy(deep=True)
    if base.started_at is None:
        base.started_at = now
    if started_by is not None:
        base.started_by = started_by.model_copy(deep=True)
    base.conditions = set_condition(
        base.conditions,
        type=WAITING,
        status=ConditionStatus.FALSE,
        reason=transition.reason,
        message=transition.message[:MESSAGE_LIMIT],
        now=now,
        generation=generation,
    )
    created = Transition(Phase.CREATED, Reason.CREATED, "picked up")
    if base.phase is None:
        base = enter(base, created, now, generation)
    return enter(base, transition, now, generation, canceled_by)


def stop_waiting(
    status: ExperimentRunStatus, now: datetime, generation: int | None
) -> ExperimentRunStatus:
    """A run whose wait is over (its turn came): the Waiting condition turns False."""
    if not waited(status):
        return status
    new = status.model_copy(deep=True)
    new.reason, new.message = None, None
    new.conditions = set_condition(
        new.conditions,
        type=WAITING,
        status=ConditionStatus.FALSE,
        reason=Reason.CREATED,
        message="its turn came",
        now=now,
        generation=generation,
    )
    return new
