"""What the executors of one run's API-level attacks share: the run, its stop signal, the
record an attack leaves on what it changed, and the executor's contract.

Every executor method is idempotent: applying twice gives the same state, rolling back
twice restores the same state, a target that is gone is skipped. The run's status journals
each attack before an executor is called (with what `prepare` returned); per target, the
record of what was changed lives on the changed object itself (a label or an annotation
written in the same request as the change), so that a rollback after an operator restart
finds every target.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shakeout.api.attacks import AttackType
from shakeout.api.common import API_VERSION
from shakeout.api.experiment import Attack
from shakeout.api.run import AttackResult
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import NotFound
from shakeout.kube.resources import PODS

# The run's target pods, resolved once for every attack that asks (see ClusterExecutor.prepare).
TargetPods = Callable[[], Awaitable[list[Pod]]]


async def no_pods() -> list[Pod]:
    return []


class AttackError(Exception):
    """An attack could not be applied or rolled back; the message says why."""


def run_owner(name: str, uid: str) -> Obj:
    """An ownerReference to a run: what an attack creates goes when the run is deleted."""
    return {"apiVersion": API_VERSION, "kind": "ExperimentRun", "name": name, "uid": uid}


@dataclass(frozen=True)
class RunContext:
    """One run, as its attacks see it: they act in its namespace, mark what they change
    with its UID, and start no further target once `halt` is set (the run is stopped)."""

    namespace: str
    run_name: str = ""
    run_uid: str = ""
    halt: asyncio.Event = field(default_factory=asyncio.Event)

    def owner_reference(self) -> Obj:
        return run_owner(self.run_name, self.run_uid)

    def record(self, attack: Attack, **extra: Any) -> str:
        """The record of a change, to be written on the changed object with the change."""
        return json.dumps({"run": self.run_uid, "attack": attack.name, **extra}, sort_keys=True)

    def ours(self, annotation: str | None, attack: Attack) -> dict[str, Any] | None:
        """The record in `annotation` if this run's `attack` wrote it, else None."""
        try:
            value = json.loads(annotation or "")
        except ValueError:
            return None
        mine = isinstance(value, dict) and value.get("run") == self.run_uid
        return value if mine and value.get("attack") == attack.name else None

    async def patch_pod(self, name: str, patch: Obj) -> bool:
        """Merge-patch a target; False when it is gone."""
        try:
            await api().merge_patch(PODS, self.namespace, name, patch)
        except NotFound:
            return False
        return True


class ClusterExecutor(ABC):
    """Executes one API-level attack type for one run (attacks/cluster.py registers one
    per type of api/attacks.py's catalogue whose level is API)."""

    type: ClassVar[AttackType]

    def __init__(self, run: RunContext) -> None:
        self.run = run

    async def prepare(self, attack: Attack, pods: TargetPods = no_pods) -> dict[str, object]:
        """What to journal before applying (the rollback data the cluster holds now, and
        what the attack will touch, from the target `pods` if it needs them); the result's
        fields of api/run.py AttackResult. An AttackError refuses the attack before
        anything is touched. Most types need nothing."""
        return {}

    @abstractmethod
    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        """Apply the attack to the targets; how many it acted on. `journaled`: the
        attack's result as journaled before (with what `prepare` returned)."""

    @abstractmethod
    async def rollback(self, attack: Attack, result: AttackResult) -> str | None:
        """Undo the attack; a no-op for what was never applied or is undone already. A note
        for the report (what was left alone, and why), if any."""

    async def clean_up(self) -> None:
        """After the run ended: remove what the rollback left and selects nothing any more.
        Most types leave nothing."""
        return None
