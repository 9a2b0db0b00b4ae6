"""NetworkIsolation: a deny-all NetworkPolicy over the targets, which carry a mark (a label)
that the policy selects. Rollback deletes the policy; the marks go after the run.

The policy is the fault: deleting it ends the fault of every target in one request. A
stop that comes while the targets are being marked deletes it at once, without waiting
for the marks in flight (up to 32 requests, which a busy API server answers in a few
hundred milliseconds); they land on pods that nothing selects any more, and the apply
returns only once every one of them did, so that the clean-up after the run, which lists
the marks, sees them all."""

from __future__ import annotations

import contextlib

from shakeout.api.attacks import AttackType, Direction
from shakeout.api.experiment import Attack
from shakeout.api.labels import ISOLATED, RUN_UID_LABEL
from shakeout.api.run import AttackResult
from shakeout.attacks.context import ClusterExecutor
from shakeout.attacks.fanout import each
from shakeout.kube.client import Pod, api
from shakeout.kube.errors import Conflict, KubeError, NotFound
from shakeout.kube.resources import NETWORK_POLICIES, PODS


class NetworkIsolation(ClusterExecutor):
    type = AttackType.NETWORK_ISOLATION

    def policy_name(self, attack: Attack) -> str:
        return f"shakeout-{attack.name}-{self.run.run_uid[:8]}"

    async def apply(
        self, attack: Attack, pods: list[Pod], journaled: AttackResult | None = None
    ) -> int:
        run = self.run
        direction = attack.network_isolation.direction if attack.network_isolation else "Both"
        types = ["Ingress", "Egress"] if direction == Direction.BOTH else [str(direction)]
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": self.policy_name(attack),
                "labels": {RUN_UID_LABEL: run.run_uid},
                # Deleting the run deletes the policy too (after our own rollback).
                "ownerReferences": [run.owner_reference()],
            },
            # No rules: everything of the listed directions is denied.
            "spec": {
                "podSelector": {"matchLabels": {ISOLATED: run.run_uid}},
                "policyTypes": types,
            },
        }
        if run.halt.is_set():
            return 0  # stopped before its first request: no fault to begin
        with contextlib.suppress(Conflict):  # already there: applied before a restart
            await api().create(NETWORK_POLICIES, run.namespace, policy)

        async def mark(pod: Pod) -> bool:
            return await run.patch_pod(pod.name, {"metadata": {"labels": {ISOLATED: run.run_uid}}})

        async def end_fault() -> None:
            # The run is being stopped (a halted run always ends: execution/executor.py),
            # and its rollback deletes the policy again (idempotent) and retries if this
            # failed: nothing to report here.
            with contextlib.suppress(KubeError):
                await self.delete_policy(attack)

        return sum(await each(pods, mark, run.halt, on_halt=end_fault))

    async def rollback(self, attack: Attack, result: AttackResult) -> None:
        """Deleting the policy ends the fault, in one request whatever the targets; the
        marks left on the pods select nothing any more and are removed after the run
        (clean_up, and execution/cleanup.py's sweep), off the path of Stop All."""
        await self.delete_policy(attack)

    async def delete_policy(self, attack: Attack) -> None:
        await api().delete(NETWORK_POLICIES, self.run.namespace, self.policy_name(attack))

    async def clean_up(self) -> None:
        await self.unmark()

    async def unmark(self) -> None:
        """Remove this run's isolation marks from its pods (idempotent)."""
        # Names are all it needs (not 3 KiB of JSON a pod); read fresh, not from the cache.
        marked = await api().list_pod_names(
            self.run.namespace, f"{ISOLATED}={self.run.run_uid}", cached=False
        )
        await each([p.name for p in marked], self.unmark_pod)

    async def unmark_pod(self, name: str) -> None:
        """Remove the mark only if it is still this run's: the next run may have marked
        the pod since it was listed (a JSON Patch whose test makes it conditional)."""
        key = "/metadata/labels/" + ISOLATED.replace("~", "~0").replace("/", "~1")
        patch = [
            {"op": "test", "path": key, "value": self.run.run_uid},
            {"op": "remove", "path": key},
        ]
        with contextlib.suppress(Conflict, NotFound):
            await api().request("PATCH", PODS.path(self.run.namespace, name), json_patch=patch)
