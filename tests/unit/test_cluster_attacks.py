"""Attacks whose effect reaches beyond the namespace, and ScaleWorkload (issue #13, SEC-04,
SEC-15): which nodes a NodeCordon may take, how it journals them and undoes only its own
cordons; a ScaleWorkload that refuses to delete volumes and rolls back with a
compare-and-swap. On the in-memory API server of fake_kube."""

from __future__ import annotations

from typing import Any

import pytest

from shakeout.api.attacks import CLUSTER_SCOPED, AttackType
from shakeout.api.experiment import Attack
from shakeout.api.labels import CORDONED_BY
from shakeout.api.run import AttackResult, AttackState
from shakeout.api.switch import ChaosSwitchSpec, ClusterScopedAttacks
from shakeout.attacks.context import AttackError, RunContext
from shakeout.attacks.node_cordon import NodeCordon, fingerprint
from shakeout.attacks.scale_workload import ScaleWorkload
from shakeout.engine.policies import cordon_nodes, is_control_plane, max_nodes
from shakeout.engine.preconditions import WorkloadFacts
from shakeout.gather.facts import workload_facts
from shakeout.kube import client as kube_client
from shakeout.kube.pods import Pod, node_pinned, pod_from
from shakeout.kube.resources import DEPLOYMENTS, NODES, STATEFULSETS
from tests.unit.fake_kube import FakeApi

NS = "team-a"
UID = "run-uid-1"

# -- which pods placed their node through the scheduler ------------------------------------


def _entry(fields: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": "m", "operation": "Update", "fieldsV1": fields}
    if subresource:
        entry["subresource"] = subresource
    return entry


@pytest.mark.parametrize(
    ("managed", "pinned"),
    [
        ([], False),
        ([_entry({"f:spec": {"f:containers": {}}})], False),
        # kubectl run --overrides='{"spec":{"nodeName":...}}', a Pod with nodeName
        ([_entry({"f:spec": {"f:containers": {}, "f:nodeName": {}}})], True),
        ([_entry({"f:status": {"f:phase": {}}}, "status")], False),
        # were the binding ever recorded, it would be a subresource's
        ([_entry({"f:spec": {"f:nodeName": {}}}, "binding")], False),
        ([{"manager": "odd"}, "not a dict"], False),
    ],
)
def test_a_node_name_written_by_a_client_is_pinned(managed: list[Any], pinned: bool) -> None:
    meta = {"name": "p", "managedFields": managed}
    assert node_pinned(meta) is pinned
    pod = pod_from({"metadata": meta, "spec": {"nodeName": "n1"}, "status": {}})
    assert pod.scheduled_node == (None if pinned else "n1")


# -- which nodes a cordon may take ----------------------------------------------------------


def allowing(control_plane: bool = False, nodes: int | None = None) -> ChaosSwitchSpec:
    return ChaosSwitchSpec.model_validate(
        {
            "enabled": True,
            "clusterScopedAttacks": {"namespaces": [NS], "controlPlaneNodes": control_plane},
            **({"caps": {"maxNodes": nodes}} if nodes else {}),
        }
    )


@pytest.mark.parametrize(
    ("scheduled", "control_plane", "switch", "nodes"),
    [
        (["n2", "n1", "n1", ""], set(), allowing(), ("n1", "n2")),
        (["cp", "n1"], {"cp"}, allowing(), ("n1",)),
        (["cp", "n1"], {"cp"}, allowing(control_plane=True), ("cp", "n1")),
        (["cp"], {"cp"}, ChaosSwitchSpec(enabled=True), ()),
    ],
)
def test_cordon_nodes(
    scheduled: list[str], control_plane: set[str], switch: ChaosSwitchSpec, nodes: tuple[str, ...]
) -> None:
    assert cordon_nodes(scheduled, control_plane, switch) == nodes


def test_the_node_cap_defaults_to_one_and_control_plane_labels() -> None:
    assert max_nodes(ChaosSwitchSpec(enabled=True)) == 1
    assert max_nodes(allowing(nodes=7)) == 7
    assert ClusterScopedAttacks().namespaces == []
    assert ClusterScopedAttacks().control_plane_nodes is False
    assert is_control_plane({"node-role.kubernetes.io/control-plane": ""})
    assert is_control_plane({"node-role.kubernetes.io/master": ""})
    assert not is_control_plane({"node-role.kubernetes.io/worker": ""})


# -- on the fake API server -------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    api.add_namespace(NS)
    return api


def allow_cordons(fake: FakeApi, caps: dict[str, int] | None = None) -> None:
    """The switch, with attacks of scope Cluster allowed for NS."""
    fake.add_switch(caps=caps)
    switch = fake.switch()
    assert switch is not None
    switch["spec"]["clusterScopedAttacks"] = {"namespaces": [NS]}


def add_node(fake: FakeApi, name: str, labels: dict[str, str] | None = None) -> None:
    fake.put(NODES, None, {"metadata": {"name": name, "labels": labels or {}}, "spec": {}})


def node(fake: FakeApi, name: str) -> dict[str, Any]:
    obj = fake.peek(NODES, None, name)
    assert obj is not None
    return obj


def cordoned(fake: FakeApi, name: str) -> bool:
    return bool(node(fake, name).get("spec", {}).get("unschedulable"))


CORDON = Attack.model_validate({"name": "cordon", "type": "NodeCordon"})


def pods(*placed: tuple[str, str, bool]) -> list[Pod]:
    return [Pod(name=n, ready=True, deleting=False, node=at, node_pinned=p) for n, at, p in placed]


async def test_a_cordon_journals_its_nodes_and_undoes_only_its_own(fake: FakeApi) -> None:
    allow_cordons(fake, {"maxNodes": 3})
    add_node(fake, "n1")
    add_node(fake, "n2")
    add_node(fake, "n3")
    add_node(fake, "cp", {"node-role.kubernetes.io/control-plane": ""})
    add_node(fake, "pinned")
    targets = pods(
        ("a", "n1", False),
        ("b", "n2", False),
        ("c", "n3", False),
        ("d", "cp", False),  # a DaemonSet pod on the control plane: spared
        ("e", "pinned", True),  # spec.nodeName of its own: not the cordon's to choose
    )
    executor = NodeCordon(RunContext(NS, "run", UID))

    async def listed() -> list[Pod]:
        return targets

    journal = await executor.prepare(CORDON, listed)
    assert journal == {"nodes": ["n1", "n2", "n3"]}
    result = AttackResult(
        name="cordon",
        type="NodeCordon",
        reversible=True,
        state=AttackState.APPLYING,
        nodes=journal["nodes"],
    )
    fake.edit(NODES, None, "n3", {"spec": {"unschedulable": True}})  # an admin's, before
    assert await executor.apply(CORDON, targets, result) == 2
    assert cordoned(fake, "n1")
    assert cordoned(fake, "n2")
    assert not cordoned(fake, "cp")
    assert not cordoned(fake, "pinned")
    assert CORDONED_BY not in (node(fake, "n3")["metadata"].get("annotations") or {})

    # During the run: n2 is tainted by a drain tool; the record of n1 stays untouched.
    fake.edit(
        NODES,
        None,
        "n2",
        {"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}},
    )
    fake.calls.clear()
    note = await executor.rollback(CORDON, result)
    assert not cordoned(fake, "n1")
    assert cordoned(fake, "n2")  # someone acts on it: theirs now
    assert cordoned(fake, "n3")  # never ours
    assert CORDONED_BY not in (node(fake, "n2")["metadata"].get("annotations") or {})
    assert note is not None
    assert "left cordoned: n2" in note
    # By name: no node was listed.
    assert fake.find("GET", r"/api/v1/nodes$") == []
    # Again: nothing left of ours, nothing written.
    fake.calls.clear()
    assert await executor.rollback(CORDON, result) is None
    assert fake.find("PATCH", r"/nodes/") == []


async def test_a_cordon_over_the_node_cap_is_refused_before_anything(fake: FakeApi) -> None:
    allow_cordons(fake)
    add_node(fake, "n1")
    add_node(fake, "n2")
    targets = pods(("a", "n1", False), ("b", "n2", False))

    async def listed() -> list[Pod]:
        return targets

    with pytest.raises(AttackError, match="cordon 2 nodes"):
        await NodeCordon(RunContext(NS, "run", UID)).prepare(CORDON, listed)
    assert fake.find("PATCH", r"/nodes/") == []


async def test_a_node_whose_record_an_admin_removed_stays_cordoned(fake: FakeApi) -> None:
    allow_cordons(fake)
    add_node(fake, "n1")
    executor = NodeCordon(RunContext(NS, "run", UID))
    result = AttackResult(
        name="cordon", type="NodeCordon", reversible=True, state=AttackState.APPLIED, nodes=["n1"]
    )
    await executor.apply(CORDON, pods(("a", "n1", False)), result)
    before = fingerprint(node(fake, "n1"))
    fake.edit(NODES, None, "n1", {"metadata": {"annotations": {CORDONED_BY: None}}})
    assert fingerprint(node(fake, "n1")) == before  # our record is no part of it
    assert await executor.rollback(CORDON, result) is None
    assert cordoned(fake, "n1")


# -- ScaleWorkload ------------------------------------------------------------------------


def scale(kind: str = "Deployment", to: int = 1, accept: bool = False) -> Attack:
    return Attack.model_validate(
        {
            "name": "scale",
            "type": "ScaleWorkload",
            "scaleWorkload": {
                "workload": {"kind": kind, "name": "web"},
                "replicas": to,
                "acceptDataLoss": accept,
            },
        }
    )


def scaled(previous: int) -> AttackResult:
    return AttackResult(
        name="scale",
        type="ScaleWorkload",
        reversible=True,
        state=AttackState.ROLLING_BACK,
        previous_replicas=previous,
    )


async def test_rollback_restores_the_count_it_finds_the_attack_left(fake: FakeApi) -> None:
    fake.add_deployment(NS, "web", 3)
    executor = ScaleWorkload(RunContext(NS, "run", UID))
    assert await executor.prepare(scale()) == {"previous_replicas": 3}
    await executor.apply(scale(), [])
    assert fake.replicas(NS, "web") == 1
    assert await executor.rollback(scale(), scaled(3)) is None
    assert fake.replicas(NS, "web") == 3
    (write,) = fake.find("PATCH", r"/deployments/web/scale$")[-1:]
    assert write.body["metadata"]["resourceVersion"]  # a compare-and-swap


async def test_rollback_leaves_a_concurrent_scale_alone_and_says_so(fake: FakeApi) -> None:
    fake.add_deployment(NS, "web", 3)
    executor = ScaleWorkload(RunContext(NS, "run", UID))
    await executor.apply(scale(), [])
    fake.edit(DEPLOYMENTS, NS, "web", {"spec": {"replicas": 5}})  # an SRE, in an incident
    note = await executor.rollback(scale(), scaled(3))
    assert fake.replicas(NS, "web") == 5
    assert note is not None
    assert "left at 5 replicas: someone else scaled it" in note


async def test_rollback_looks_again_after_a_conflict(fake: FakeApi) -> None:
    fake.add_deployment(NS, "web", 3)
    executor = ScaleWorkload(RunContext(NS, "run", UID))
    await executor.apply(scale(), [])
    raced: list[int] = []

    def hpa(_call: object) -> None:
        if not raced:  # between our read and our write, once
            raced.append(1)
            fake.edit(DEPLOYMENTS, NS, "web", {"spec": {"replicas": 4}})

    fake.on("PATCH", r"/deployments/web/scale$", hpa)
    note = await executor.rollback(scale(), scaled(3))
    assert fake.replicas(NS, "web") == 4
    assert note is not None
    assert "left at 4" in note


def add_statefulset(fake: FakeApi, replicas: int, when_scaled: str) -> None:
    fake.put(
        STATEFULSETS,
        NS,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                "persistentVolumeClaimRetentionPolicy": {
                    "whenScaled": when_scaled,
                    "whenDeleted": "Retain",
                },
            },
        },
    )


@pytest.mark.parametrize(
    ("when_scaled", "to", "accept", "refused"),
    [
        ("Delete", 1, False, True),
        ("Delete", 1, True, False),
        ("Delete", 5, False, False),  # a scale up deletes nothing
        ("Retain", 0, False, False),
    ],
)
async def test_a_scale_down_that_deletes_volumes_needs_the_loss_accepted(
    fake: FakeApi, when_scaled: str, to: int, accept: bool, refused: bool
) -> None:
    add_statefulset(fake, 3, when_scaled)
    attack = scale("StatefulSet", to, accept)
    executor = ScaleWorkload(RunContext(NS, "run", UID))
    if refused:
        with pytest.raises(AttackError, match="acceptDataLoss"):
            await executor.prepare(attack)
    else:
        assert await executor.prepare(attack) == {"previous_replicas": 3}
    assert attack.reversible is not accept


def test_nodecordon_is_the_one_attack_of_scope_cluster() -> None:
    assert {AttackType.NODE_CORDON} == CLUSTER_SCOPED
    assert CORDON.cluster_scoped
    assert not scale().cluster_scoped


def test_only_a_statefulset_with_claim_templates_deletes_volumes() -> None:
    delete = {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}
    templates = {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}
    assert workload_facts({"kind": "StatefulSet", "spec": {**delete, **templates}}) == (
        WorkloadFacts(1, True)
    )
    assert not workload_facts({"kind": "StatefulSet", "spec": delete}).deletes_volumes_when_scaled
    assert not workload_facts(
        {"kind": "Deployment", "spec": {**delete, **templates, "replicas": 2}}
    ).deletes_volumes_when_scaled


async def test_a_cordon_in_a_namespace_not_allowed_is_refused_before_anything(
    fake: FakeApi,
) -> None:
    fake.add_switch(caps={"maxNodes": 5})  # caps, but no allowance: the default
    add_node(fake, "n1")

    async def listed() -> list[Pod]:
        return pods(("a", "n1", False))

    with pytest.raises(AttackError, match="not allowed for namespace team-a"):
        await NodeCordon(RunContext(NS, "run", UID)).prepare(CORDON, listed)
    with pytest.raises(AttackError, match="not allowed for namespace team-a"):
        await NodeCordon(RunContext(NS, "run", UID)).apply(CORDON, await listed())
    journaled = AttackResult(
        name="cordon", type="NodeCordon", reversible=True, state=AttackState.APPLYING, nodes=["n1"]
    )
    with pytest.raises(AttackError, match="not allowed for namespace team-a"):
        await NodeCordon(RunContext(NS, "run", UID)).apply(CORDON, [], journaled)
    assert fake.find("PATCH", r"/nodes/") == []
