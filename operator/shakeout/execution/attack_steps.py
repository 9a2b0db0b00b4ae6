"""Applying, stopping and resuming the attacks of one run, as engine/attacks.py decides:
each step's status is written before the cluster is touched, and its outcome after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shakeout import metrics
from shakeout.api.experiment import Attack
from shakeout.attacks.registry import RunAttacks
from shakeout.engine import attacks as lifecycle
from shakeout.engine import dryrun, steps
from shakeout.execution import clock
from shakeout.execution.journal import RunJournal
from shakeout.gather import agents
from shakeout.gather.targets import resolve_attack_targets
from shakeout.kube.client import Pod


class AttackSteps:
    def __init__(
        self,
        journal: RunJournal,
        attacks: RunAttacks,
        uid: str,
        on_pending: Callable[[str], None] = lambda _message: None,
        dry_run: bool = False,
    ) -> None:
        self.journal = journal
        self.attacks = attacks
        self.uid = uid
        # A dry run journals what its attacks would do and applies none of them.
        self.dry_run = dry_run
        # Told once per attack whose rollback is pending (the executor posts an Event).
        self.on_pending = on_pending
        # Each node agent's lease holder when the attacks went out: another holder later
        # means the agent restarted, and its faults with it.
        self.agent_holders: dict[str, str] = {}

    async def apply_one(self, attack: Attack, pods: list[Pod]) -> lifecycle.ApplyOutcome:
        journaled = next((r for r in self.journal.status.attacks if r.name == attack.name), None)
        try:
            count = await self.attacks.apply(attack, pods, journaled)
        except Exception as err:  # noqa: BLE001  (recorded, then the run fails)
            return lifecycle.ApplyOutcome(attack.name, error=str(err))
        metrics.ATTACKS_APPLIED.labels(attack.type).inc()
        return lifecycle.ApplyOutcome(attack.name, targets=count)

    async def apply_all(self) -> str | None:
        """Start the attacks due when the phase ATTACKS_STARTED is entered: every one with
        no attack steps (engine/steps.py), else those with no offset and no `after`."""
        spec = self.journal.snapshot
        first = steps.first_starts(spec)
        if not first:
            # Every attack waits: the phase is written, the executor starts each when due.
            await self.journal.write(self.journal.status)
            return None
        return await self.apply(None if len(first) == len(spec.attacks) else first)

    async def apply(self, names: list[str] | None) -> str | None:
        """Journal the attacks `names` (None: every attack) as Applying (with their
        rollback data), then apply them. Returns why the attacks could not even be
        prepared (nothing was applied then). Each attack's targets are resolved now: a
        later step's when it starts."""
        journal, spec = self.journal, self.journal.snapshot
        chosen = [a for a in spec.attacks if names is None or a.name in names]
        # The rollback data and the targets, read at once (the targets are the pick-up's
        # own when they are fresh: listing thousands of pods is most of the first fault).
        targets = asyncio.create_task(
            resolve_attack_targets(journal.namespace, spec, self.uid, names)
        )

        def target_pods(name: str) -> Callable[[], Awaitable[list[Pod]]]:
            async def pods() -> list[Pod]:
                # For the attacks that journal what they will touch (a cordon's nodes).
                return (await targets).by_attack[name][1]

            return pods

        prepared = await asyncio.gather(
            *(self.attacks.prepare(a, target_pods(a.name)) for a in chosen),
            return_exceptions=True,
        )
        rollback_data: dict[str, dict[str, object]] = {}
        for attack, outcome in zip(chosen, prepared, strict=True):
            if isinstance(outcome, BaseException):
                targets.cancel()
                if not isinstance(outcome, Exception):
                    raise outcome
                return f"attack {attack.name} could not be prepared: {outcome}"
            rollback_data[attack.name] = outcome
        resolved = await targets
        # Every attack at once: the run's targets as resolved now (as always). One step of
        # them: the run's targets stay the pick-up's union; each attack journals its own.
        summary = resolved.union.summary() if names is None else None
        node_pods = [p for a in chosen if a.node_level for p in resolved.by_attack[a.name][1]]
        agent_nodes = sorted({p.node for p in node_pods if p.node})
        own = {a.name: [p.name for p in resolved.by_attack[a.name][1]] for a in chosen}
        step = None if names is None else [a.name for a in chosen]
        if self.dry_run:
            # The journal of what each attack would do: the end of a dry run's attacks.
            plans = {}
            for a in chosen:
                pods = resolved.by_attack[a.name][1]
                pod_names = sorted(p.name for p in pods)
                nodes = sorted({p.node for p in pods if p.node})
                plans[a.name] = dryrun.plan(a, pod_names, nodes, rollback_data[a.name])
            await journal.write(
                lifecycle.begin_simulation(
                    journal.status,
                    rollback_data,
                    plans,
                    summary,
                    agent_nodes,
                    now=clock.utcnow(),
                    names=step,
                    attack_targets=own,
                )
            )
            return None
        status = lifecycle.begin_apply(
            journal.status, rollback_data, summary, agent_nodes, names=step, attack_targets=own
        )
        if node_pods:
            # A later step's new agents join; those already known keep their holder.
            self.agent_holders = {**agents.holders(status.agents), **self.agent_holders}
        await journal.write(status)  # the journal: written before anything is touched
        outcomes = await asyncio.gather(
            *(self.apply_one(a, resolved.by_attack[a.name][1]) for a in chosen)
        )
        status, _ = lifecycle.record_applied(journal.status, outcomes, clock.utcnow())
        await journal.write(status)
        return None

    async def stop(self, action: lifecycle.StopAction) -> bool:
        """Stop one attack as the engine says, its rollback tried a few times in quick
        succession; False when the rollback is still pending (it stays RollingBack)."""
        journal = self.journal
        await journal.write(lifecycle.begin_stop(journal.status, action, clock.utcnow()))
        if action.kind != lifecycle.StopKind.ROLL_BACK:
            return True
        for attempt in range(lifecycle.ROLLBACK_QUICK_ATTEMPTS):
            if attempt:
                await asyncio.sleep(lifecycle.rollback_delay(attempt - 1))
            if await self.roll_back(action.name, attempt + 1):
                return True
        return False

    async def roll_back(self, name: str, attempts: int) -> bool:
        """One rollback attempt of a RollingBack attack; its outcome journaled. The first
        time it is still failing after the quick attempts, the rollback is pending: a
        condition and an Event say so."""
        journal = self.journal
        attack = journal.attack(name)
        result = next(r for r in journal.status.attacks if r.name == name)
        try:
            note = await self.attacks.rollback(attack, result)
        except Exception as err:  # noqa: BLE001  (retried until it succeeds)
            if attempts >= lifecycle.ROLLBACK_QUICK_ATTEMPTS:
                now = clock.utcnow()
                status = lifecycle.rollback_pending(journal.status, name, str(err), attempts, now)
                await journal.write(status)
                if attempts == lifecycle.ROLLBACK_QUICK_ATTEMPTS:
                    metrics.ROLLBACK_FAILURES.labels(attack.type).inc()
                    self.on_pending(f"rollback of attack {name} keeps failing, retrying: {err}")
            return False
        now = clock.utcnow()
        await journal.write(lifecycle.record_rollback(journal.status, name, now, note))
        metrics.ATTACKS_ROLLED_BACK.labels(attack.type).inc()
        return True

    async def stop_all(self) -> None:
        """Stop every attack that may still act: each rolled back in quick succession
        first, so that one stuck rollback never keeps the others' faults in place; then
        the stuck ones again and again, with a growing delay, until every one succeeded
        (a restart resumes this from the journal)."""
        pending = [
            action.name
            for action in lifecycle.stop_actions(self.journal.status)
            if not await self.stop(action)
        ]
        attempts = dict.fromkeys(pending, lifecycle.ROLLBACK_QUICK_ATTEMPTS)
        while pending:
            await asyncio.sleep(lifecycle.rollback_delay(min(attempts.values()) - 1))
            for name in list(pending):
                attempts[name] += 1
                if await self.roll_back(name, attempts[name]):
                    pending.remove(name)

    async def resume(self, stopping: bool) -> None:
        """After an operator restart: finish what the journal says was under way. A run
        being stopped applies nothing again: the stop rolls its attacks back as they are."""
        journal = self.journal
        status, again = lifecycle.resume(journal.status, clock.utcnow())
        if again and not stopping and not self.dry_run:
            # Re-applying a reversible attack is idempotent (each target's record is on
            # the target; a scale's rollback data is journaled).
            resolved = await resolve_attack_targets(
                journal.namespace, journal.snapshot, self.uid, again
            )
            outcomes = [
                await self.apply_one(journal.attack(name), resolved.by_attack[name][1])
                for name in again
            ]
            status, _ = lifecycle.record_applied(status, outcomes, clock.utcnow())
        await journal.write(status)
