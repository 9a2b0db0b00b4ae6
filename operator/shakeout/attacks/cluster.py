"""API-level attacks and their rollback, executed by the operator itself.

Each API-level type of the catalogue (api/attacks.py) has an executor of its own, in a
module named after it (attacks/pod_delete.py, ...), registered in EXECUTORS; the rules
every executor keeps (idempotence, the record on the changed object) are in
attacks/context.py. ClusterAttacks is one run's entry to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.attacks.context import (
    AttackError,
    ClusterExecutor,
    RunContext,
    TargetPods,
    no_pods,
)
from shakeout.attacks.endpoint_removal import EndpointRemoval
from shakeout.attacks.network_isolation import NetworkIsolation
from shakeout.attacks.node_cordon import NodeCordon
from shakeout.attacks.pod_delete import PodDelete
from shakeout.attacks.scale_workload import ScaleWorkload
from shakeout.kube.client import Pod

# The executor of each API-level attack type (tests/unit/test_catalogue.py checks that
# these are exactly the catalogue's API-level types).
EXECUTORS: dict[AttackType, type[ClusterExecutor]] = {
    executor.type: executor
    for executor in (PodDelete, ScaleWorkload, NetworkIsolation, EndpointRemoval, NodeCordon)
}


class ClusterAttacks:
    """Executes the API-level attacks of one run in the run's namespace."""

    def __init__(
        self,
        namespace: str,
        run_name: str = "",
        run_uid: str = "",
        halt: asyncio.Event | None = None,
    ) -> None:
        # halt is set when the run is stopped: an attack being applied starts no further
        # target.
        self.run = RunContext(namespace, run_name, run_uid, halt or asyncio.Event())

    def executor(self, attack_type: str) -> ClusterExecutor:
        """This run's executor of an API-level type; AttackError for any other type."""
        executor = EXECUTORS.get(AttackType(attack_type))
        if executor is None:
            raise AttackError(f"{attack_type} is not an API-level attack")
        return executor(self.run)

    async def prepare(self, attack: Attack, pods: TargetPods = no_pods) -> dict[str, object]:
        """What to journal before applying: for a scale, the count to restore; for a
        cordon, the nodes."""
        return await self.executor(attack.type).prepare(attack, pods)

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        """Apply the attack; returns how many targets it acted on."""
        return await self.executor(attack.type).apply(attack, pods, journaled)

    async def rollback(self, attack: Attack, result: AttackResult) -> str | None:
        """Undo a reversible attack; a no-op for what was never applied or is undone. A
        note for the report, if any."""
        return await self.executor(attack.type).rollback(attack, result)

    async def clean_up(self, attack_types: Iterable[str]) -> None:
        """After the run ended: what the API-level types among `attack_types` left behind
        that selects nothing any more (isolation marks); other types are skipped."""
        present = set(attack_types)
        for kind, executor in EXECUTORS.items():
            if kind in present:
                await executor(self.run).clean_up()

    async def unmark(self) -> None:
        """Remove this run's isolation marks from its pods (idempotent)."""
        await NetworkIsolation(self.run).unmark()

    async def unmark_pod(self, name: str) -> None:
        """Remove the isolation mark of one pod if it is still this run's."""
        await NetworkIsolation(self.run).unmark_pod(name)
