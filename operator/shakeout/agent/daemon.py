"""The node agent's connection to the cluster: its Lease, and the NodeAttacks of its node.

The agent renews the Lease `shakeout-agent-<node>` every renew interval and tells its
keeper (the child process that holds the faults) after each renewal. It watches the
NodeAttacks labelled with its node and reconciles each: applies it once, after checking it
against the run (the run's status, written only by the operator, is the authority), and
rolls it back when asked, when the run ended, or when the NodeAttack is gone.

An apply goes target by target, each journaled (Applying) before it is touched, and
starts no further target once a rollback is asked for (spec.rollback or the NodeAttack's
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
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubernetes import watch

from shakeout.agent.lease import AgentLease, FatalError
from shakeout.agent.node.capabilities import probe
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.locate import kept_annotations
from shakeout.agent.nodeattacks import (
    fault_id,
    namespace_refusal,
    not_after,
    refusal,
    rolled_back,
    switch_enabled,
)
from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import Attack
from shakeout.api.labels import NODE_LABEL
from shakeout.api.nodeattack import NodeAttackPhase, TargetState
from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.client import Api, Obj
from shakeout.kube.leases import micro_time
from shakeout.kube.resources import NAMESPACES, NODE_ATTACKS, PODS, RUNS, SWITCHES

log = logging.getLogger("shakeout.agent")

LEASE_RAN_OUT = "the lease ran out"
SWITCH_OFF = "the ChaosSwitch is disabled (Stop All) or gone"
NOT_AFTER_PASSED = "its notAfter passed"
# Exit code when the keeper died or stopped answering: the kubelet restarts the agent.
KEEPER_LOST_EXIT = 3


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class AgentOptions:
    node: str
    namespace: str = "shakeout-system"
    lease_duration: float = 6.0
    renew_interval: float = 2.0
    locator: str = "runtime"
    journal: Path = Path("/var/lib/shakeout/journal.json")
    proc_root: str = "/proc"
    netns_dir: str = "/run/netns"
    # cgroup v2 in a container: the host's cgroup namespace (e.g. /proc/1/ns/cgroup with
    # hostPID), so that stress processes can join the target pod's cgroup.
    cgroup_namespace: str | None = None
    resync: float = 10.0
    # While an apply goes on, the run is read again at most this often (seconds): a stop
    # that reached neither the watch nor a resync yet halts it all the same.
    recheck: float = 0.5
    # Per-node stress caps (the keeper refuses beyond them, per target).
    max_stress_workers: int = _env_int("SHAKEOUT_AGENT_MAX_STRESS_WORKERS", 16)
    max_stress_mib: int = _env_int("SHAKEOUT_AGENT_MAX_STRESS_MIB", 4096)
    # How often the keeper retries a rollback that failed.
    retry_seconds: float = 10.0


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
        # The ChaosSwitch: False once it is disabled or deleted (nothing applied then).
        self.switch_on = True
        self.switching: asyncio.Task[None] | None = None
        # NodeAttack uid -> when this agent first saw it (the bound of one without notAfter).
        self.first_seen: dict[str, float] = {}
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

    # -- the ChaosSwitch -----------------------------------------------------------

    def switch_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the ChaosSwitch `default` (in a thread, like the NodeAttacks)."""
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.api.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    SWITCHES.plural,
                    field_selector=f"metadata.name={SWITCH_NAME}",
                    timeout_seconds=60,
                    _request_timeout=70,
                )
                for event in stream:
                    gone = event["type"] == "DELETED"
                    enabled = not gone and switch_enabled(event["object"])
                    loop.call_soon_threadsafe(self.switch_seen, enabled)
            except Exception as err:  # noqa: BLE001  (reconnect; resync covers the gap)
                log.warning(f"watch of the ChaosSwitch failed: {err}")
                time.sleep(1)

    async def read_switch(self) -> None:
        """Read the ChaosSwitch (at start and each resync: a watch may miss an event)."""
        try:
            switch = await self.api.get(SWITCHES, None, SWITCH_NAME)
        except Exception as err:  # noqa: BLE001  (keep what we knew; the watch goes on)
            log.warning(f"reading the ChaosSwitch failed: {err}")
            return
        self.switch_seen(switch_enabled(switch))

    def switch_seen(self, enabled: bool) -> None:
        was, self.switch_on = self.switch_on, enabled
        if was and not enabled:
            log.warning("the ChaosSwitch is disabled or gone: rolling back every fault")
            self.switching = asyncio.create_task(self.stop_all())
        elif enabled and not was:
            log.info("the ChaosSwitch is enabled again")

    async def stop_all(self) -> None:
        """Stop All: every fault of the node rolled back, then every NodeAttack reported."""
        try:
            await self.keeper.rollback_all()
        except Exception as err:  # noqa: BLE001  (the keeper retries what it could not)
            log.error(f"Stop All: the keeper could not roll back everything: {err}")
        await self.resync_logged()

    def bound(self, obj: Obj) -> float:
        """When the NodeAttack's faults end, whatever the operator does (epoch seconds)."""
        uid = obj["metadata"]["uid"]
        return not_after(obj, self.first_seen.setdefault(uid, time.time()))

    def own_refusal(self, obj: Obj) -> str | None:
        """Why the agent itself refuses to keep the NodeAttack (None: it may)."""
        if not self.switch_on:
            return SWITCH_OFF
        if obj.get("spec") and time.time() >= self.bound(obj):
            return NOT_AFTER_PASSED
        return None

    # -- NodeAttacks ---------------------------------------------------------------

    def watch_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """The watch runs in a thread (the client is synchronous) and feeds the queue."""
        selector = f"{NODE_LABEL}={self.options.node}"
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.api.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    NODE_ATTACKS.plural,
                    label_selector=selector,
                    timeout_seconds=60,
                    _request_timeout=70,
                )
                for event in stream:
                    loop.call_soon_threadsafe(
                        self.events.put_nowait, (event["type"], event["object"])
                    )
            except Exception as err:  # noqa: BLE001  (reconnect; resync covers the gap)
                log.warning(f"watch of NodeAttacks failed: {err}")
                time.sleep(1)

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
        await self.read_switch()
        mine = f"{NODE_LABEL}={self.options.node}"
        items = await self.api.list_objects(NODE_ATTACKS, labels=mine)
        present = {o["metadata"]["uid"] for o in items}
        for uid in [u for u in self.held if u not in present]:
            await self.reconcile({"metadata": {"uid": uid, "name": uid}}, deleted=True)
        await asyncio.gather(*(self.reconcile(o) for o in items))

    async def rollback_held(self, uid: str) -> None:
        left = self.held.pop(uid, set())
        for fid in sorted(left):
            try:
                await self.keeper.rollback(fid)
            except Exception:
                self.held.setdefault(uid, set()).update(left)  # the next reconcile retries
                raise
            left = left - {fid}

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
                        self.first_seen.pop(uid, None)
                else:
                    await self._reconcile(obj)
            except Exception as err:
                log.exception(f"NodeAttack {obj['metadata'].get('name')}: {err}")

    async def _reconcile(self, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        phase, targets = self.reports.get(uid, (status.get("phase"), status.get("targets")))
        refused = self.own_refusal(obj)
        if refused is None:
            namespace, name = obj["metadata"]["namespace"], str(spec.get("runName"))
            refused = refusal(obj, await self.api.get(RUNS, namespace, name), self.options.node)
        asked = uid in self.halted
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
        if phase is None:
            await self.apply(obj)
        elif (
            (uid not in self.held or uid in self.lapsed)
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
        own = self.own_refusal(obj)
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
        uid = obj["metadata"]["uid"]
        spec = obj["spec"]
        namespace = obj["metadata"]["namespace"]
        attack = Attack.model_validate(spec["attack"])
        wanted = list(spec.get("targets") or [])
        # The agent's own rail, before anything is touched: never a protected namespace.
        protected = namespace_refusal(
            await self.api.get(NAMESPACES, None, namespace), namespace, self.options.namespace
        )
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
        on_node = f"spec.nodeName={self.options.node}"
        pods = await self.api.list_objects(PODS, namespace, fields=on_node)
        by_name = {p["metadata"]["name"]: p for p in pods}
        # The journal: every target Applying before the first one is touched.
        await self.report(
            obj,
            NodeAttackPhase.APPLYING,
            f"applying {attack.type} to {len(wanted)} pod(s)",
            [{"name": t["name"], "state": TargetState.APPLYING} for t in wanted],
        )
        self.held.setdefault(uid, set())  # applied by this instance, even if nothing is held
        results: list[Obj] = []
        parameters = attack.parameters()
        params = parameters.model_dump(by_alias=True, mode="json") if parameters else {}
        # Halted between two targets: by a rollback asked for (seen by the watch or a
        # resync), by the lease's loss, or by the run, read again every `recheck` seconds.
        read_at = time.monotonic()  # the run was read just before the apply began
        halted = None
        for target in wanted:
            if uid in self.halted:
                halted = "a rollback was asked for"
            elif (own := self.own_refusal(obj)) is not None:
                halted = own
            elif self.lease.expired():
                halted = LEASE_RAN_OUT
            elif time.monotonic() - read_at >= self.options.recheck:
                read_at = time.monotonic()
                halted = await self.recheck(obj)
            if halted is not None:
                await self.stop_apply(obj, attack, results, halted)
                return
            pod = by_name.get(target["name"])
            results.append(await self.apply_target(obj, attack, params, target, pod))
        applied = sum(1 for r in results if r["state"] == TargetState.APPLIED)
        failed = [r for r in results if r["state"] == TargetState.FAILED]
        if failed and not applied:
            await self.rollback_held(uid)
            phase, message = NodeAttackPhase.FAILED, f"{failed[0]['name']}: {failed[0]['message']}"
        else:
            phase = NodeAttackPhase.APPLIED
            message = f"applied to {applied} of {len(wanted)} pod(s)" + (
                f"; {len(failed)} failed, e.g. {failed[0]['name']}: {failed[0]['message']}"
                if failed
                else ""
            )
        await self.report(obj, phase, message, results)

    async def apply_target(
        self, obj: Obj, attack: Attack, params: Obj, target: Obj, pod: Obj | None
    ) -> Obj:
        """Apply the attack to one target pod (None: not on this node); its result."""
        if pod is None or pod["metadata"]["uid"] != target["uid"]:
            return {"name": target["name"], "state": TargetState.GONE, "message": "pod gone"}
        fid = fault_id(obj["spec"]["runUID"], attack.name, target["uid"])
        pod_ref = {
            "namespace": obj["metadata"]["namespace"],
            "name": target["name"],
            "uid": target["uid"],
            # Only what a locator reads: never the team's other annotations (SEC-16).
            "annotations": kept_annotations(pod["metadata"].get("annotations") or {}),
        }
        try:
            await self.keeper.apply(
                fid, str(attack.type), params, pod_ref, not_after=self.bound(obj)
            )
        except Exception as err:  # noqa: BLE001  (reported per target)
            return {"name": target["name"], "state": TargetState.FAILED, "message": str(err)[:500]}
        if attack.reversible:
            # Looked up each time: a lease's loss empties `held` meanwhile.
            self.held.setdefault(obj["metadata"]["uid"], set()).add(fid)
        return {"name": target["name"], "state": TargetState.APPLIED}

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
        loop = asyncio.get_running_loop()
        await self.keeper_alive()
        await self.lease.renew()
        await self.renewed(again=False)
        log.info(f"agent {self.identity} holds lease {self.lease.name}")
        await self.read_switch()
        for target in (self.watch_thread, self.switch_thread):
            threading.Thread(target=target, args=(loop,), daemon=True).start()
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

    async def watch_keeper(self) -> None:
        """The keeper's exit is fatal: nobody would hold (or roll back) the faults."""
        code = await self.keeper.exited()
        if not self.stopping.is_set():
            raise FatalError(f"the keeper (pid {self.keeper.pid}) exited with code {code}")


async def run_agent(options: AgentOptions) -> None:
    api = Api(request_timeout=max(1.0, options.renew_interval))
    capabilities = {str(k): v for k, v in (await probe()).items()}
    options.journal.parent.mkdir(parents=True, exist_ok=True)
    keeper = await Keeper.start(
        journal=options.journal,
        deadline=options.lease_duration,
        locator=options.locator,
        proc_root=options.proc_root,
        netns_dir=options.netns_dir,
        cgroup_namespace=options.cgroup_namespace,
        max_stress_workers=options.max_stress_workers,
        max_stress_mib=options.max_stress_mib,
        retry_seconds=options.retry_seconds,
    )
    if keeper.unrecovered:
        log.error(f"the keeper could not roll back (retried on a timer): {keeper.unrecovered}")
    agent = NodeAgent(options, api, keeper, capabilities)
    log.info(f"node agent for {options.node} (pid {os.getpid()}, keeper {keeper.pid})")
    # A stop (the kubelet's SIGTERM) rolls back every fault before the process ends.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    fatal: FatalError | None = None
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("stopping: rolling back every fault of this node")
    except FatalError as err:
        log.critical(f"exiting, so that a new agent and keeper take over: {err}")
        fatal = err
    finally:
        agent.stopping.set()
        if fatal is None:
            await keeper.stop()
        else:
            with contextlib.suppress(Exception):
                await keeper.stop(timeout=10.0)
    if fatal is not None:
        raise SystemExit(KEEPER_LOST_EXIT)
