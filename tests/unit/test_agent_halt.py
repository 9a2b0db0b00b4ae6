"""A stop halts the node agent's apply between two targets, and what it applied is undone.

The agent runs on the in-memory API server of fake_kube and a keeper that only records;
a hook on the keeper's n-th apply changes the world at that exact point: a rollback
asked for (by an event or a resync), the NodeAttack deleted, the run stopped, the lease
run out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from shakeout.agent.daemon import NodeAgent
from shakeout.agent.options import AgentOptions
from shakeout.api.labels import NODE_LABEL
from shakeout.api.nodeattack import NodeAttackPhase, TargetState
from shakeout.api.run import AttackState, Phase
from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.client import Obj
from shakeout.kube.resources import NODE_ATTACKS, RUNS, SWITCHES
from tests.unit.fake_kube import FakeApi

NS = "team-a"
NODE = "node-1"
TARGETS = 50
BLACKHOLE = {"name": "bh", "type": "NetworkBlackhole", "durationSeconds": 60}
KILL = {"name": "kill", "type": "ProcessKill", "durationSeconds": 60}


class FakeKeeper:
    """The keeper's interface, in memory; `at(n, action)` runs action on the n-th apply."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.held: set[str] = set()
        self.rolled_back: list[str] = []
        self.hooks: dict[int, Callable[[], None]] = {}
        self.fail_rollbacks = 0
        self.not_after: dict[str, float | None] = {}
        self.pods: dict[str, Obj] = {}
        self.running = True
        self.pid = 4242
        self.unrecovered_errors: dict[str, str] = {}
        self.halts = 0  # rollback_all calls: a batch in progress starts no more

    def at(self, n: int, action: Callable[[], None]) -> None:
        self.hooks[n] = action

    async def apply(
        self, fid: str, kind: str, params: Obj, pod: Obj, *, not_after: float | None = None
    ) -> Obj:
        self.applied.append(fid)
        self.not_after[fid] = not_after
        self.pods[fid] = pod
        if kind != "ProcessKill":
            self.held.add(fid)
        if (hook := self.hooks.get(len(self.applied))) is not None:
            hook()
        await asyncio.sleep(0)  # a real apply waits for the keeper: others run meanwhile
        return {}

    async def apply_batch(self, faults: list[Obj]) -> list[Obj]:
        """As the keeper does: each fault in turn here; none started once a rollback_all
        came in meanwhile (they say "halted")."""
        halts = self.halts
        results: list[Obj] = []
        for fault in faults:
            if self.halts != halts:
                results.append({"id": fault["id"], "ok": False, "error": "halted", "halted": True})
                continue
            pod, kind = fault["pod"], fault["type"]
            record = await self.apply(fault["id"], kind, {}, pod, not_after=fault.get("notAfter"))
            results.append({"id": fault["id"], "ok": True, "record": record})
        return results

    async def rollback_many(self, fids: list[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for fid in fids:
            try:
                await self.rollback(fid)
            except RuntimeError as err:
                errors[fid] = str(err)
        return errors

    async def rollback(self, fid: str) -> None:
        await asyncio.sleep(0)
        if self.fail_rollbacks:
            self.fail_rollbacks -= 1
            raise RuntimeError("the keeper did not answer rollback")
        if fid in self.held:
            self.held.discard(fid)
            self.rolled_back.append(fid)

    async def heartbeat(self) -> list[str]:
        return sorted(self.held)

    async def rollback_all(self) -> None:
        self.halts += 1
        self.rolled_back.extend(sorted(self.held))
        self.held.clear()


class World:
    """A run in ATTACKS_STARTED with one node-level attack, its NodeAttack for NODE with
    TARGETS pods, and the agent of NODE holding its Lease."""

    def __init__(self, attack: Obj, recheck: float = 0.5, batch: int = 1) -> None:
        self.fake = FakeApi()
        self.fake.add_namespace(NS)
        self.fake.add_namespace("shakeout-system")
        self.fake.add_switch()
        self.attack = attack
        status = {
            "phase": Phase.ATTACKS_STARTED,
            "experiment": {"attacks": [attack]},
            "attacks": [{"name": attack["name"], "state": AttackState.APPLIED}],
        }
        self.run = self.fake.add_run(NS, "r1", "exp", status=status)
        pods = [self.fake.add_pod(NS, f"web-{i}", {"app": "web"}, node=NODE) for i in range(50)]
        self.node_attack = self.fake.put(
            NODE_ATTACKS,
            NS,
            {
                "metadata": {"name": "r1-a-0", "labels": {NODE_LABEL: NODE}},
                "spec": {
                    "runName": "r1",
                    "runUID": self.run["metadata"]["uid"],
                    "node": NODE,
                    "attack": attack,
                    "targets": [
                        {"name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}
                        for p in pods[:TARGETS]
                    ],
                },
            },
        )
        self.keeper = FakeKeeper()
        # One target per keeper command unless asked: a stop is seen between two.
        options = AgentOptions(node=NODE, recheck=recheck, apply_batch=batch)
        self.agent = NodeAgent(options, self.fake, self.keeper, capabilities={})
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def uid(self) -> str:
        return str(self.node_attack["metadata"]["uid"])

    def current(self) -> Obj:
        """The NodeAttack as a watch event would carry it now."""
        obj = self.fake.peek(NODE_ATTACKS, NS, "r1-a-0")
        assert obj is not None
        return dict(obj)

    def status(self) -> Obj:
        return dict(self.current().get("status") or {})

    def soon(self, work: Any) -> None:
        """Start `work` as the agent's event loop would: a task of its own."""
        self.tasks.append(asyncio.create_task(work))

    def ask_rollback(self) -> None:
        """What the operator's stop does: spec.rollback on the NodeAttack."""
        self.fake.edit(NODE_ATTACKS, NS, "r1-a-0", {"spec": {"rollback": True}})

    def stop_run(self) -> None:
        """What the operator's stop writes first: the attack leaves Applied."""
        name = self.attack["name"]
        state = AttackState.ROLLING_BACK if name == "bh" else AttackState.COMPLETED
        self.fake.edit(RUNS, NS, "r1", {"status": {"attacks": [{"name": name, "state": state}]}})

    async def start(self) -> None:
        await self.agent.lease.renew()
        await self.agent.reconcile(self.current())
        await asyncio.gather(*self.tasks)

    def reports(self) -> list[Obj]:
        """Every status the agent wrote, in order."""
        return [c.body["status"] for c in self.fake.find("PATCH", r"/nodeattacks/.*/status")]


def assert_halted_and_rolled_back(world: World, most: int = 4) -> None:
    keeper = world.keeper
    assert 1 <= len(keeper.applied) <= most, f"{len(keeper.applied)} of {TARGETS} applied"
    assert keeper.held == set()
    assert sorted(keeper.rolled_back) == sorted(keeper.applied)
    assert world.agent.held.get(world.uid, set()) == set()


async def test_a_rollback_event_during_the_apply_halts_it_and_rolls_back() -> None:
    world = World(BLACKHOLE)

    def rollback_event() -> None:
        world.ask_rollback()
        world.soon(world.agent.reconcile(world.current()))

    world.keeper.at(3, rollback_event)
    await world.start()

    assert_halted_and_rolled_back(world)
    status = world.status()
    assert status["phase"] == NodeAttackPhase.ROLLED_BACK
    assert status["message"].startswith(f"halted after 3 of {TARGETS} pod(s)")
    states = [t["state"] for t in status["targets"]]
    assert states == [TargetState.ROLLED_BACK] * TARGETS
    assert [t.get("message") for t in status["targets"]][2:4] == [None, "not applied"]
    # The journal first, then one report: the queued rollback has nothing left to say.
    assert [r["phase"] for r in world.reports()] == ["Applying", "RolledBack"]


async def test_a_resync_that_shows_the_rollback_halts_the_apply() -> None:
    world = World(BLACKHOLE)

    def rollback_seen_by_a_resync() -> None:
        world.ask_rollback()
        world.soon(world.agent.resync())

    world.keeper.at(3, rollback_seen_by_a_resync)
    await world.start()

    # The resync's list request lets a few more targets go meanwhile.
    assert_halted_and_rolled_back(world, most=8)
    assert world.status()["phase"] == NodeAttackPhase.ROLLED_BACK


async def test_the_deletion_of_the_node_attack_halts_the_apply() -> None:
    world = World(BLACKHOLE)

    def delete() -> None:
        world.fake.drop(NODE_ATTACKS, NS, "r1-a-0")
        world.soon(world.agent.reconcile(world.node_attack, deleted=True))

    world.keeper.at(3, delete)
    await world.start()

    assert_halted_and_rolled_back(world)
    # Once its faults are undone, a deleted NodeAttack leaves nothing in the agent's
    # memory (an agent runs for months and sees thousands of them).
    uid = world.node_attack["metadata"]["uid"]
    await world.agent.reconcile(world.node_attack, deleted=True)
    assert uid not in world.agent.halted
    assert uid not in world.agent.locks
    assert uid not in world.agent.reports


async def test_the_run_read_again_halts_the_apply_without_an_event() -> None:
    world = World(BLACKHOLE, recheck=0.0)
    world.keeper.at(3, world.stop_run)
    await world.start()

    assert_halted_and_rolled_back(world)
    status = world.status()
    assert status["phase"] == NodeAttackPhase.ROLLED_BACK
    assert "the run has attack bh in state RollingBack" in status["message"]


async def test_the_run_is_read_again_at_most_every_recheck_seconds() -> None:
    world = World(BLACKHOLE)  # recheck 0.5 s; the fake applies take no time
    await world.start()

    assert len(world.keeper.applied) == TARGETS
    assert world.status()["phase"] == NodeAttackPhase.APPLIED
    assert len(world.fake.find("GET", r"/experimentruns/r1$")) == 1  # the reconcile's own


async def test_a_halted_irreversible_attack_keeps_what_it_did_and_says_so() -> None:
    world = World(KILL, recheck=0.0)
    world.keeper.at(3, world.stop_run)
    await world.start()

    assert len(world.keeper.applied) <= 4
    assert world.keeper.rolled_back == []  # nothing to undo
    status = world.status()
    assert status["phase"] == NodeAttackPhase.APPLIED
    assert status["message"].startswith(f"halted after 3 of {TARGETS} pod(s)")
    states = [t["state"] for t in status["targets"]]
    assert states[:3] == [TargetState.APPLIED] * 3
    assert set(states[3:]) == {TargetState.ROLLED_BACK}


async def test_a_lease_that_ran_out_halts_the_apply_and_is_reported_failed_when_back() -> None:
    world = World(BLACKHOLE)

    def lease_runs_out() -> None:
        world.agent.lease.last_renewal = time.monotonic() - 2 * world.agent.lease.duration

    world.keeper.at(3, lease_runs_out)
    await world.start()

    assert_halted_and_rolled_back(world)
    # Nothing reported meanwhile (the API server is likely away); once renewed, Failed.
    assert [r["phase"] for r in world.reports()] == ["Applying"]
    world.agent.lease.last_renewal = time.monotonic()  # renewed again
    await world.agent.renewed(again=True)
    assert world.agent.resyncing is not None  # in the background: renewals never wait
    await world.agent.resyncing
    status = world.status()
    assert status["phase"] == NodeAttackPhase.FAILED
    assert "lost its lease" in status["message"]
    assert world.uid not in world.agent.lapsed


async def test_an_apply_that_no_stop_reaches_applies_every_target() -> None:
    world = World(BLACKHOLE, recheck=0.0)
    await world.start()

    assert len(world.keeper.held) == TARGETS
    status = world.status()
    assert status["phase"] == NodeAttackPhase.APPLIED
    assert status["message"] == f"applied to {TARGETS} of {TARGETS} pod(s)"
    # The rollback asked for afterwards undoes it all.
    world.ask_rollback()
    await world.agent.reconcile(world.current())
    assert world.keeper.held == set()
    assert world.status()["phase"] == NodeAttackPhase.ROLLED_BACK


async def test_a_failed_rollback_is_retried_by_the_next_reconcile() -> None:
    world = World(BLACKHOLE)
    await world.start()
    world.ask_rollback()
    world.keeper.fail_rollbacks = 1
    await world.agent.reconcile(world.current())  # logged, not raised
    # Every other fault is rolled back all the same; the one that failed stays held.
    (left,) = world.keeper.held
    assert world.agent.held[world.uid] == {left}
    assert len(world.keeper.rolled_back) == TARGETS - 1
    assert world.status()["phase"] == NodeAttackPhase.APPLIED
    await world.agent.reconcile(world.current())
    assert world.keeper.held == set()
    assert world.status()["phase"] == NodeAttackPhase.ROLLED_BACK


@pytest.mark.parametrize("asked", ["event", "resync"])
async def test_a_node_attack_asked_to_roll_back_before_its_apply_is_never_applied(
    asked: str,
) -> None:
    world = World(BLACKHOLE)
    await world.agent.lease.renew()
    stale = world.current()  # an older event, reconciled after the rollback was seen
    world.ask_rollback()
    if asked == "event":
        await world.agent.reconcile(world.current())
    else:
        await world.agent.resync()
    await world.agent.reconcile(stale)
    assert world.keeper.applied == []
    assert world.status()["phase"] == NodeAttackPhase.ROLLED_BACK


async def test_a_renewal_never_waits_for_an_apply_in_progress() -> None:
    world = World(BLACKHOLE)
    release = asyncio.Event()
    original = world.keeper.apply

    async def slow_apply(fid: str, kind: str, params: Obj, pod: Obj, **kw: Any) -> Obj:
        result = await original(fid, kind, params, pod, **kw)
        if len(world.keeper.applied) == 3:
            await release.wait()  # the keeper is busy with this target
        return result

    world.keeper.apply = slow_apply  # type: ignore[method-assign]
    await world.agent.lease.renew()
    applying = asyncio.create_task(world.agent.reconcile(world.current()))
    while len(world.keeper.applied) < 3:
        await asyncio.sleep(0)
    world.agent.lapsed.add("an-earlier-node-attack")  # a renewal that asks for a resync
    await asyncio.wait_for(world.agent.renewed(again=True), timeout=1)
    assert not applying.done()
    release.set()
    await applying
    assert world.agent.resyncing is not None
    await world.agent.resyncing
    assert world.status()["phase"] == NodeAttackPhase.APPLIED


async def test_with_batches_the_apply_halts_at_the_next_batch() -> None:
    world = World(BLACKHOLE, batch=16)

    def rollback_event() -> None:
        world.ask_rollback()
        world.soon(world.agent.reconcile(world.current()))

    world.keeper.at(3, rollback_event)
    await world.start()
    assert len(world.keeper.applied) == 16  # the batch in progress went on; no other began
    assert world.keeper.held == set()
    assert sorted(world.keeper.rolled_back) == sorted(world.keeper.applied)
    status = world.status()
    assert status["phase"] == NodeAttackPhase.ROLLED_BACK
    assert status["message"].startswith(f"halted after 16 of {TARGETS} pod(s)")


async def test_stop_all_during_a_batch_starts_no_more_of_it() -> None:
    world = World(BLACKHOLE, batch=TARGETS)

    def stop_all() -> None:
        world.fake.edit(SWITCHES, None, SWITCH_NAME, {"spec": {"enabled": False}})
        world.agent.guard.switch_seen(False)  # what the switch's watch does

    world.keeper.at(3, stop_all)
    await world.start()
    assert world.agent.guard.switching is not None
    await world.agent.guard.switching
    # The keeper's rollback_all stopped the batch: the rest never started.
    assert 3 <= len(world.keeper.applied) <= 4
    assert world.keeper.held == set()
    status = world.status()
    assert status["phase"] == NodeAttackPhase.ROLLED_BACK
    assert "ChaosSwitch" in status["message"]
    messages = [t.get("message") for t in status["targets"]]
    assert messages.count("not applied") >= TARGETS - 4
    assert {t["state"] for t in status["targets"]} == {TargetState.ROLLED_BACK}


async def test_the_run_namespace_and_pods_are_read_at_once_before_any_write() -> None:
    world = World(BLACKHOLE, batch=16)
    fake = world.fake
    in_flight: list[str] = []
    together: list[list[str]] = []

    def counted(read: Callable[..., Any], what: str) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            in_flight.append(what)
            together.append(list(in_flight))
            try:
                return await read(*args, **kwargs)
            finally:
                in_flight.remove(what)

        return wrapper

    fake.get = counted(fake.get, "get")  # type: ignore[method-assign]
    fake.list_objects = counted(fake.list_objects, "list")  # type: ignore[method-assign]
    await world.start()
    # The run, the namespace and the pods: three reads in flight at once (one round trip).
    assert ["get", "get", "list"] in [sorted(t) for t in together]
    calls = [(c.method, c.path) for c in fake.calls]
    first_write = next(i for i, (method, _) in enumerate(calls) if method == "PATCH")
    reads = [path for _, path in calls[:first_write]]
    assert any(path.endswith("/experimentruns/r1") for path in reads)
    assert any(path.endswith(f"/namespaces/{NS}") for path in reads)
    assert world.reports()[0]["phase"] == NodeAttackPhase.APPLYING
    assert world.status()["phase"] == NodeAttackPhase.APPLIED
