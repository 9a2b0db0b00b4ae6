"""The node agent's connection to the cluster: its Lease, and the NodeAttacks of its node.

The agent renews the Lease `shakeout-agent-<node>` every renew interval and tells its
keeper (the child process that holds the faults) after each renewal. It watches the
NodeAttacks labelled with its node and reconciles each: applies it once, after checking it
against the run (the run's status, written only by the operator, is the authority), and
rolls it back when asked, when the run ended, or when the NodeAttack is gone.

An apply reads the run, the namespace and the node's pods side by side, journals every
target (Applying) before any is touched, hands them to the keeper in batches, and starts
no further batch once a rollback is asked for (spec.rollback or the NodeAttack's
deletion, seen by the watch or a resync), the lease ran out, or the run, read again
during the apply, no longer allows it; what it applied is then rolled back.

Losing the API server: renewals fail, the heartbeats stop, and the keeper rolls every
fault back when the lease runs out, whatever this process is doing (even when frozen).
Faults lost that way are reported Failed on reconnection and never applied again.

Bounds of its own, whatever the operator does: each fault goes to the keeper with the
NodeAttack's notAfter (or its duration from when this agent first saw it), and the keeper
rolls it back then; the ChaosSwitch `default` is watched, and its Stop All (or deletion)
rolls back every fault of the node and stops every apply; pods of protected namespaces
are never touched. The agent exits (non-zero) when its keeper dies or a heartbeat fails,
so that the kubelet restarts it and a new keeper recovers the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from shakeout.agent.guard import NodeGuard
from shakeout.agent.lease import AgentLease, FatalError
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import kept_annotations
from shakeout.agent.nodeattacks import (
    fault_id,
    namespace_refusal,
    refusal,
    rolled_back,
)
from shakeout.agent.options import AgentOptions
from shakeout.agent.watches import Watch
from shakeout.api.experiment import Attack
from shakeout.api.labels import NODE_LABEL
from shakeout.api.nodeattack import NodeAttackPhase, TargetState
from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.client import Api, Obj
from shakeout.kube.leases import micro_time
from shakeout.kube.resources import NAMESPACES, NODE_ATTACKS, PODS, RUNS, SWITCHES

log = logging.getLogger("shakeout.agent")

LEASE_RAN_OUT = "the lease ran out"


class NodeAgent:
    def __init__(self, options: AgentOptions, api: Api, keeper: Keeper, capabilities: Obj) -> None:
        self.options = options
        self.api = api
        self.keeper = keeper
        self.identity = f"{options.node}_{uuid.uuid4().hex[:10]}"
        self.lease = AgentLease(
            api,
            node=options.node,
            namespace=options.namespace,
            identity=self.identity,
            duration=options.lease_duration,
            capabilities=capabilities,
        )
        # NodeAttack uid -> the fault ids this agent applied for it and still holds.
        self.held: dict[str, set[str]] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.events: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # NodeAttacks whose faults the keeper rolled back on its own (a lapse).
        self.lapsed: set[str] = set()
        # NodeAttacks asked to roll back, or deleted: seen before their lock is taken, so
        # that an apply in progress starts no further target. Never applied again.
        self.halted: set[str] = set()
        # The last report per NodeAttack (phase, targets): fresher than an event's copy.
        self.reports: dict[str, tuple[str, list[Obj]]] = {}
        self.resyncing: asyncio.Task[None] | None = None
        # What the agent enforces on its own: the ChaosSwitch and each notAfter.
        self.guard = NodeGuard(api, self.stop_all)
        self.unrecovered_logged: dict[str, str] = {}

    # -- the lease ---------------------------------------------------------------

    async def keeper_alive(self) -> None:
        """Before each renewal: a Lease is never renewed with nobody holding the faults."""
        if not self.keeper.running:
            raise FatalError(f"the keeper (pid {self.keeper.pid}) is gone")

    async def renewed(self, again: bool) -> None:
        """After a renewal: tell the keeper; report what it rolled back on its own."""
        try:
            held = set(await self.keeper.heartbeat())
        except Exception as err:
            raise FatalError(f"heartbeat to the keeper failed: {err}") from err
        errors = self.keeper.unrecovered_errors
        if errors != self.unrecovered_logged:
            for fid, text in sorted(errors.items()):
                log.error(f"the keeper cannot roll back {fid} (retried on a timer): {text}")
            self.unrecovered_logged = dict(errors)
        # Faults the keeper no longer holds were rolled back by its deadline: they are
        # reported Failed by the next reconcile (never applied again).
        for uid, ids in list(self.held.items()):
            if ids - held:
                self.held[uid] = ids & held
                self.lapsed.add(uid)
        if (again or self.lapsed) and (self.resyncing is None or self.resyncing.done()):
            log.warning("lease renewed again; reporting faults lost meanwhile")
            # Not awaited: a resync waits for the applies in progress, renewals must not.
            self.resyncing = asyncio.create_task(self.resync_logged())

    async def lease_lost(self) -> None:
        log.error("lease expired: rolling back every fault of this node")
        self.held.clear()  # what the keeper cannot undo stays in its journal
        await self.keeper.rollback_all()

    # -- Stop All on the node ---------------------------------------------------------

    async def stop_all(self) -> None:
        """Stop All: every fault of the node rolled back, then every NodeAttack reported."""
        try:
            await self.keeper.rollback_all()
        except Exception as err:  # noqa: BLE001  (the keeper retries what it could not)
            log.error(f"Stop All: the keeper could not roll back everything: {err}")
        await self.resync_logged()

    # -- NodeAttacks ---------------------------------------------------------------

    async def event_loop(self) -> None:
        while not self.stopping.is_set():
            kind, obj = await self.events.get()
            task = asyncio.create_task(self.reconcile(obj, deleted=kind == "DELETED"))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def resync_loop(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.options.resync)
            await self.resync_logged()

    async def resync_logged(self) -> None:
        try:
            await self.resync()
        except Exception as err:  # noqa: BLE001  (the next round tries again)
            log.warning(f"resync of NodeAttacks failed: {err}")

    async def resync(self) -> None:
        """List this node's NodeAttacks: reconcile each, roll back faults of vanished ones."""
        await self.guard.read_switch()
        mine = f"{NODE_LABEL}={self.options.node}"
        items = await self.api.list_objects(NODE_ATTACKS, labels=mine)
        present = {o["metadata"]["uid"] for o in items}
        for uid in [u for u in self.held if u not in present]:
            await self.reconcile({"metadata": {"uid": uid, "name": uid}}, deleted=True)
        await asyncio.gather(*(self.reconcile(o) for o in items))

    async def rollback_held(self, uid: str) -> None:
        """Roll back the NodeAttack's faults, in one command to the keeper (which undoes
        them side by side); what it could not undo is tried again by the next reconcile."""
        left = self.held.pop(uid, set())
        if not left:
            return
        try:
            errors = await self.keeper.rollback_many(sorted(left))
        except Exception:
            self.held.setdefault(uid, set()).update(left)
            raise
        if errors:
            self.held.setdefault(uid, set()).update(set(errors) & left)
            fid, text = next(iter(errors.items()))
            raise RuntimeError(f"{len(errors)} fault(s) not rolled back, e.g. {fid}: {text}")

    async def report(self, obj: Obj, phase: str, message: str, targets: list[Obj]) -> None:
        meta = obj["metadata"]
        status = {
            "phase": phase,
            "agent": self.identity,
            "message": message[:1024],
            "targets": targets,
            "updatedAt": micro_time(),
        }
        await self.api.merge_patch(
            NODE_ATTACKS, meta["namespace"], meta["name"], {"status": status}, "status"
        )
        self.reports[meta["uid"]] = (phase, targets)

    async def reconcile(self, obj: Obj, deleted: bool = False) -> None:
        uid = obj["metadata"]["uid"]
        if deleted or (obj.get("spec") or {}).get("rollback"):
            self.halted.add(uid)  # before the lock, which an apply may hold
        async with self.locks.setdefault(uid, asyncio.Lock()):
            try:
                if deleted:
                    await self.rollback_held(uid)
                    self.reports.pop(uid, None)
                    if uid not in self.held:  # all undone: nothing of it to remember
                        self.halted.discard(uid)
                        self.locks.pop(uid, None)
                        self.guard.forget(uid)
                else:
                    await self._reconcile(obj)
            except Exception as err:
                log.exception(f"NodeAttack {obj['metadata'].get('name')}: {err}")

    async def _reconcile(self, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        phase, targets = self.reports.get(uid, (status.get("phase"), status.get("targets")))
        refused = self.guard.refusal(obj)
        asked = uid in self.halted
        if refused is None and phase is None and not asked:
            await self.apply(obj)  # which reads the run with the rest, and refuses
            return
        if refused is None:
            namespace, name = obj["metadata"]["namespace"], str(spec.get("runName"))
            refused = refusal(obj, await self.api.get(RUNS, namespace, name), self.options.node)
        if asked or refused is not None:
            await self.rollback_held(uid)
            self.lapsed.discard(uid)  # whatever the keeper lost, nothing is held now
            if phase is None and not asked:
                await self.report(obj, NodeAttackPhase.FAILED, f"refused: {refused}", [])
            elif phase not in (NodeAttackPhase.ROLLED_BACK, NodeAttackPhase.FAILED) and (
                phase is None or Attack.model_validate(spec.get("attack") or {}).reversible
            ):
                # (an applied irreversible attack keeps its Applied report: nothing to undo)
                await self.report(
                    obj,
                    NodeAttackPhase.ROLLED_BACK,
                    "rolled back by the node agent" + ("" if asked else f": {refused}"),
                    rolled_back(targets or spec.get("targets") or []),
                )
            return
        if (
            phase is not None
            and (uid not in self.held or uid in self.lapsed)
            and phase in (NodeAttackPhase.APPLYING, NodeAttackPhase.APPLIED)
            and Attack.model_validate(spec.get("attack") or {}).reversible
        ):
            # Applied by an earlier instance of this agent, or before the lease ran out:
            # those faults were rolled back, and are never applied a second time.
            await self.report(
                obj,
                NodeAttackPhase.FAILED,
                "the node agent restarted or lost its lease; its faults were rolled back",
                rolled_back(targets or []),
            )
            self.held.pop(uid, None)
            self.lapsed.discard(uid)

    async def recheck(self, obj: Obj) -> str | None:
        """The run read again during an apply: why it no longer allows it, if so."""
        own = self.guard.refusal(obj)
        if own is not None:
            return own
        namespace, name = obj["metadata"]["namespace"], str(obj["spec"].get("runName"))
        try:
            run = await self.api.get(RUNS, namespace, name)
        except Exception as err:  # noqa: BLE001  (the watch, or the lease's loss, still stop it)
            log.warning(f"re-reading run {name} during an apply failed: {err}")
            return None
        return refusal(obj, run, self.options.node)

    async def apply(self, obj: Obj) -> None:
        """Apply a NodeAttack seen for the first time, unless refused.

        Before anything is touched: the run, the namespace and the pods on the node are
        read side by side (one round trip), the refusal rails checked (the run allows
        it, the namespace is not protected), then every target journaled Applying in the
        NodeAttack's status. The targets then go to the keeper in batches of
        options.apply_batch (one /proc scan and two journal saves each, pods side by
        side); a halt is checked between two batches."""
        uid = obj["metadata"]["uid"]
        spec = obj["spec"]
        namespace = obj["metadata"]["namespace"]
        wanted = list(spec.get("targets") or [])
        began = time.monotonic()
        run, namespace_obj, pods = await asyncio.gather(
            self.api.get(RUNS, namespace, str(spec.get("runName"))),
            self.api.get(NAMESPACES, None, namespace),
            self.api.list_objects(PODS, namespace, fields=f"spec.nodeName={self.options.node}"),
        )
        refused = refusal(obj, run, self.options.node)
        if refused is not None:
            await self.report(obj, NodeAttackPhase.FAILED, f"refused: {refused}", [])
            return
        # The agent's own rail, before anything is touched: never a protected namespace.
        protected = namespace_refusal(namespace_obj, namespace, self.options.namespace)
        if protected is not None:
            log.warning(f"NodeAttack {obj['metadata']['name']} refused: {protected}")
            await self.report(
                obj,
                NodeAttackPhase.FAILED,
                f"refused by the node agent: {protected}",
                [
                    {"name": t["name"], "state": TargetState.FAILED, "message": protected}
                    for t in wanted
                ],
            )
            return
        attack = Attack.model_validate(spec["attack"])
        by_name = {p["metadata"]["name"]: p for p in pods}
        read = time.monotonic()
        # The journal: every target Applying before the first one is touched.
        await self.report(
            obj,
            NodeAttackPhase.APPLYING,
            f"applying {attack.type} to {len(wanted)} pod(s)",
            [{"name": t["name"], "state": TargetState.APPLYING} for t in wanted],
        )
        self.held.setdefault(uid, set())  # applied by this instance, even if nothing is held
        journaled = time.monotonic()
        results: list[Obj] = []
        parameters = attack.parameters()
        params = parameters.model_dump(by_alias=True, mode="json") if parameters else {}
        # Halted between two batches: by a rollback asked for (seen by the watch or a
        # resync), by the lease's loss, or by the run, read again every `recheck` seconds.
        read_at = time.monotonic()  # the run was read just before the apply began
        size = max(1, self.options.apply_batch)
        for start in range(0, len(wanted), size):
            halted = self.stopped(obj)
            if halted is None and time.monotonic() - read_at >= self.options.recheck:
                read_at = time.monotonic()
                halted = await self.recheck(obj)
            if halted is not None:
                await self.stop_apply(obj, attack, results, halted)
                return
            batch = wanted[start : start + size]
            results += await self.apply_batch(obj, attack, params, batch, by_name)
        if (halted := self.stopped(obj)) is not None:
            # Stopped during the last batch (the keeper may have started no more of it).
            await self.stop_apply(obj, attack, results, halted)
            return
        await self.report_applied(obj, results, (began, read, journaled))

    def stopped(self, obj: Obj) -> str | None:
        """Why an apply must go no further, as far as this agent knows without a read."""
        if obj["metadata"]["uid"] in self.halted:
            return "a rollback was asked for"
        if (own := self.guard.refusal(obj)) is not None:
            return own
        if self.lease.expired():
            return LEASE_RAN_OUT
        return None

    async def report_applied(
        self, obj: Obj, results: list[Obj], times: tuple[float, float, float]
    ) -> None:
        """The report of an apply that went through: Applied, or Failed when no target
        was applied (what was, is rolled back). times: when it began, read, journaled."""
        wanted = obj["spec"].get("targets") or []
        applied = sum(1 for r in results if r["state"] == TargetState.APPLIED)
        failed = [r for r in results if r["state"] == TargetState.FAILED]
        if failed and not applied:
            await self.rollback_held(obj["metadata"]["uid"])
            phase, message = NodeAttackPhase.FAILED, f"{failed[0]['name']}: {failed[0]['message']}"
        else:
            phase = NodeAttackPhase.APPLIED
            message = f"applied to {applied} of {len(wanted)} pod(s)" + (
                f"; {len(failed)} failed, e.g. {failed[0]['name']}: {failed[0]['message']}"
                if failed
                else ""
            )
        # Where an apply's time goes: the reads, the Applying journal, the keeper.
        began, read, journaled = times
        log.info(
            f"NodeAttack {obj['metadata']['name']}: {message} in "
            f"{(time.monotonic() - began) * 1000:.0f} ms (reads {(read - began) * 1000:.0f} "
            f"ms, journal {(journaled - read) * 1000:.0f} ms, keeper "
            f"{(time.monotonic() - journaled) * 1000:.0f} ms)"
        )
        await self.report(obj, phase, message, results)

    async def apply_batch(
        self, obj: Obj, attack: Attack, params: Obj, targets: list[Obj], pods: dict[str, Obj]
    ) -> list[Obj]:
        """Apply the attack to these target pods in one command to the keeper; a result
        per target, in order (a pod not on this node, or another by that name: gone)."""
        uid = obj["metadata"]["uid"]
        results: list[Obj] = []
        faults: list[Obj] = []
        not_after = self.guard.bound(obj)
        for target in targets:
            pod = pods.get(target["name"])
            if pod is None or pod["metadata"]["uid"] != target["uid"]:
                results.append(
                    {"name": target["name"], "state": TargetState.GONE, "message": "pod gone"}
                )
                continue
            results.append({"name": target["name"]})
            pod_ref = {
                "namespace": obj["metadata"]["namespace"],
                "name": target["name"],
                "uid": target["uid"],
                # Only what a locator reads: never the team's other annotations (SEC-16).
                "annotations": kept_annotations(pod["metadata"].get("annotations") or {}),
            }
            fid = fault_id(obj["spec"]["runUID"], attack.name, target["uid"])
            faults.append(
                {
                    "id": fid,
                    "type": str(attack.type),
                    "parameters": params,
                    "pod": pod_ref,
                    "notAfter": not_after,
                }
            )
        if not faults:
            return results
        try:
            replies = await self.keeper.apply_batch(faults)
        except Exception as err:  # noqa: BLE001  (reported per target)
            replies = [{"id": f["id"], "ok": False, "error": str(err)} for f in faults]
        sent = [r for r in results if "state" not in r]  # in the order of `faults`
        for fault, reply, result in zip(faults, replies, sent, strict=True):
            if reply.get("ok"):
                result["state"] = TargetState.APPLIED
                if attack.reversible:
                    # Looked up each time: a lease's loss empties `held` meanwhile.
                    self.held.setdefault(uid, set()).add(fault["id"])
            elif reply.get("halted"):
                result.update(state=TargetState.ROLLED_BACK, message="not applied")
            else:
                result.update(state=TargetState.FAILED, message=str(reply.get("error"))[:500])
        return results

    async def stop_apply(self, obj: Obj, attack: Attack, results: list[Obj], why: str) -> None:
        """An apply halted before all targets: undo what it did, report what it left."""
        uid, wanted = obj["metadata"]["uid"], obj["spec"].get("targets") or []
        applied = sum(1 for r in results if r["state"] == TargetState.APPLIED)
        if attack.reversible:
            await self.rollback_held(uid)
            if why == LEASE_RAN_OUT:
                self.lapsed.add(uid)  # reported Failed once the lease is renewed again
                return
            phase, results = NodeAttackPhase.ROLLED_BACK, rolled_back(results)
        else:
            phase = NodeAttackPhase.APPLIED  # nothing to undo: it stays Applied
        untouched = [
            {"name": t["name"], "state": TargetState.ROLLED_BACK, "message": "not applied"}
            for t in wanted[len(results) :]
        ]
        message = f"halted after {applied} of {len(wanted)} pod(s): {why}"
        await self.report(obj, phase, message, results + untouched)

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        await self.keeper_alive()
        await self.lease.renew()
        await self.renewed(again=False)
        log.info(f"agent {self.identity} holds lease {self.lease.name}")
        await self.guard.read_switch()
        node_attacks = Watch(self.api, NODE_ATTACKS, labels=f"{NODE_LABEL}={self.options.node}")
        node_attacks.start(lambda e: self.events.put_nowait((e["type"], e["object"])))
        switch = Watch(self.api, SWITCHES, fields=f"metadata.name={SWITCH_NAME}")
        switch.start(self.guard.switch_event)
        try:
            await self.resync()
            await asyncio.gather(
                self.lease.keep(
                    self.options.renew_interval,
                    self.stopping,
                    self.renewed,
                    self.lease_lost,
                    before=self.keeper_alive,
                ),
                self.event_loop(),
                self.resync_loop(),
                self.watch_keeper(),
            )
        finally:
            await node_attacks.stop()
            await switch.stop()

    async def watch_keeper(self) -> None:
        """The keeper's exit is fatal: nobody would hold (or roll back) the faults."""
        code = await self.keeper.exited()
        if not self.stopping.is_set():
            raise FatalError(f"the keeper (pid {self.keeper.pid}) exited with code {code}")
