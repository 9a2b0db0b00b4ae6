"""The node agent's connection to the cluster: its Lease, and the NodeAttacks of its node.

The agent renews the Lease `shakeout-agent-<node>` every renew interval and tells its
keeper (the child process that holds the faults) after each renewal. It watches the
NodeAttacks labelled with its node and reconciles each: applies it once, after checking it
against the run (the run's status, written only by the operator, is the authority), and
rolls it back when asked, when the run ended, or when the NodeAttack is gone.

Losing the API server: renewals fail, the heartbeats stop, and the keeper rolls every
fault back when the lease runs out, whatever this process is doing (even when frozen).
Faults lost that way are reported Failed on reconnection and never applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import watch

from shakeout.agent.node.capabilities import probe
from shakeout.agent.node.keeper_client import Keeper
from shakeout.api.common import GROUP, VERSION
from shakeout.api.experiment import Attack
from shakeout.api.labels import (
    AGENT_LABEL,
    AGENT_LABEL_VALUE,
    CAPABILITIES_ANNOTATION,
    NODE_ANNOTATION,
    NODE_LABEL,
    agent_lease_name,
)
from shakeout.api.nodeattack import NodeAttackPhase, TargetState
from shakeout.api.run import AttackState, Phase
from shakeout.kube.client import Api, Obj
from shakeout.kube.leases import micro_time, renewed
from shakeout.kube.resources import LEASES, NODE_ATTACKS, PODS, RUNS

log = logging.getLogger("shakeout.agent")


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


def fault_id(run_uid: str, attack: str, pod_uid: str) -> str:
    return f"{run_uid}/{attack}/{pod_uid}"


class NodeAgent:
    def __init__(self, options: AgentOptions, api: Api, keeper: Any, capabilities: Obj) -> None:
        self.options = options
        self.api = api
        self.keeper = keeper
        self.capabilities = capabilities
        self.identity = f"{options.node}_{uuid.uuid4().hex[:10]}"
        self.lease_name = agent_lease_name(options.node)
        self.last_renewal = 0.0
        # NodeAttack uid -> the fault ids this agent applied for it and still holds.
        self.held: dict[str, set[str]] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.events: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # NodeAttacks whose faults the keeper rolled back on its own (a lapse).
        self.lapsed: set[str] = set()

    # -- the lease ---------------------------------------------------------------

    def lease_body(self, current: Obj | None) -> Obj:
        body = renewed(
            current,
            agent_lease_name(self.options.node),
            self.options.namespace,
            self.identity,
            self.options.lease_duration,
        )
        meta = body["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), AGENT_LABEL: AGENT_LABEL_VALUE}
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            NODE_ANNOTATION: self.options.node,
            CAPABILITIES_ANNOTATION: json.dumps(self.capabilities, sort_keys=True),
        }
        return body

    async def renew(self) -> None:
        namespace = self.options.namespace
        current = await self.api.get(LEASES, namespace, self.lease_name)
        if current is None:
            await self.api.create(LEASES, namespace, self.lease_body(None))
        else:
            # A PUT with the resourceVersion read: a concurrent writer makes it a Conflict.
            path = LEASES.path(namespace, self.lease_name)
            await self.api.request("PUT", path, self.lease_body(current))
        self.last_renewal = time.monotonic()
        held = set(await self.keeper.heartbeat())
        # Faults the keeper no longer holds were rolled back by its deadline: they are
        # reported Failed by the next reconcile (never applied again).
        for uid, ids in list(self.held.items()):
            if ids - held:
                self.held[uid] = ids & held
                self.lapsed.add(uid)

    async def renew_loop(self) -> None:
        lost = False
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self.renew()
                if lost or self.lapsed:
                    log.warning("lease renewed again; reporting faults lost meanwhile")
                    lost = False
                    await self.resync()
            except Exception as err:  # noqa: BLE001  (the API server may be away: keep trying)
                expired = time.monotonic() - self.last_renewal > self.options.lease_duration
                log.warning(f"lease renewal failed: {err}")
                if expired and not lost:
                    lost = True
                    log.error("lease expired: rolling back every fault of this node")
                    try:
                        await self.keeper.rollback_all()
                    except Exception as err:  # noqa: BLE001  (the keeper keeps the rest journaled)
                        log.error(f"rollback after lease expiry incomplete: {err}")
                    self.held.clear()
            spent = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopping.wait(), max(0.05, self.options.renew_interval - spent)
                )

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
            try:
                await self.resync()
            except Exception as err:  # noqa: BLE001  (the next round tries again)
                log.warning(f"resync of NodeAttacks failed: {err}")

    async def resync(self) -> None:
        """List this node's NodeAttacks: reconcile each, roll back faults of vanished ones."""
        mine = f"{NODE_LABEL}={self.options.node}"
        items = await self.api.list_objects(NODE_ATTACKS, labels=mine)
        present = {o["metadata"]["uid"] for o in items}
        for uid in [u for u in self.held if u not in present]:
            await self.rollback_held(uid)
        await asyncio.gather(*(self.reconcile(o) for o in items))

    async def rollback_held(self, uid: str) -> None:
        for fid in sorted(self.held.pop(uid, set())):
            await self.keeper.rollback(fid)

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

    async def reconcile(self, obj: Obj, deleted: bool = False) -> None:
        uid = obj["metadata"]["uid"]
        lock = self.locks.setdefault(uid, asyncio.Lock())
        async with lock:
            try:
                await self._reconcile(obj, deleted)
            except Exception as err:
                log.exception(f"NodeAttack {obj['metadata'].get('name')}: {err}")

    async def _reconcile(self, obj: Obj, deleted: bool) -> None:
        uid = obj["metadata"]["uid"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        if deleted:
            await self.rollback_held(uid)
            return
        run = await self.api.get(RUNS, obj["metadata"]["namespace"], str(spec.get("runName")))
        refusal = self.refusal(obj, run)
        if spec.get("rollback") or refusal is not None:
            await self.rollback_held(uid)
            phase = status.get("phase")
            if phase is None and not spec.get("rollback"):
                await self.report(obj, NodeAttackPhase.FAILED, f"refused: {refusal}", [])
            elif phase not in (NodeAttackPhase.ROLLED_BACK, NodeAttackPhase.FAILED) and (
                phase is None or Attack.model_validate(spec.get("attack") or {}).reversible
            ):
                # (an applied irreversible attack keeps its Applied report: nothing to undo)
                targets = [
                    {"name": t["name"], "state": TargetState.ROLLED_BACK}
                    for t in status.get("targets") or spec.get("targets") or []
                ]
                await self.report(
                    obj, NodeAttackPhase.ROLLED_BACK, "rolled back by the node agent", targets
                )
            return
        phase = status.get("phase")
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
                [
                    {"name": t["name"], "state": TargetState.ROLLED_BACK}
                    for t in status.get("targets") or []
                ],
            )
            self.held.pop(uid, None)
            self.lapsed.discard(uid)

    def refusal(self, obj: Obj, run: Obj | None) -> str | None:
        """Why the NodeAttack must not (or no longer) be applied; None if it may."""
        spec = obj.get("spec") or {}
        if spec.get("node") != self.options.node:
            return f"meant for node {spec.get('node')}"
        if run is None or run["metadata"].get("uid") != spec.get("runUID"):
            return "its ExperimentRun is gone"
        run_status = run.get("status") or {}
        if run_status.get("phase") != Phase.ATTACKS_STARTED:
            return f"its ExperimentRun is {run_status.get('phase')}, not ATTACKS_STARTED"
        attack = Attack.model_validate(spec.get("attack") or {})
        planned = [
            Attack.model_validate(a)
            for a in (run_status.get("experiment") or {}).get("attacks") or []
        ]
        if attack not in planned:
            return f"attack {attack.name} is not in the run's copy of the Experiment"
        states = {a.get("name"): a.get("state") for a in run_status.get("attacks") or []}
        if states.get(attack.name) not in (AttackState.APPLYING, AttackState.APPLIED):
            return f"the run has attack {attack.name} in state {states.get(attack.name)}"
        return None

    async def apply(self, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        spec = obj["spec"]
        namespace = obj["metadata"]["namespace"]
        attack = Attack.model_validate(spec["attack"])
        on_node = f"spec.nodeName={self.options.node}"
        pods = await self.api.list_objects(PODS, namespace, fields=on_node)
        by_name = {p["metadata"]["name"]: p for p in pods}
        wanted = list(spec.get("targets") or [])
        # The journal: every target Applying before the first one is touched.
        await self.report(
            obj,
            NodeAttackPhase.APPLYING,
            f"applying {attack.type} to {len(wanted)} pod(s)",
            [{"name": t["name"], "state": TargetState.APPLYING} for t in wanted],
        )
        held = self.held.setdefault(uid, set())
        results = []
        parameters = attack.parameters()
        params = parameters.model_dump(by_alias=True, mode="json") if parameters else {}
        for target in wanted:
            pod = by_name.get(target["name"])
            if pod is None or pod["metadata"]["uid"] != target["uid"]:
                results.append(
                    {"name": target["name"], "state": TargetState.GONE, "message": "pod gone"}
                )
                continue
            fid = fault_id(spec["runUID"], attack.name, target["uid"])
            pod_ref = {
                "namespace": namespace,
                "name": target["name"],
                "uid": target["uid"],
                "annotations": dict(pod["metadata"].get("annotations") or {}),
            }
            try:
                await self.keeper.apply(fid, str(attack.type), params, pod_ref)
            except Exception as err:  # noqa: BLE001  (reported per target)
                results.append(
                    {"name": target["name"], "state": TargetState.FAILED, "message": str(err)[:500]}
                )
                continue
            if attack.reversible:
                held.add(fid)
            results.append({"name": target["name"], "state": TargetState.APPLIED})
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

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.renew()
        log.info(f"agent {self.identity} holds lease {agent_lease_name(self.options.node)}")
        thread = threading.Thread(target=self.watch_thread, args=(loop,), daemon=True)
        thread.start()
        await self.resync()
        await asyncio.gather(self.renew_loop(), self.event_loop(), self.resync_loop())


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
    )
    agent = NodeAgent(options, api, keeper, capabilities)
    log.info(f"node agent for {options.node} (pid {os.getpid()}, keeper {keeper.pid})")
    # A stop (the kubelet's SIGTERM) rolls back every fault before the process ends.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("stopping: rolling back every fault of this node")
    finally:
        agent.stopping.set()
        await keeper.stop()
