"""The node agent's own bounds (SEC-05, SEC-12, SEC-16): notAfter handed to the keeper,
the ChaosSwitch's Stop All, protected namespaces, and an exit when its keeper is gone.

On the in-memory API server of fake_kube and the recording keeper of test_agent_halt.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from shakeout.agent.lease import FatalError
from shakeout.agent.nodeattacks import FALLBACK_MARGIN_SECONDS, namespace_refusal, not_after
from shakeout.api.nodeattack import PROTECTED_NAMESPACES, NodeAttackPhase
from shakeout.api.switch import SWITCH_NAME
from shakeout.engine.policies import ALWAYS_PROTECTED
from shakeout.kube.resources import NAMESPACES, NODE_ATTACKS, PODS, SWITCHES
from tests.unit.test_agent_halt import BLACKHOLE, NS, World


def stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def test_the_agent_protects_what_the_operator_protects() -> None:
    assert PROTECTED_NAMESPACES == ALWAYS_PROTECTED
    labelled = {"metadata": {"labels": {"shakeout.dev/protected": "true"}}}
    assert "system namespaces" in str(namespace_refusal({}, "kube-system", "shakeout-system"))
    assert "shakeout agent" in str(namespace_refusal({}, "shakeout-system", "shakeout-system"))
    assert "labelled" in str(namespace_refusal(labelled, "team-b", "shakeout-system"))
    assert namespace_refusal({"metadata": {}}, "team-a", "shakeout-system") is None


def test_not_after_from_the_spec_or_from_the_duration_first_seen() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    obj = {"spec": {"attack": BLACKHOLE, "notAfter": stamp(when)}}
    assert not_after(obj, first_seen=0.0) == when.timestamp()
    older = {"spec": {"attack": BLACKHOLE}}  # an older operator: no notAfter
    assert not_after(older, first_seen=1000.0) == 1000.0 + 60 + FALLBACK_MARGIN_SECONDS


async def test_each_fault_goes_to_the_keeper_with_its_not_after() -> None:
    world = World(BLACKHOLE)
    when = datetime.now(UTC) + timedelta(seconds=90)
    world.fake.edit(NODE_ATTACKS, NS, "r1-a-0", {"spec": {"notAfter": stamp(when)}})
    await world.start()
    assert world.status()["phase"] == NodeAttackPhase.APPLIED
    assert world.keeper.not_after
    for bound in world.keeper.not_after.values():
        assert bound == pytest.approx(when.timestamp())


async def test_without_not_after_the_bound_is_the_duration_from_first_sight() -> None:
    world = World(BLACKHOLE)
    before = time.time()
    await world.start()
    bounds = set(world.keeper.not_after.values())
    assert len(bounds) == 1
    (bound,) = bounds
    assert before + 60 + FALLBACK_MARGIN_SECONDS <= bound <= time.time() + 60 + 40


async def test_a_node_attack_past_its_not_after_is_not_applied() -> None:
    world = World(BLACKHOLE)
    past = datetime.now(UTC) - timedelta(seconds=1)
    world.fake.edit(NODE_ATTACKS, NS, "r1-a-0", {"spec": {"notAfter": stamp(past)}})
    await world.start()
    assert world.keeper.applied == []
    assert world.status()["phase"] == NodeAttackPhase.FAILED
    assert "notAfter" in world.status()["message"]


async def test_the_keeper_sees_no_team_annotation() -> None:
    world = World(BLACKHOLE)
    for name in world.fake.names(PODS, NS):
        world.fake.edit(PODS, NS, name, {"metadata": {"annotations": {"big": "a" * 200_000}}})
    await world.start()
    assert world.keeper.pods
    assert all(pod["annotations"] == {} for pod in world.keeper.pods.values())


@pytest.mark.parametrize("namespace_labels", [{"shakeout.dev/protected": "true"}])
async def test_a_protected_namespace_is_refused_by_the_agent(namespace_labels: dict) -> None:
    world = World(BLACKHOLE)
    world.fake.edit(NAMESPACES, None, NS, {"metadata": {"labels": namespace_labels}})
    await world.start()
    assert world.keeper.applied == []
    status = world.status()
    assert status["phase"] == NodeAttackPhase.FAILED
    assert "refused by the node agent" in status["message"]
    assert "protected" in status["message"]
    assert {t["state"] for t in status["targets"]} == {"Failed"}


async def test_stop_all_rolls_back_every_fault_and_nothing_is_applied_meanwhile() -> None:
    world = World(BLACKHOLE)
    await world.start()
    assert world.status()["phase"] == NodeAttackPhase.APPLIED
    applied = len(world.keeper.applied)
    world.fake.edit(SWITCHES, None, SWITCH_NAME, {"spec": {"enabled": False}})
    await world.agent.guard.read_switch()  # what the watch (or a resync) sees
    assert world.agent.guard.switching is not None
    await world.agent.guard.switching
    assert world.keeper.held == set()
    assert len(world.keeper.rolled_back) == applied
    status = world.status()
    assert status["phase"] == NodeAttackPhase.ROLLED_BACK
    assert "ChaosSwitch" in status["message"]
    # While disabled, a new NodeAttack is refused before anything is touched.
    fresh = World(BLACKHOLE)
    fresh.fake.edit(SWITCHES, None, SWITCH_NAME, {"spec": {"enabled": False}})
    await fresh.agent.guard.read_switch()
    await fresh.agent.guard.switching  # type: ignore[misc]
    await fresh.start()
    assert fresh.keeper.applied == []
    assert fresh.status()["phase"] == NodeAttackPhase.FAILED


async def test_a_deleted_switch_is_a_stop_all() -> None:
    world = World(BLACKHOLE)
    await world.start()
    await world.fake.delete(SWITCHES, None, SWITCH_NAME)
    await world.agent.guard.read_switch()
    await world.agent.guard.switching  # type: ignore[misc]
    assert world.keeper.held == set()
    assert world.status()["phase"] == NodeAttackPhase.ROLLED_BACK


async def test_no_renewal_once_the_keeper_is_gone() -> None:
    world = World(BLACKHOLE)
    agent = world.agent
    world.keeper.running = False
    with pytest.raises(FatalError, match="is gone"):
        await asyncio.wait_for(
            agent.lease.keep(
                0.05, agent.stopping, agent.renewed, agent.lease_lost, before=agent.keeper_alive
            ),
            timeout=2,
        )
    assert agent.lease.last_renewal == 0.0  # never renewed with nobody holding the faults


async def test_a_failed_heartbeat_ends_the_agent() -> None:
    world = World(BLACKHOLE)
    agent = world.agent

    async def broken() -> list[str]:
        raise RuntimeError("the keeper (pid 4242) is gone: [Errno 32] Broken pipe")

    world.keeper.heartbeat = broken  # type: ignore[method-assign]
    with pytest.raises(FatalError, match="heartbeat to the keeper failed"):
        await asyncio.wait_for(
            agent.lease.keep(
                0.05, agent.stopping, agent.renewed, agent.lease_lost, before=agent.keeper_alive
            ),
            timeout=2,
        )


async def test_the_keepers_exit_ends_the_agent() -> None:
    world = World(BLACKHOLE)

    async def exited() -> int:
        await asyncio.sleep(0.01)
        return -9

    world.keeper.exited = exited  # type: ignore[attr-defined]
    with pytest.raises(FatalError, match="exited with code -9"):
        await world.agent.watch_keeper()
