"""Applying, stopping and resuming the attacks of one run, as engine/attacks.py decides:
each step's status is written before the cluster is touched, and its outcome after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shakeout import metrics
from shakeout.api.experiment import Attack
from shakeout.attacks.registry import RunAttacks
from shakeout.engine import attacks as lifecycle
from shakeout.engine import dryrun
from shakeout.execution import clock
from shakeout.execution.journal import RunJournal
from shakeout.gather import agents
from shakeout.gather.targets import resolve_targets
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
        """Journal every attack as Applying (with its rollback data), then apply them.
        Returns why the attacks could not even be prepared (nothing was applied then)."""
        journal, spec = self.journal, self.journal.snapshot
        # The rollback data and the targets, read at once (the targets are the pick-up's
        # own when they are fresh: listing thousands of pods is most of the first fault).
        targets = asyncio.create_task(resolve_targets(journal.namespace, spec, self.uid))

        async def target_pods() -> list[Pod]:
            # For the attacks that journal what they will touch (a cordon's nodes).
            return (await targets)[1]

        prepared = await asyncio.gather(
            *(self.attacks.prepare(a, target_pods) for a in spec.attacks),
            return_exceptions=True,
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
        agent_nodes = [p.node for p in pods if p.node] if node_level else []
        if self.dry_run:
            # The journal of what each attack would do: the end of a dry run's attacks.
            names = sorted(p.name for p in pods)
            nodes = sorted({p.node for p in pods if p.node})
            plans = {
                a.name: dryrun.plan(a, names, nodes, rollback_data[a.name]) for a in spec.attacks
            }
            await journal.write(
                lifecycle.begin_simulation(
                    journal.status,
                    rollback_data,
                    plans,
                    selection.summary(),
                    agent_nodes,
                    now=clock.utcnow(),
                )
            )
            return None
        status = lifecycle.begin_apply(
            journal.status, rollback_data, selection.summary(), agent_nodes
        )
        if node_level:
            self.agent_holders = agents.holders(status.agents)
        await journal.write(status)  # the journal: written before anything is touched
        outcomes = await asyncio.gather(*(self.apply_one(a, pods) for a in spec.attacks))
        status, _ = lifecycle.record_applied(journal.status, outcomes, clock.utcnow())
        await journal.write(status)
        return None

    async def stop(self, action: lifecycle.StopAction) -> bool:
        """Stop one attack as the engine says, its rollback tried a few times in quick
        succession; False when the rollback is still pending (it stays RollingBack)."""
        journal = self.journal
        await journal.write(lifecycle.begin_stop(journal.status, action))
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
            _, pods = await resolve_targets(journal.namespace, journal.snapshot, self.uid)
            outcomes = [await self.apply_one(journal.attack(name), pods) for name in again]
            status, _ = lifecycle.record_applied(status, outcomes, clock.utcnow())
        await journal.write(status)
