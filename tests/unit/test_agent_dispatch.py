"""Both sides of a node-level attack stopped mid-apply: the operator's NodeDispatcher and
the node agent, on the in-memory API server, the agent fed by a polling stand-in of its
watch. The stop ends the dispatcher's wait at once, and its rollback finds the agent
halted: a few targets applied (one batch of the agent's at most), all of them rolled back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from shakeout.agent.daemon import NodeAgent
from shakeout.agent.options import AgentOptions
from shakeout.api.experiment import Attack
from shakeout.api.nodeattack import NodeAttackPhase
from shakeout.api.run import AttackState, Phase
from shakeout.attacks.node import NodeDispatcher, apply_timeout
from shakeout.gather import agents
from shakeout.kube import client
from shakeout.kube.pods import pod_from
from shakeout.kube.resources import NODE_ATTACKS, RUNS
from tests.unit.fake_kube import FakeApi
from tests.unit.test_agent_halt import FakeKeeper

NS = "team-a"
NODE = "node-1"
TARGETS = 50
ATTACK = {"name": "bh", "type": "NetworkBlackhole", "durationSeconds": 60}


class SlowKeeper(FakeKeeper):
    """Each apply takes a while, as a real one does (nsenter, nft)."""

    async def apply(
        self,
        fid: str,
        kind: str,
        params: client.Obj,
        pod: client.Obj,
        *,
        not_after: float | None = None,
    ) -> client.Obj:
        await asyncio.sleep(0.02)
        return await super().apply(fid, kind, params, pod, not_after=not_after)


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    fake = FakeApi()
    client.use(fake)
    yield fake
    client.use(None)  # type: ignore[arg-type]


async def watch(fake: FakeApi, agent: NodeAgent) -> None:
    """The agent's watch, by polling: every new version of a NodeAttack is an event."""
    seen: dict[str, str] = {}
    while True:
        for name in fake.names(NODE_ATTACKS, NS):
            obj = fake.peek(NODE_ATTACKS, NS, name)
            assert obj is not None
            version = obj["metadata"]["resourceVersion"]
            if seen.get(name) != version:
                seen[name] = version
                agent.events.put_nowait(("MODIFIED", dict(obj)))
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(agent: NodeAgent, fake: FakeApi) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(watch(fake, agent)), asyncio.create_task(agent.event_loop())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*agent.tasks, return_exceptions=True)


async def test_a_stop_during_a_node_level_apply_halts_both_sides(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents, "missing", lambda nodes, holders=None: ())  # the agent lives
    fake.add_namespace(NS)
    fake.add_namespace("shakeout-system")
    status = {
        "phase": Phase.ATTACKS_STARTED,
        "experiment": {"attacks": [ATTACK]},
        "attacks": [{"name": "bh", "state": AttackState.APPLYING}],
    }
    run = fake.add_run(NS, "r1", "exp", status=status)
    pods = [pod_from(fake.add_pod(NS, f"web-{i:02d}", {"app": "web"})) for i in range(TARGETS)]
    keeper = SlowKeeper()
    agent = NodeAgent(AgentOptions(node=NODE), fake, keeper, capabilities={})
    await agent.lease.renew()
    halt = asyncio.Event()
    dispatcher = NodeDispatcher(NS, "r1", run["metadata"]["uid"], halt)
    keeper.at(3, halt.set)  # Stop All, while the agent applies the 3rd target

    async with running(agent, fake):
        await dispatcher.apply(Attack.model_validate(ATTACK), pods)
        applied_when_returned = len(keeper.applied)
        # What the executor writes before it rolls back: the attack is being rolled back.
        fake.edit(RUNS, NS, "r1", {"status": {"attacks": [{"name": "bh", "state": "RollingBack"}]}})
        assert await dispatcher.rollback(Attack.model_validate(ATTACK)) is None

    assert applied_when_returned <= 6  # it did not wait for the other targets
    # The agent sees the stop between two of its batches to the keeper: within the first.
    assert 3 <= len(keeper.applied) <= agent.options.apply_batch < TARGETS, (
        f"{len(keeper.applied)} of {TARGETS} applied"
    )
    assert keeper.held == set()
    (name,) = fake.names(NODE_ATTACKS, NS)
    obj = fake.peek(NODE_ATTACKS, NS, name)
    assert obj is not None
    assert obj["spec"]["rollback"] is True
    assert obj["status"]["phase"] == NodeAttackPhase.ROLLED_BACK
    assert obj["status"]["message"].startswith("halted after ")


@pytest.mark.parametrize(
    ("per_node", "timeout"),
    [
        ({"node-1": 1}, 30.5),
        ({"node-1": 40, "node-2": 200}, 130.0),  # the busiest node counts
        ({"node-1": 2000}, 300.0),  # bounded
        ({}, 30.0),
    ],
)
def test_the_apply_timeout_grows_with_the_targets_of_the_busiest_node(
    per_node: dict[str, int], timeout: float
) -> None:
    pods = [
        pod_from(
            {"metadata": {"name": f"{node}-{i}", "uid": f"{node}-{i}"}, "spec": {"nodeName": node}}
        )
        for node, count in per_node.items()
        for i in range(count)
    ]
    assert apply_timeout(pods) == timeout
