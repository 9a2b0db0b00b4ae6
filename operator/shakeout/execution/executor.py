"""One live run, driven from its pick-up to its end: gather, ask the engine, persist, act.

Every decision is the engine's: the preconditions (engine/preconditions.py), the next phase
(engine/runs.py), how a stopped run ends (engine/ends.py) and what happens to each attack
(engine/attacks.py, carried out by AttackSteps). This class reads what they need, writes
the status they return (RunJournal), and only then touches the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from shakeout import metrics
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.labels import (
    CANCELED_BY,
    SCHEDULED_TRIGGER,
    STARTED_BY,
    TRIGGER_LABEL,
    ConditionType,
)
from shakeout.api.run import AttackState, ExperimentRunStatus, Phase, UserInfo
from shakeout.attacks.registry import RunAttacks
from shakeout.engine import attacks as lifecycle
from shakeout.engine import checks, concurrency, dryrun, ends
from shakeout.engine import runs as engine
from shakeout.engine import steps as step_schedule
from shakeout.engine.preconditions import (
    ATTACK_START,
    PICKUP,
    STEP_START,
    Check,
    Refusal,
    evaluate,
)
from shakeout.engine.runs import Reason, Transition, is_terminal
from shakeout.engine.targets import selector_to_string
from shakeout.engine.windows import blackout_in_force, describe, next_blackout
from shakeout.execution import clock, lock
from shakeout.execution.attack_steps import AttackSteps
from shakeout.execution.cleanup import outliving_the_caller
from shakeout.execution.journal import RunJournal
from shakeout.execution.live_runs import StopSignal
from shakeout.execution.records import RollbackRecord
from shakeout.gather import agents
from shakeout.gather import targets as gather_targets
from shakeout.gather.checks import run_check
from shakeout.gather.facts import gather_run_facts, recorded_user
from shakeout.gather.switch import blackout_windows, switch_enabled
from shakeout.gather.targets import FRESH_TARGETS
from shakeout.kube.client import api

# The longest the run sleeps between looks; its stop signal's wakeup cuts it short.
MAX_IDLE = 1.0
# How often a scheduled run waiting for its turn looks again (a stop wakes it at once).
WAIT_POLL = 1.0
VANISHED = (
    "the run object vanished during the run (deleted without the operator's finalizer); "
    "its attacks were rolled back from the operator's rollback record"
)


class RunHost(Protocol):
    """What the executor needs from whoever runs it (the kopf daemon, or a test)."""

    @property
    def body(self) -> Mapping[str, Any]:
        """The run as last seen (a live view: a cancel shows here)."""

    def deleting(self) -> bool: ...

    def shutting_down(self) -> bool: ...

    def post_event(self, type: str, reason: str, message: str) -> None: ...  # noqa: A002


class RunExecutor:
    def __init__(
        self, host: RunHost, signal: StopSignal, protected_namespaces: frozenset[str]
    ) -> None:
        self.host = host
        self.signal = signal
        self.protected_namespaces = protected_namespaces
        meta = host.body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        status = ExperimentRunStatus.model_validate(dict(host.body.get("status") or {}))
        ref = str(host.body["spec"]["experimentRef"]["name"])
        record = RollbackRecord(self.namespace, self.name, self.uid, ref)
        self.journal = RunJournal(self.namespace, self.name, status, record)
        self.attacks = RunAttacks(self.namespace, self.name, self.uid, signal.halt)
        # A dry run applies nothing: decided once, from the immutable spec and the journal.
        self.dry_run = dryrun.is_dry_run(bool(host.body["spec"].get("dryRun")), status)
        self.steps = AttackSteps(
            self.journal,
            self.attacks,
            self.uid,
            on_pending=self.rollback_is_pending,
            dry_run=self.dry_run,
        )
        self.rollback_failure: str | None = None
        self.background: set[asyncio.Task[None]] = set()
        self.next_check: dict[str, datetime] = {}
        # When the pick-up checked the preconditions (monotonic): a run that starts its
        # attacks moments later is not checked a second time.
        self.checked_at: float | None = None
        # When the next blackout window begins (within a day): the idle wait ends then.
        self.next_blackout: datetime | None = None
        # The bound a scheduled run may wait for its turn (seconds), once it found it taken.
        self.may_wait_for: int | None = None

    # -- plumbing ----------------------------------------------------------------------

    @property
    def status(self) -> ExperimentRunStatus:
        return self.journal.status

    @property
    def generation(self) -> int | None:
        gen = self.host.body["metadata"].get("generation")
        return int(gen) if gen is not None else None

    def recorded(self, key: str) -> UserInfo | None:
        return recorded_user(self.host.body["metadata"].get("annotations") or {}, key)

    def in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Bookkeeping off the critical path (the Experiment's lastRun, clean-up)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def announced(self, transition: Transition) -> Transition:
        """The transition as this run announces it: a dry run's says nothing is applied."""
        return engine.announce_dry_run(transition) if self.dry_run else transition

    def event(self, transition: Transition) -> None:
        transition = self.announced(transition)
        kind = "Warning" if transition.warning else "Normal"
        self.host.post_event(kind, transition.reason, transition.message)

    def rollback_is_pending(self, message: str) -> None:
        self.host.post_event("Warning", ConditionType.ROLLBACK_PENDING, message)

    async def update_experiment_last_run(self) -> None:
        if self.journal.detached:
            return  # the run is gone: the Experiment's lastRun keeps naming a run that exists
        ref = self.host.body["spec"]["experimentRef"]["name"]
        last = {
            "name": self.name,
            "phase": self.status.phase,
            "createdAt": self.host.body["metadata"].get("creationTimestamp"),
        }
        await api().patch_experiment_status(self.namespace, ref, {"lastRun": last})

    # -- pick-up -------------------------------------------------------------------------

    async def refuse(self, reason: Reason, message: str) -> None:
        started_by = self.recorded(STARTED_BY)
        now = clock.utcnow()
        await self.journal.write(
            engine.refuse(
                concurrency.stop_waiting(self.status, now, self.generation),
                reason,
                message,
                now,
                self.generation,
                started_by=started_by,
                dry_run=self.dry_run,
            )
        )
        metrics.RUNS.labels(Phase.FAILED, reason).inc()  # counted once it is recorded
        self.event(Transition(Phase.FAILED, reason, message))
        await self.update_experiment_last_run()

    async def pick_up(self) -> bool:
        """Check the preconditions and take the run's turn; False if the run was refused
        or ended while it waited. A scheduled run whose turn is taken waits for it
        (wait_for_turn) and is checked again in full when it tries again."""
        while (picked := await self.try_pick_up()) is None:
            pass
        return picked

    async def try_pick_up(self) -> bool | None:
        """One try at the pick-up: True if picked up, False if refused, None if it waited
        for its turn and tries again."""
        creator = self.recorded(STARTED_BY)
        ref = self.host.body["spec"]["experimentRef"]["name"]
        facts, _pods, switch, generation = await gather_run_facts(
            self.namespace,
            ref,
            self.uid,
            protected_namespaces=self.protected_namespaces,
            creator=creator,
        )
        if (refusal := evaluate(PICKUP, facts)) is not None:
            await self.refuse(refusal.reason, refusal.message)
            return False
        nodes = concurrency.held_nodes(
            facts.experiment, facts.scheduled_target_nodes, facts.control_plane_nodes, facts.switch
        )
        got = await lock.acquire(
            self.namespace, self.name, self.uid, prefetched=switch, nodes=nodes
        )
        if not got.acquired:
            if got.disabled:
                await self.refuse(Reason.EXPERIMENTING_DISABLED, "experimenting is disabled")
            elif got.conflict is not None:
                waited = await self.wait_for_turn(got.conflict, facts.experiment)
                if waited is None:
                    return False  # ended while waiting, or the operator is shutting down
                if waited:
                    return None
                message = got.conflict.message
                if self.may_wait_for is not None:
                    message = (
                        f"waited {self.may_wait_for} s for its turn (its Experiment's "
                        f"schedule.maxWaitSeconds) in vain: {message}"
                    )
                await self.refuse(got.conflict.reason, message)
            else:
                await self.refuse(
                    Reason.ANOTHER_RUN_ACTIVE,
                    f"another run is executing: run {got.holder} holds the cluster-wide lock",
                )
            return False
        self.checked_at = time.monotonic()
        spec, selection = facts.experiment, facts.selection
        assert spec is not None
        assert selection is not None
        node_level = any(a.node_level for a in spec.attacks)
        status = engine.initial_status(
            spec,
            clock.utcnow(),
            self.generation,
            targets=selection.summary(),
            agents=facts.target_nodes if node_level else (),
            experiment_generation=generation,
            started_by=creator,
            dry_run=self.dry_run,
        )
        if engine.straight_to_attacks(spec):
            # Written together with the attacks' journal a moment later (the lock on the
            # switch already says who runs): one write fewer before the first fault.
            self.journal.defer(status)
        else:
            await self.journal.write(status)
        self.event(Transition(Phase.CREATED, Reason.CREATED, "run picked up; lock acquired"))
        self.in_background(self.update_experiment_last_run())
        return True

    async def wait_for_turn(
        self, found: concurrency.Conflict, spec: ExperimentSpec | None
    ) -> bool | None:
        """A scheduled run whose turn is taken waits, up to its Experiment's
        schedule.maxWaitSeconds from its creation: True once it waited a while (try
        again); False when it may not wait or its bound passed (the caller refuses it with
        the conflict's reason); None when cancel, Stop All or its deletion ended the wait
        (ended here, nothing touched) or the operator is shutting down (it waits on after
        the restart: the bound counts from its creation)."""
        bound = spec.schedule.max_wait_seconds if spec and spec.schedule else 0
        meta = self.host.body["metadata"]
        # A forged trigger label on a manual run buys no more than its Experiment's bound.
        scheduled = (meta.get("labels") or {}).get(TRIGGER_LABEL) == SCHEDULED_TRIGGER
        stamp = meta.get("creationTimestamp")
        now = clock.utcnow()
        created = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else now
        deadline = concurrency.wait_deadline(created, bound)
        if scheduled and bound > 0:
            self.may_wait_for = bound
        if not concurrency.may_wait(scheduled, bound, now, deadline):
            return False
        status = concurrency.waiting(self.status, found, deadline, now, self.generation)
        if status.message != self.status.message:
            await self.journal.write(status)  # said once per holder, not once a second
            self.host.post_event("Normal", concurrency.WAITING, status.message or "")
        self.signal.wakeup.clear()
        pause = min(WAIT_POLL, max(0.05, (deadline - now).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.signal.wakeup.wait(), pause)
        if self.host.shutting_down():
            return None
        if (end := await self.wait_ended()) is not None:
            ended = concurrency.end_wait(
                self.status,
                end,
                clock.utcnow(),
                self.generation,
                started_by=self.recorded(STARTED_BY),
                canceled_by=self.recorded(CANCELED_BY),
            )
            await self.journal.write(ended)
            metrics.RUNS.labels(end.phase, end.reason).inc()
            self.event(end)
            await self.update_experiment_last_run()
            return None
        return True

    async def wait_ended(self) -> Transition | None:
        """What ends a run's wait for its turn at once: its cancel, its deletion, Stop All."""
        untouched = "while it waited for its turn; nothing was touched"
        if self.host.body["spec"].get("cancel"):
            return Transition(Phase.CANCELED, Reason.CANCELED, f"canceled {untouched}")
        if self.host.deleting():
            return Transition(Phase.CANCELED, Reason.RUN_DELETED, f"deleted {untouched}")
        if not await switch_enabled():
            return Transition(Phase.CANCELED, Reason.STOPPED_ALL, f"Stop All {untouched}")
        return None

    async def attack_start_refusal(self, chain: Sequence[Check] = ATTACK_START) -> Refusal | None:
        """The preconditions again, just before the attacks start: a warm-up can last
        hours, and the switch, the rails, the caps and the agents must still hold. Not
        asked again when the pick-up checked them moments ago."""
        if self.checked_at is not None and time.monotonic() - self.checked_at < FRESH_TARGETS:
            return None
        ref = self.host.body["spec"]["experimentRef"]["name"]
        facts, _pods, _switch, _generation = await gather_run_facts(
            self.namespace,
            ref,
            self.uid,
            protected_namespaces=self.protected_namespaces,
            creator=self.status.started_by,
            snapshot=self.journal.snapshot,
        )
        return evaluate(chain, facts)

    # -- what the run observes -------------------------------------------------------------

    async def stopping(self) -> bool:
        """Whether the run is being stopped: halted by a stop, canceled, deleted, Stop All,
        the operator shutting down, or an end decided before a restart."""
        return (
            self.signal.halt.is_set()
            or bool(self.host.body["spec"].get("cancel"))
            or self.host.deleting()
            or self.host.shutting_down()
            or ends.pending_end(self.status) is not None
            or not await switch_enabled()
            or await self.blackout(clock.utcnow()) is not None
        )

    def halted_for_nothing(self, other_stop: bool) -> bool:
        """Whether a stop halted this run although, when it looks, only the switch could
        say so and it is enabled again (Stop All pressed and undone within moments), or
        the stop was taken back. A halted run ends all the same, as stopped by Stop All:
        the attack it was applying stopped partway, and a NetworkIsolation ended its fault
        at once (attacks/network_isolation.py); a run that went on would claim a fault
        that is not there, and apply nothing in its later steps."""
        return self.signal.halt.is_set() and not other_stop

    async def blackout(self, now: datetime) -> str | None:
        """The switch's blackout window in force now, described, or None; notes when the
        next one begins. From the watch's view of the switch: no request per step."""
        windows = await blackout_windows()
        upcoming = next_blackout(windows, now, days=1)
        self.next_blackout = upcoming[0] if upcoming is not None else None
        in_force = blackout_in_force(windows, now)
        return describe(in_force) if in_force is not None else None

    async def run_checks(self, now: datetime, phase: Phase) -> None:
        """Probe the state checks that apply in `phase` and are due, and record what they
        found. A check that did not apply in the phase before is due at once."""
        spec = self.journal.snapshot
        applying = [c for c in spec.state_checks if checks.applies(c, phase)]
        for check in spec.state_checks:
            if not checks.applies(check, phase):
                self.next_check.pop(check.name, None)  # due at once when it applies again
        due = [c for c in applying if self.next_check.get(c.name, now) <= now]
        if not due:
            return
        selector = selector_to_string(spec.blast_radius.selector)
        results = await asyncio.gather(*(run_check(c, self.namespace, selector) for c in due))
        status = self.status
        for check, probe in zip(due, results, strict=True):
            self.next_check[check.name] = now + timedelta(seconds=check.interval_seconds)
            status = checks.record_check(status, check, probe, now, phase)
        await self.journal.write(status)

    async def agents_missing(self, phase: Phase) -> tuple[str, ...]:
        """Node agents of this run without a live lease, or that lost the run's faults."""
        live = (Phase.CREATED, Phase.PREPARED, Phase.ATTACKS_STARTED)
        if not self.status.agents or phase not in live:
            return ()
        missing = agents.missing(self.status.agents, self.steps.agent_holders)
        applied = any(
            r.state == AttackState.APPLIED and self.journal.attack(r.name).node_level
            for r in self.status.attacks
        )
        if phase == Phase.ATTACKS_STARTED and applied and not missing:
            # An agent cut off for a lease duration rolled back on its own and may hold
            # its lease again by now: its report says so.
            return tuple(await self.attacks.lost_nodes())
        return missing

    def idle_for(self, now: datetime) -> float:
        deadlines = list(self.next_check.values())
        if self.next_blackout is not None:
            deadlines.append(self.next_blackout)
        due = lifecycle.next_due(self.status, now)
        if self.status.phase == Phase.ATTACKS_STARTED and due is not None:
            deadlines.append(due)
        if (start := step_schedule.next_start(self.status, now)) is not None:
            deadlines.append(start)  # the next attack step
        seconds = min([(d - now).total_seconds() for d in deadlines] + [MAX_IDLE])
        return max(0.05, seconds)

    async def start_step(self, names: list[str]) -> None:
        """Start the attacks of a later step (engine/steps.py), when nothing stops the run:
        the preconditions once more (the caps over the union, the switch, the agents), then
        journal, apply, record. A refusal fails the run and rolls back what started."""
        self.checked_at = None  # the step's targets are resolved now, and checked:
        gather_targets.RECENT.drop(self.namespace, self.uid)  # not an earlier step's
        if (refusal := await self.attack_start_refusal(STEP_START)) is not None:
            await self.transition(
                Transition(Phase.FAILED, refusal.reason, refusal.message, rollback=True)
            )
            return
        self.host.post_event(
            "Normal", Reason.ATTACKS_STARTED, f"attack step started: {', '.join(names)}"
        )
        if (problem := await self.steps.apply(names)) is not None:
            await self.transition(
                Transition(Phase.FAILED, Reason.ATTACK_FAILED, problem, rollback=True)
            )

    # -- the loop ------------------------------------------------------------------------

    async def execute(self) -> None:
        if self.status.phase is None:
            if not await self.pick_up():
                return
        elif self.status.experiment is None:
            # A phase that the operator never wrote (someone patched status): there is no
            # journal to resume from and nothing was attacked by us. End it, never wedge.
            await self.refuse(
                Reason.INVALID_STATUS,
                "the run's status was not written by the operator (no experiment snapshot)",
            )
            return
        else:
            await self.steps.resume(stopping=await self.stopping())
        while not is_terminal(self.status.phase):
            await self.step()

    async def step(self) -> None:
        # Cleared before looking, so that a stop arriving meanwhile cuts the next wait.
        self.signal.wakeup.clear()
        if (end := ends.pending_end(self.status)) is not None:
            await self.transition(end)  # decided before a restart: finish it
            return
        now = clock.utcnow()
        assert self.status.phase is not None
        await self.run_checks(now, Phase(self.status.phase))
        if self.status.phase == Phase.ATTACKS_STARTED and lifecycle.failure(self.status) is None:
            for action in lifecycle.due_actions(self.status, now):
                if not await self.steps.stop(action):
                    # Retried until it succeeds, while every other attack is stopped too.
                    self.rollback_failure = f"the rollback of attack {action.name} keeps failing"
        assert self.status.phase is not None
        phase = Phase(self.status.phase)
        snapshot = self.journal.snapshot
        looked = clock.utcnow()
        cancel_requested = bool(self.host.body["spec"].get("cancel"))
        blackout = await self.blackout(looked)
        deleting = self.host.deleting()
        observation = engine.Observation(
            now=looked,
            phase=phase,
            phase_entered=engine.phase_entered(self.status) or now,
            experiment=snapshot,
            cancel_requested=cancel_requested,
            switch_enabled=await switch_enabled()
            and not self.halted_for_nothing(cancel_requested or deleting or bool(blackout)),
            blackout=blackout,
            deleting=deleting,
            shutting_down=self.host.shutting_down(),
            checks=checks.assess(self.status, snapshot, phase),
            agents_missing=await self.agents_missing(phase),
            attack_failure=None if self.rollback_failure else lifecycle.failure(self.status),
            rollback_failure=self.rollback_failure,
            attacks_finished=lifecycle.attacks_finished(self.status),
        )
        transition = engine.decide(observation)
        if transition is None and (due := step_schedule.due_starts(self.status, clock.utcnow())):
            await self.start_step(due)
            return
        if transition is None:
            await self.journal.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wakeup.wait(), self.idle_for(clock.utcnow()))
            return
        await self.transition(transition)

    async def transition(self, transition: Transition) -> None:
        transition = self.announced(transition)
        if transition.rollback:
            # The end goes into the journal with the first stop written (ends.begin_end).
            self.journal.status = ends.begin_end(self.status, transition)
            await self.steps.stop_all()  # returns once every rollback succeeded
            retried = lifecycle.retried_rollbacks(self.status)
            if transition.reason == Reason.ROLLBACK_FAILED and retried:
                transition = Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, retried)
        if transition.apply_attacks and (refusal := await self.attack_start_refusal()):
            # Nothing was applied: the run ends with the precondition's own reason.
            transition = self.announced(Transition(Phase.FAILED, refusal.reason, refusal.message))
        status = engine.enter(
            self.status, transition, clock.utcnow(), self.generation, self.recorded(CANCELED_BY)
        )
        self.event(transition)
        if transition.apply_attacks:
            # The attacks' journal carries this phase, written before acting.
            self.journal.status = status
            if (problem := await self.steps.apply_all()) is not None:
                await self.transition(Transition(Phase.FAILED, Reason.ATTACK_FAILED, problem))
            return
        if is_terminal(status.phase) or transition.rollback:
            await self.journal.write(status)
        else:
            self.journal.defer(status)
        if is_terminal(status.phase):
            await self.finish(transition)

    async def finish_vanished(self, resumed: bool) -> None:
        """The run object vanished (deleted without the operator's finalizer) after some of
        its attacks were journaled: roll them back from the rollback record, which is the
        journal from now on, and end. `resumed`: after an operator restart, so that what
        the record says was under way is finished first (as for any resumed run)."""
        self.journal.detach()
        if resumed and not is_terminal(self.status.phase):
            await self.steps.resume(stopping=True)
        if not is_terminal(self.status.phase):
            end = Transition(Phase.CANCELED, Reason.RUN_DELETED, VANISHED, rollback=True)
            await self.transition(end)
            return
        await self.journal.forget()
        await lock.release(self.uid)

    def record_end(self, transition: Transition) -> None:
        metrics.RUNS.labels(transition.phase, transition.reason).inc()
        if self.status.started_at and self.status.finished_at:
            seconds = (self.status.finished_at - self.status.started_at).total_seconds()
            metrics.RUN_DURATION.labels(transition.phase).observe(seconds)
        if transition.reason in (
            Reason.CANCELED,
            Reason.STOPPED_ALL,
            Reason.RUN_DELETED,
            Reason.BLACKOUT_BEGAN,
        ):
            metrics.stopped(self.uid, transition.reason)

    async def finish(self, transition: Transition) -> None:
        """After the end is recorded: drop the rollback record, give the lock back, tidy up."""
        self.record_end(transition)
        await self.journal.forget()
        await lock.release(self.uid)
        # Only what may have touched the cluster (a dry run's attacks touched nothing).
        # It may take longer than kopf lets the daemon live after the end: it goes on.
        clean_up = self.attacks.clean_up(lifecycle.acted(self.status))
        self.in_background(
            outliving_the_caller(
                clean_up, f"clean-up of run {self.name}", (self.namespace, self.uid)
            )
        )
        await self.update_experiment_last_run()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
