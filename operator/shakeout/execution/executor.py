"""One live run, driven from its pick-up to its end: gather, ask the engine, persist, act.

Every decision is the engine's: the preconditions (engine/preconditions.py), the next phase
(engine/runs.py) and what happens to each attack (engine/attacks.py). This class reads
what they need, writes the status they return, and only then touches the cluster: the
status is the journal that an operator restarted at any point resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from shakeout import metrics
from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.labels import CANCELED_BY, STARTED_BY
from shakeout.api.run import AttackState, ExperimentRunStatus, Phase, UserInfo
from shakeout.attacks.registry import RunAttacks
from shakeout.engine import attacks as lifecycle
from shakeout.engine import runs as engine
from shakeout.engine.preconditions import ATTACK_START, PICKUP, Refusal, evaluate
from shakeout.engine.runs import Reason, Transition, is_terminal
from shakeout.engine.targets import selector_to_string
from shakeout.execution import lock
from shakeout.execution.live_runs import StopSignal
from shakeout.gather import agents
from shakeout.gather.checks import run_check
from shakeout.gather.facts import gather_run_facts
from shakeout.gather.switch import switch_enabled
from shakeout.gather.targets import FRESH_TARGETS, resolve_targets
from shakeout.kube.client import Pod, api
from shakeout.kube.errors import NotFound

# The longest the run sleeps between looks; its stop signal's wakeup cuts it short.
MAX_IDLE = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunGone(Exception):  # noqa: N818  (a state, like kopf's own)
    """The run object is gone (deleted before the operator's finalizer was on it): there
    is nothing left to drive, and nothing was attacked (a run is attacked only after its
    journal is written on it)."""


class RunHost(Protocol):
    """What the executor needs from whoever runs it (the kopf daemon, or a test)."""

    @property
    def body(self) -> Mapping[str, Any]:
        """The run as last seen (a live view: a cancel shows here)."""

    def deleting(self) -> bool: ...

    def shutting_down(self) -> bool: ...

    def post_event(self, type: str, reason: str, message: str) -> None: ...  # noqa: A002


def recorded_user(annotations: Mapping[str, Any], key: str) -> UserInfo | None:
    """Who started or canceled a run, as the mutating webhook recorded it."""
    value = annotations.get(key)
    if not value:
        return None
    try:
        return UserInfo.model_validate(json.loads(value))
    except (ValueError, ValidationError):
        return None


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
        self.attacks = RunAttacks(self.namespace, self.name, self.uid, signal.halt)
        self.status = ExperimentRunStatus.model_validate(dict(host.body.get("status") or {}))
        # Each node agent's lease holder when the attacks went out: another holder later
        # means the agent restarted, and its faults with it.
        self.agent_holders: dict[str, str] = {}
        self.rollback_failure: str | None = None
        # A transition that needs no action is kept in memory and written together with
        # the next write (the journal is always written before the cluster is touched).
        self.dirty = False
        self.background: set[asyncio.Task[None]] = set()
        self.next_check: dict[str, datetime] = {}
        # When the pick-up checked the preconditions (monotonic): a run that starts its
        # attacks moments later is not checked a second time.
        self.checked_at: float | None = None

    # -- plumbing ----------------------------------------------------------------------

    @property
    def generation(self) -> int | None:
        gen = self.host.body["metadata"].get("generation")
        return int(gen) if gen is not None else None

    @property
    def snapshot(self) -> ExperimentSpec:
        assert self.status.experiment is not None
        return self.status.experiment

    def attack(self, name: str) -> Attack:
        return next(a for a in self.snapshot.attacks if a.name == name)

    def recorded(self, key: str) -> UserInfo | None:
        return recorded_user(self.host.body["metadata"].get("annotations") or {}, key)

    async def persist(self, status: ExperimentRunStatus) -> None:
        try:
            await api().patch_run_status(self.namespace, self.name, status.to_k8s())
        except NotFound as err:
            raise RunGone(f"run {self.namespace}/{self.name} is gone") from err
        self.status = status
        self.dirty = False

    def in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Bookkeeping off the critical path (the Experiment's lastRun, clean-up)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def event(self, transition: Transition) -> None:
        kind = "Warning" if transition.warning else "Normal"
        self.host.post_event(kind, transition.reason, transition.message)

    async def update_experiment_last_run(self) -> None:
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
        now = utcnow()
        await self.persist(
            engine.refuse(self.status, reason, message, now, self.generation, started_by=started_by)
        )
        metrics.RUNS.labels(Phase.FAILED, reason).inc()  # counted once it is recorded
        self.event(Transition(Phase.FAILED, reason, message))
        await self.update_experiment_last_run()

    async def pick_up(self) -> bool:
        """Check the preconditions and take the lock; False if the run was refused."""
        creator = self.recorded(STARTED_BY)
        ref = self.host.body["spec"]["experimentRef"]["name"]
        facts, _, switch, generation = await gather_run_facts(
            self.namespace,
            ref,
            self.uid,
            protected_namespaces=self.protected_namespaces,
            creator=creator,
        )
        if (refusal := evaluate(PICKUP, facts)) is not None:
            await self.refuse(refusal.reason, refusal.message)
            return False
        got = await lock.acquire(self.namespace, self.name, self.uid, prefetched=switch)
        if not got.acquired:
            if got.disabled:
                await self.refuse(Reason.EXPERIMENTING_DISABLED, "experimenting is disabled")
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
            utcnow(),
            self.generation,
            targets=selection.summary(),
            agents=facts.target_nodes if node_level else (),
            experiment_generation=generation,
            started_by=creator,
        )
        if engine.straight_to_attacks(spec):
            # Written together with the attacks' journal a moment later (the lock on the
            # switch already says who runs): one write fewer before the first fault.
            self.status, self.dirty = status, True
        else:
            await self.persist(status)
        self.event(Transition(Phase.CREATED, Reason.CREATED, "run picked up; lock acquired"))
        self.in_background(self.update_experiment_last_run())
        return True

    async def attack_start_refusal(self) -> Refusal | None:
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
            snapshot=self.snapshot,
        )
        return evaluate(ATTACK_START, facts)

    # -- attacks -------------------------------------------------------------------------

    async def apply_one(self, attack: Attack, pods: list[Pod]) -> lifecycle.ApplyOutcome:
        try:
            count = await self.attacks.apply(attack, pods)
        except Exception as err:  # noqa: BLE001  (recorded, then the run fails)
            return lifecycle.ApplyOutcome(attack.name, error=str(err))
        metrics.ATTACKS_APPLIED.labels(attack.type).inc()
        return lifecycle.ApplyOutcome(attack.name, targets=count)

    async def apply_attacks(self) -> str | None:
        """Journal every attack as Applying (with its rollback data), then apply them.
        Returns why the attacks could not even be prepared (nothing was applied then)."""
        spec = self.snapshot
        # The rollback data and the targets, read at once (the targets are the pick-up's
        # own when they are fresh: listing thousands of pods is most of the first fault).
        targets = asyncio.create_task(resolve_targets(self.namespace, spec, self.uid))
        prepared = await asyncio.gather(
            *(self.attacks.prepare(a) for a in spec.attacks), return_exceptions=True
        )
        rollback_data: dict[str, dict[str, object]] = {}
        for attack, outcome in zip(spec.attacks, prepared, strict=True):
            if isinstance(outcome, BaseException):
                targets.cancel()
                if not isinstance(outcome, Exception):
                    raise outcome
                return f"attack {attack.name} could not be prepared: {outcome}"
            rollback_data[attack.name] = outcome
        selection, pods = await targets
        node_level = any(a.node_level for a in spec.attacks)
        status = lifecycle.begin_apply(
            self.status,
            rollback_data,
            selection.summary(),
            [p.node for p in pods if p.node] if node_level else [],
        )
        if node_level:
            self.agent_holders = agents.holders(status.agents)
        await self.persist(status)  # the journal: written before anything is touched
        outcomes = await asyncio.gather(*(self.apply_one(a, pods) for a in spec.attacks))
        status, _ = lifecycle.record_applied(self.status, outcomes, utcnow())
        await self.persist(status)
        return None

    async def stop_attack(self, action: lifecycle.StopAction) -> str | None:
        """Stop one attack as the engine says; the failure message if its rollback gave up."""
        await self.persist(lifecycle.begin_stop(self.status, action))
        if action.kind != lifecycle.StopKind.ROLL_BACK:
            return None
        attack = self.attack(action.name)
        result = next(r for r in self.status.attacks if r.name == action.name)
        attempt = 0
        while True:
            try:
                note = await self.attacks.rollback(attack, result)
            except Exception as err:  # noqa: BLE001  (retried, then reported)
                delay = lifecycle.rollback_delay(attempt)
                if delay is None:
                    status, failure = lifecycle.record_rollback_failure(
                        self.status, action.name, str(err)
                    )
                    await self.persist(status)
                    metrics.ROLLBACK_FAILURES.labels(attack.type).inc()
                    return failure
                await asyncio.sleep(delay)
                attempt += 1
                continue
            await self.persist(lifecycle.record_rollback(self.status, action.name, utcnow(), note))
            metrics.ATTACKS_ROLLED_BACK.labels(attack.type).inc()
            return None

    async def stop_all(self) -> str | None:
        """Stop every open attack; the rollback failures, if any."""
        errors = [
            error
            for action in lifecycle.stop_actions(self.status)
            if (error := await self.stop_attack(action)) is not None
        ]
        return "; ".join(errors) or None

    async def stopping(self) -> bool:
        """Whether the run is being stopped: canceled, deleted, Stop All, the operator
        shutting down, or an end decided before a restart."""
        return (
            bool(self.host.body["spec"].get("cancel"))
            or self.host.deleting()
            or self.host.shutting_down()
            or engine.pending_end(self.status) is not None
            or not await switch_enabled()
        )

    async def resume(self) -> None:
        """After an operator restart: finish what the journal says was under way. A run
        being stopped applies nothing again: the stop rolls its attacks back as they are."""
        status, again = lifecycle.resume(self.status, utcnow())
        if again and not await self.stopping():
            # Re-applying a reversible attack is idempotent (each target's record is on
            # the target; a scale's rollback data is journaled).
            _, pods = await resolve_targets(self.namespace, self.snapshot, self.uid)
            outcomes = [await self.apply_one(self.attack(name), pods) for name in again]
            status, _ = lifecycle.record_applied(status, outcomes, utcnow())
        await self.persist(status)

    # -- the loop ------------------------------------------------------------------------

    async def run_checks(self, now: datetime) -> tuple[str, str] | None:
        spec = self.snapshot
        due = [c for c in spec.state_checks if self.next_check.get(c.name, now) <= now]
        if not due:
            return None
        selector = selector_to_string(spec.blast_radius.selector)
        results = await asyncio.gather(*(run_check(c, self.namespace, selector) for c in due))
        status, failure = self.status, None
        for check, (ok, message) in zip(due, results, strict=True):
            self.next_check[check.name] = now + timedelta(seconds=check.interval_seconds)
            status = engine.record_check(status, check.name, ok, message, now)
            if not ok and failure is None:
                failure = (check.name, message)
        await self.persist(status)
        return failure

    async def agents_missing(self, phase: Phase) -> tuple[str, ...]:
        """Node agents of this run without a live lease, or that lost the run's faults."""
        live = (Phase.CREATED, Phase.PREPARED, Phase.ATTACKS_STARTED)
        if not self.status.agents or phase not in live:
            return ()
        missing = agents.missing(self.status.agents, self.agent_holders)
        applied = any(
            r.state == AttackState.APPLIED and self.attack(r.name).node_level
            for r in self.status.attacks
        )
        if phase == Phase.ATTACKS_STARTED and applied and not missing:
            # An agent cut off for a lease duration rolled back on its own and may hold
            # its lease again by now: its report says so.
            return tuple(await self.attacks.lost_nodes())
        return missing

    def idle_for(self, now: datetime) -> float:
        deadlines = list(self.next_check.values())
        due = lifecycle.next_due(self.status, now)
        if self.status.phase == Phase.ATTACKS_STARTED and due is not None:
            deadlines.append(due)
        seconds = min([(d - now).total_seconds() for d in deadlines] + [MAX_IDLE])
        return max(0.05, seconds)

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
            await self.resume()
        while not is_terminal(self.status.phase):
            await self.step()

    async def step(self) -> None:
        # Cleared before looking, so that a stop arriving meanwhile cuts the next wait.
        self.signal.wakeup.clear()
        if (end := engine.pending_end(self.status)) is not None:
            await self.transition(end)  # decided before a restart: finish it
            return
        now = utcnow()
        check_failure = await self.run_checks(now)
        failed_attack = lifecycle.failure(self.status)
        if self.status.phase == Phase.ATTACKS_STARTED and failed_attack is None:
            for action in lifecycle.due_actions(self.status, now):
                if (error := await self.stop_attack(action)) is not None:
                    self.rollback_failure = error
        assert self.status.phase is not None
        phase = Phase(self.status.phase)
        observation = engine.Observation(
            now=utcnow(),
            phase=phase,
            phase_entered=engine.phase_entered(self.status) or now,
            experiment=self.snapshot,
            cancel_requested=bool(self.host.body["spec"].get("cancel")),
            switch_enabled=await switch_enabled(),
            deleting=self.host.deleting(),
            shutting_down=self.host.shutting_down(),
            check_failure=check_failure,
            checks_succeeded_once=engine.checks_succeeded_once(self.status, self.snapshot),
            agents_missing=await self.agents_missing(phase),
            attack_failure=None if self.rollback_failure else lifecycle.failure(self.status),
            rollback_failure=self.rollback_failure,
            attacks_finished=lifecycle.attacks_finished(self.status),
        )
        transition = engine.decide(observation)
        if transition is None:
            if self.dirty:
                await self.persist(self.status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wakeup.wait(), self.idle_for(utcnow()))
            return
        await self.transition(transition)

    def record_end(self, transition: Transition) -> None:
        metrics.RUNS.labels(transition.phase, transition.reason).inc()
        if self.status.started_at and self.status.finished_at:
            seconds = (self.status.finished_at - self.status.started_at).total_seconds()
            metrics.RUN_DURATION.labels(transition.phase).observe(seconds)
        if transition.reason in (Reason.CANCELED, Reason.STOPPED_ALL, Reason.RUN_DELETED):
            metrics.stopped(self.uid, transition.reason)

    async def transition(self, transition: Transition) -> None:
        if transition.rollback:
            # The end goes into the journal with the first stop written (engine.begin_end).
            self.status = engine.begin_end(self.status, transition)
            if (error := await self.stop_all()) is not None:
                transition = Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, error)
        if transition.apply_attacks and (refusal := await self.attack_start_refusal()):
            # Nothing was applied: the run ends with the precondition's own reason.
            transition = Transition(Phase.FAILED, refusal.reason, refusal.message)
        status = engine.enter(
            self.status, transition, utcnow(), self.generation, self.recorded(CANCELED_BY)
        )
        self.event(transition)
        if transition.apply_attacks:
            # apply_attacks writes this phase together with its journal, before acting.
            self.status = status
            if (problem := await self.apply_attacks()) is not None:
                await self.transition(Transition(Phase.FAILED, Reason.ATTACK_FAILED, problem))
            return
        if is_terminal(status.phase) or transition.rollback:
            await self.persist(status)
        else:
            self.status, self.dirty = status, True
        if is_terminal(status.phase):
            await self.finish(transition)

    async def finish(self, transition: Transition) -> None:
        """After the end is recorded: give the lock back and tidy up."""
        self.record_end(transition)
        await lock.release(self.uid)
        self.in_background(self.attacks.clean_up(self.status.attacks))
        await self.update_experiment_last_run()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
