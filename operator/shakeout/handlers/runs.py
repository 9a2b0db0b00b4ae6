"""ExperimentRun handlers: one daemon per live run drives it through the seed's phases.

The daemon gathers observations, asks engine.runs.decide, persists the status the engine
returns, and only then acts on the cluster: status is the journal that an operator
restarted at any point resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import AttackType, Experiment
from shakeout.api.run import (
    MAX_AGENT_NODES,
    AttackResult,
    AttackState,
    ExperimentRunStatus,
    Phase,
    UserInfo,
)
from shakeout.engine import runs as engine
from shakeout.engine.experiments import describe_validation_error
from shakeout.engine.runs import Reason, Transition, is_terminal
from shakeout.engine.targets import Selection, selector_to_string
from shakeout.handlers import agents, metrics
from shakeout.handlers import switch as lock
from shakeout.handlers.attacks import ClusterAgent
from shakeout.handlers.authz import may_run_in
from shakeout.handlers.blast_radius import (
    ADMITTED,
    RecentResolutions,
    SelectorError,
    needs_detail,
    resolve_target_pods,
)
from shakeout.handlers.checks import run_check
from shakeout.handlers.k8s import RUNS, Conflict, Pod, api
from shakeout.handlers.node_attacks import NodeDispatcher
from shakeout.handlers.rails import rails_refusal
from shakeout.handlers.settings import FINALIZER, FINISHED_LABEL

# Set by the mutating webhook from the admission request's user info.
STARTED_BY = "shakeout.dev/started-by"
CANCELED_BY = "shakeout.dev/canceled-by"

# The longest the daemon sleeps between looks; wakeups (cancel, Stop All) cut it short.
MAX_IDLE = 1.0
ROLLBACK_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


def _user(annotation: str | None) -> UserInfo | None:
    if not annotation:
        return None
    try:
        return UserInfo.model_validate(json.loads(annotation))
    except (ValueError, ValidationError):
        return None


@kopf.on.event(GROUP, VERSION, "experimentruns")
def run_event(body: kopf.Body, **_: Any) -> None:
    """Wake a run's daemon at once when it is canceled or deleted (no polling delay)."""
    wanted = body.get("spec", {}).get("cancel") or body.get("metadata", {}).get("deletionTimestamp")
    uid = body.get("metadata", {}).get("uid", "")
    if wanted and uid in lock.SWITCH.wakeups:
        lock.SWITCH.request_stop(uid)


async def retire_run(namespace: str, name: str) -> None:
    """Take a finished run out of the operator's watch: label it finished, and take off
    the finalizer in the same write, as kopf will not see the run again (a run deleted
    later must not wait for an operator that no longer watches it). A compare-and-swap
    on the resourceVersion, so that no one else's finalizer is lost."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RUNS}/{name}"
    for _ in range(10):
        run = await api().get_run(namespace, name)
        if run is None:
            return
        meta = run["metadata"]
        finalizers = meta.get("finalizers") or []
        patch = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "labels": {FINISHED_LABEL: "true"},
                "finalizers": [f for f in finalizers if f != FINALIZER],
            }
        }
        with contextlib.suppress(Conflict):
            await api().request("PATCH", path, patch, merge_patch=True)
            return


async def _still_member(creator: UserInfo | None, namespace: str) -> bool:
    """Whether the creator recorded at admission may still run experiments here (with no
    identity recorded, RBAC alone authorized the create)."""
    return creator is None or await may_run_in(creator, namespace)


def _live(status: Any, **_: Any) -> bool:
    return not is_terminal((status or {}).get("phase"))


# When kopf stops the daemon (the run went terminal, was deleted, the operator exits) it
# first only signals `stopped` and waits cancellation_backoff seconds, so that the daemon
# finishes its rollback and bookkeeping; only then does it cancel the task.
@kopf.daemon(
    GROUP,
    VERSION,
    "experimentruns",
    id="lifecycle",
    when=_live,
    # An error (say, the API server away) restarts the daemon soon; it resumes from status.
    backoff=2,
    cancellation_backoff=55,
    cancellation_timeout=5,
)
async def lifecycle(
    body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any
) -> None:
    executor = RunExecutor(body, stopped, logger)
    lock.SWITCH.wakeups[executor.uid] = executor.wakeup
    lock.SWITCH.halts[executor.uid] = executor.agent.halt
    metrics.ACTIVE_RUNS.inc()
    try:
        await executor.execute()
        if is_terminal(executor.status.phase):
            await retire_run(executor.namespace, executor.name)
    except ApiException as err:
        if err.status != 404:
            raise
        # The run was deleted before kopf's finalizer was on it: nothing left to drive
        # (and nothing attacked: a run is attacked only after its journal is written).
        logger.info("the run is gone; its daemon ends")
        if executor.status.phase is not None:
            await lock.release(executor.uid)
    finally:
        metrics.ACTIVE_RUNS.dec()
        metrics.STOP_REQUESTED.pop(executor.uid, None)
        lock.SWITCH.wakeups.pop(executor.uid, None)
        lock.SWITCH.halts.pop(executor.uid, None)


@dataclass(frozen=True)
class Picked:
    """What a run that passed its preconditions will attack."""

    experiment: Experiment
    switch: dict[str, Any]
    selection: Selection
    pods: list[Pod]
    nodes: list[str]


class RunExecutor:
    def __init__(self, body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger):
        self.body = body  # a live view: kopf updates it as watch events arrive
        self.stopped = stopped
        self.logger = logger
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.wakeup = asyncio.Event()
        self.agent = ClusterAgent(self.namespace, self.name, self.uid)
        self.node_agents = NodeDispatcher(self.namespace, self.name, self.uid)
        # Each node agent's lease holder when the attacks went out: another holder later
        # means the agent restarted, and its faults with it.
        self.agent_holders: dict[str, str] = {}
        self.status = ExperimentRunStatus.model_validate(dict(body.get("status") or {}))
        self.attack_failure: str | None = None
        self.rollback_failure: str | None = None
        # A transition that needs no action is kept in memory and written together with
        # the next write (the journal is always written before the cluster is touched).
        self.dirty = False
        self.background: set[asyncio.Task[None]] = set()
        self.next_check: dict[str, datetime] = {}
        # The pick-up's targets, for its attacks moments later.
        self.picked = RecentResolutions()

    # -- plumbing --------------------------------------------------------------

    @property
    def generation(self) -> int | None:
        gen = self.body["metadata"].get("generation")
        return int(gen) if gen is not None else None

    async def persist(self, status: ExperimentRunStatus) -> None:
        await api().patch_run_status(self.namespace, self.name, status.to_k8s())
        self.status = status
        self.dirty = False

    def in_background(self, coro: Any) -> None:
        """Bookkeeping off the critical path (the Experiment's lastRun)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def event(self, transition: Transition) -> None:
        kopf.event(
            self.body,
            type="Warning" if transition.warning else "Normal",
            reason=transition.reason,
            message=transition.message,
        )

    async def update_experiment_last_run(self) -> None:
        ref = self.body["spec"]["experimentRef"]["name"]
        await api().patch_experiment_status(
            self.namespace,
            ref,
            {
                "lastRun": {
                    "name": self.name,
                    "phase": self.status.phase,
                    "createdAt": self.body["metadata"].get("creationTimestamp"),
                }
            },
        )

    def recorded(self, annotation: str) -> UserInfo | None:
        """Who started or canceled the run, as the mutating webhook recorded it."""
        return _user(self.body["metadata"].get("annotations", {}).get(annotation))

    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp")) or bool(
            self.stopped.reason and self.stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED
        )

    def shutting_down(self) -> bool:
        return bool(
            self.stopped.reason and self.stopped.reason & kopf.DaemonStoppingReason.OPERATOR_EXITING
        )

    # -- pick-up: the operator's own check of the preconditions -----------------

    async def refuse(self, reason: Reason, message: str) -> None:
        status = engine.refuse(self.status, reason, message, utcnow(), self.generation)
        status.started_by = self.recorded(STARTED_BY)
        await self.persist(status)
        metrics.RUNS.labels(Phase.FAILED, reason).inc()  # counted once it is recorded
        self.event(Transition(Phase.FAILED, reason, message))
        await self.update_experiment_last_run()

    async def pick_up(self) -> bool:
        """Check the preconditions again and take the lock; False if the run was refused."""
        outcome = await self.check_preconditions()
        if not isinstance(outcome, Picked):
            await self.refuse(*outcome)
            return False
        got = await lock.acquire(self.namespace, self.name, self.uid, prefetched=outcome.switch)
        if not got.acquired:
            if got.disabled:
                await self.refuse(Reason.EXPERIMENTING_DISABLED, "experimenting is disabled")
            else:
                await self.refuse(
                    Reason.ANOTHER_RUN_ACTIVE,
                    f"another run is executing: run {got.holder} holds the cluster-wide lock",
                )
            return False
        spec = outcome.experiment.spec
        status = engine.initial_status(spec, utcnow(), self.generation)
        self.picked.keep(
            self.uid, spec.blast_radius, needs_detail(spec), (outcome.selection, outcome.pods)
        )
        status.targets = outcome.selection.summary()
        status.agents = outcome.nodes
        status.experiment = spec
        status.experiment_generation = outcome.experiment.metadata.generation
        status.started_by = self.recorded(STARTED_BY)
        if engine.straight_to_attacks(spec):
            # Written together with the attacks' journal a moment later (the lock on the
            # switch already says who runs): one write fewer before the first fault.
            self.status, self.dirty = status, True
        else:
            await self.persist(status)
        self.event(Transition(Phase.CREATED, Reason.CREATED, "run picked up; lock acquired"))
        self.in_background(self.update_experiment_last_run())
        return True

    async def check_preconditions(self) -> Picked | tuple[Reason, str]:
        """The run's preconditions, as the operator sees them now: what it may attack, or
        why it may not run at all."""
        ref = self.body["spec"]["experimentRef"]["name"]
        # Defence in depth: the creator recorded at admission must still be a member of
        # the team (RBAC alone authorized the create when no identity was recorded).
        creator = self.recorded(STARTED_BY)
        # Independent reads at once: the pick-up is on the path to the first fault.
        obj, switch, facts, member = await asyncio.gather(
            api().get_experiment(self.namespace, ref),
            api().get_switch(),
            api().namespace_facts(self.namespace),
            _still_member(creator, self.namespace),
        )
        if obj is None:
            return Reason.EXPERIMENT_NOT_FOUND, f"Experiment {self.namespace}/{ref} not found"
        try:
            experiment = Experiment.model_validate(obj)
        except ValidationError as err:
            return Reason.EXPERIMENT_INVALID, describe_validation_error(err)
        if not (switch and switch.get("spec", {}).get("enabled")):
            return (
                Reason.EXPERIMENTING_DISABLED,
                "experimenting is disabled (ChaosSwitch default missing or enabled: false)",
            )
        spec = experiment.spec
        detail = needs_detail(spec)
        try:
            resolved = ADMITTED.take(self.uid, spec.blast_radius, detail)
            selection, pods = resolved or await resolve_target_pods(
                self.namespace, spec.blast_radius, self.uid, detail
            )
        except SelectorError as err:
            return Reason.EXPERIMENT_INVALID, str(err)
        namespace_problem, cap_problem = rails_refusal(
            facts, switch, selection.matched, len(selection.targets)
        )
        if namespace_problem:
            return Reason.NAMESPACE_PROTECTED, namespace_problem
        if cap_problem:
            return Reason.OVER_TARGET_CAP, cap_problem
        if not selection.targets:
            return (
                Reason.NO_TARGETS,
                f"the blast radius resolves to no pods in {self.namespace} "
                f"({selection.matched} matched the selector)",
            )
        if creator is not None and not member:
            return (
                Reason.UNAUTHORIZED,
                f"{creator.username} may not run experiments in namespace {self.namespace}",
            )
        nodes = sorted({p.node for p in pods if p.node}) if agents.node_attack_types(spec) else []
        if len(nodes) > MAX_AGENT_NODES:
            return (
                Reason.ATTACK_UNSUPPORTED,
                f"node-level attacks on {len(nodes)} nodes; at most {MAX_AGENT_NODES} per run",
            )
        if (problem := agents.unsupported(spec, nodes)) is not None:
            return Reason.ATTACK_UNSUPPORTED, problem
        return Picked(experiment, switch, selection, pods, nodes)

    # -- attacks ---------------------------------------------------------------

    def attack(self, name: str) -> Any:
        assert self.status.experiment is not None
        return next(a for a in self.status.experiment.attacks if a.name == name)

    async def apply_one(self, attack: Any, pods: list[Pod]) -> int:
        if attack.node_level:
            return await self.node_agents.apply(attack, pods)
        return await self.agent.apply(attack, pods)

    async def apply_attacks(self) -> None:
        """Journal every attack as Applying (with its rollback data), then apply them."""
        spec = self.status.experiment
        assert spec is not None
        # The rollback data of every attack and the current targets, read at once; with
        # no warm-up the pick-up's own resolution is fresh enough (a list of thousands of
        # pods is most of the time to the first fault).
        detail = needs_detail(spec)
        if (picked := self.picked.take(self.uid, spec.blast_radius, detail)) is not None:
            selection, pods = picked
            prepared = await asyncio.gather(*(self.agent.prepare(a) for a in spec.attacks))
        else:
            targets = asyncio.create_task(
                resolve_target_pods(self.namespace, spec.blast_radius, self.uid, detail)
            )
            prepared = await asyncio.gather(*(self.agent.prepare(a) for a in spec.attacks))
            selection, pods = await targets
        status = self.status
        for attack, rollback_data in zip(spec.attacks, prepared, strict=True):
            status = engine.update_attack(
                status, attack.name, state=AttackState.APPLYING, **rollback_data
            )
        status.targets = selection.summary()
        if agents.node_attack_types(spec):
            status.agents = sorted({*status.agents, *(p.node for p in pods if p.node)})
            self.agent_holders = agents.holders(status.agents)
        await self.persist(status)  # the journal: written before anything is touched

        async def one(attack: Any) -> tuple[str, dict[str, Any]]:
            try:
                count = await self.apply_one(attack, pods)
            except Exception as err:  # noqa: BLE001  (recorded, then the run fails)
                return attack.name, {"state": AttackState.FAILED, "message": str(err)[:1024]}
            return attack.name, {
                "state": AttackState.APPLIED,
                "applied_at": utcnow(),
                "targets": count,
            }

        results = await asyncio.gather(*(one(a) for a in spec.attacks))
        status = self.status
        for name, changes in results:
            status = engine.update_attack(status, name, **changes)
            if changes["state"] == AttackState.FAILED:
                self.attack_failure = f"attack {name} failed: {changes['message']}"
            else:
                metrics.ATTACKS_APPLIED.labels(self.attack(name).type).inc()
        await self.persist(status)

    async def finish_attack(self, result: AttackResult) -> str | None:
        """Stop one attack: roll back a reversible one, close an irreversible one."""
        attack = self.attack(result.name)
        if result.state == AttackState.PENDING:
            await self.persist(
                engine.update_attack(self.status, result.name, state=AttackState.SKIPPED)
            )
            return None
        if not result.reversible:
            await self.persist(
                engine.update_attack(self.status, result.name, state=AttackState.COMPLETED)
            )
            return None
        await self.persist(
            engine.update_attack(self.status, result.name, state=AttackState.ROLLING_BACK)
        )
        error = ""
        for attempt in range(ROLLBACK_ATTEMPTS):
            note = None
            try:
                if attack.node_level:
                    note = await self.node_agents.rollback(attack)
                else:
                    await self.agent.rollback(attack, result)
            except Exception as err:  # noqa: BLE001  (retried, then reported)
                error = str(err)[:900]
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            await self.persist(
                engine.update_attack(
                    self.status,
                    result.name,
                    state=AttackState.ROLLED_BACK,
                    rolled_back_at=utcnow(),
                    message=note or result.message,
                )
            )
            metrics.ATTACKS_ROLLED_BACK.labels(result.type).inc()
            return None
        await self.persist(
            engine.update_attack(self.status, result.name, state=AttackState.FAILED, message=error)
        )
        metrics.ROLLBACK_FAILURES.labels(result.type).inc()
        return f"rollback of {result.name} failed: {error}"

    async def rollback_all(self) -> str | None:
        open_states = {
            AttackState.PENDING,
            AttackState.APPLYING,
            AttackState.APPLIED,
            AttackState.ROLLING_BACK,
        }
        errors = []
        for result in list(self.status.attacks):
            if result.state not in open_states:
                continue
            if (err := await self.finish_attack(result)) is not None:
                errors.append(err)
        return "; ".join(errors) or None

    async def resume(self) -> None:
        """After an operator restart: finish what the journal says was under way."""
        self.logger.info(f"resuming run in phase {self.status.phase}")
        status = self.status
        pods: list[Pod] | None = None
        for result in status.attacks:
            if result.state == AttackState.APPLYING:
                if result.reversible:
                    # Re-applying is idempotent (each target's record is on the target);
                    # the rollback data of a scale is journaled.
                    if pods is None:
                        assert status.experiment is not None
                        _, pods = await resolve_target_pods(
                            self.namespace,
                            status.experiment.blast_radius,
                            self.uid,
                            needs_detail(status.experiment),
                        )
                    await self.apply_one(self.attack(result.name), pods)
                # An irreversible attack may have been applied: never apply it twice.
                status = engine.update_attack(
                    status,
                    result.name,
                    state=AttackState.APPLIED,
                    applied_at=result.applied_at or utcnow(),
                )
            elif result.state == AttackState.ROLLING_BACK:
                status = engine.update_attack(status, result.name, state=AttackState.APPLIED)
        await self.persist(status)

    # -- the loop --------------------------------------------------------------

    async def run_checks(self, now: datetime) -> tuple[str, str] | None:
        spec = self.status.experiment
        assert spec is not None
        failure = None
        selector = selector_to_string(spec.blast_radius.selector)
        due = [c for c in spec.state_checks if self.next_check.get(c.name, now) <= now]
        if not due:
            return None
        results = await asyncio.gather(*(run_check(c, self.namespace, selector) for c in due))
        status = self.status
        for check, (ok, message) in zip(due, results, strict=True):
            self.next_check[check.name] = now + timedelta(seconds=check.interval_seconds)
            status = engine.record_check(status, check.name, ok, message, now)
            if not ok and failure is None:
                failure = (check.name, message)
        await self.persist(status)
        return failure

    async def agents_missing(self, phase: Phase) -> tuple[str, ...]:
        """Node agents of this run without a live lease, or that lost the run's faults."""
        if not self.status.agents or phase not in (
            Phase.CREATED,
            Phase.PREPARED,
            Phase.ATTACKS_STARTED,
        ):
            return ()
        missing = agents.missing(self.status.agents, self.agent_holders)
        applied = any(
            r.state == AttackState.APPLIED and self.attack(r.name).node_level
            for r in self.status.attacks
        )
        if phase == Phase.ATTACKS_STARTED and applied and not missing:
            # An agent cut off for a lease duration rolled back on its own and may hold
            # its lease again by now: its report says so.
            return tuple(await self.node_agents.lost())
        return missing

    def idle_for(self, now: datetime) -> float:
        deadlines = list(self.next_check.values())
        spec = self.status.experiment
        if spec is not None and self.status.phase == Phase.ATTACKS_STARTED:
            plan = engine.attack_plan(self.status, spec, now)
            if plan.next_due:
                deadlines.append(plan.next_due)
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
        spec = self.status.experiment
        assert spec is not None
        # Cleared before looking, so that a cancel arriving meanwhile cuts the next wait.
        self.wakeup.clear()
        now = utcnow()
        check_failure = await self.run_checks(now)
        attacks_finished = False
        if self.status.phase == Phase.ATTACKS_STARTED and not self.attack_failure:
            plan = engine.attack_plan(self.status, spec, now)
            for name in plan.due:
                result = next(r for r in self.status.attacks if r.name == name)
                if (err := await self.finish_attack(result)) is not None:
                    self.rollback_failure = err
            attacks_finished = engine.attack_plan(self.status, spec, utcnow()).finished
        assert self.status.phase is not None
        phase = Phase(self.status.phase)
        observation = engine.Observation(
            now=utcnow(),
            phase=phase,
            phase_entered=engine.phase_entered(self.status) or now,
            experiment=spec,
            cancel_requested=bool(self.body["spec"].get("cancel")),
            switch_enabled=await lock.switch_enabled(),
            deleting=self.deleting(),
            shutting_down=self.shutting_down(),
            check_failure=check_failure,
            checks_succeeded_once=engine.checks_succeeded_once(self.status, spec),
            agents_missing=await self.agents_missing(phase),
            attack_failure=self.attack_failure,
            rollback_failure=self.rollback_failure,
            attacks_finished=attacks_finished,
        )
        transition = engine.decide(observation)
        if transition is None:
            if self.dirty:
                await self.persist(self.status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.idle_for(utcnow()))
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
        if transition.rollback and (error := await self.rollback_all()) is not None:
            transition = Transition(Phase.FAILED, Reason.ROLLBACK_FAILED, error)
        status = engine.enter(self.status, transition, utcnow(), self.generation)
        if transition.reason == Reason.CANCELED:
            status.canceled_by = self.recorded(CANCELED_BY)
        if transition.apply_attacks:
            # apply_attacks writes this phase together with its journal, before acting.
            self.status = status
            self.event(transition)
            await self.apply_attacks()
        elif is_terminal(status.phase) or transition.rollback:
            await self.persist(status)
            self.event(transition)
        else:
            self.status, self.dirty = status, True
            self.event(transition)
        if is_terminal(status.phase):
            self.record_end(transition)
            await lock.release(self.uid)
            if any(a.type == AttackType.NETWORK_ISOLATION for a in status.attacks):
                # Its marks select nothing once the policy is gone: cleaned up after the
                # end is recorded (and by handlers/cleanup.py after a restart).
                self.in_background(self.agent.unmark())
            await self.update_experiment_last_run()
            if self.background:
                await asyncio.gather(*self.background, return_exceptions=True)
