"""Previews and dry runs on the real control plane, with the examples of docs/lifecycle.md:
`kubectl shakeout preview` lists what a run would touch and creates nothing, and a dry run
goes through every phase and touches nothing, read back from the real objects (the pods
and their UIDs, the Deployment's replicas, NetworkPolicies, the nodes, NodeAttacks, a
real node agent's target network namespace), across an operator killed mid-run too. A
real run of the same Experiment shows that the same observations do see an attack."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agents import AGENT_NODE, Netns, NodeAgent, running_agent
from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import TEAM, TERMINAL, create_run, deployment, events, wait_phase
from tests.e2e.test_node_agents import target_pod
from tests.unit.test_docs import examples

APP = "shop"
EXPERIMENT = "shop-rehearsal"
MARK = "dry run, nothing applied: "
HEADLINE = "DRY RUN: nothing was applied; the attacks below say what a real run would have done"

Obj = dict[str, Any]


def doc(file: str, kind: str, match: Any = None) -> Obj:
    """The one example of `kind` in docs/`file` for which match(example) holds."""
    found = [
        d
        for f, d in examples()
        if f == file and isinstance(d, dict) and d.get("kind") == kind and (not match or match(d))
    ]
    assert len(found) == 1, (file, kind, found)
    return copy.deepcopy(found[0])


def doc_experiment() -> Obj:
    return doc("lifecycle.md", "Experiment", lambda d: d["metadata"]["name"] == EXPERIMENT)


def doc_dry_run(file: str = "lifecycle.md") -> Obj:
    return doc(file, "ExperimentRun", lambda d: d["spec"].get("dryRun") is True)


def world(cluster: Cluster) -> Obj:
    """What an attack of the Experiment would change, read from the real objects."""
    pods = cluster.get("pods", "-n", TEAM, "-l", f"app={APP}")["items"]
    nodes = cluster.get("nodes")["items"]
    return {
        "pods": sorted(
            (
                p["metadata"]["name"],
                p["metadata"]["uid"],
                p["spec"].get("nodeName"),
                json.dumps(p["metadata"].get("labels"), sort_keys=True),
                bool(p["metadata"].get("deletionTimestamp")),
            )
            for p in pods
        ),
        "replicas": cluster.get("deployment", APP, "-n", TEAM)["spec"]["replicas"],
        "networkpolicies": [
            p["metadata"]["name"] for p in cluster.get("networkpolicies", "-n", TEAM)["items"]
        ],
        "cordoned": sorted(
            n["metadata"]["name"]
            for n in nodes
            if n["spec"].get("unschedulable")
            or "shakeout.dev/cordoned-by" in (n["metadata"].get("annotations") or {})
        ),
        "nodeattacks": [
            a["metadata"]["name"] for a in cluster.get("nodeattacks", "-n", TEAM)["items"]
        ],
    }


def column(table: str, title: str) -> str:
    """The value under a column title (which may have a space) in kubectl's one-row table."""
    header, row = table.splitlines()
    return row[header.index(title) :].split()[0]


def runs(cluster: Cluster) -> list[str]:
    return sorted(r["metadata"]["name"] for r in cluster.get("experimentruns", "-n", TEAM)["items"])


def set_rails(cluster: Cluster, spec: Obj) -> None:
    cluster.merge_patch("chaosswitch", "default", {"spec": spec})


NO_RAILS = {"caps": None, "clusterScopedAttacks": None}


@pytest.fixture
def shop(ready: Cluster) -> Iterator[Cluster]:
    """The Deployment shop (3 replicas) and the docs' Experiment shop-rehearsal."""
    deployment(ready, APP, replicas=3)
    ready.apply(doc_experiment())
    try:
        yield ready
    finally:
        set_rails(ready, NO_RAILS)
        ready.kubectl("delete", "experiment", EXPERIMENT, "-n", TEAM, check=False)
        ready.kubectl("delete", "deployment", APP, "-n", TEAM, check=False)


def preview(cluster: Cluster, *args: str, code: int = 0) -> str:
    result = cluster.plugin("preview", EXPERIMENT, "-n", TEAM, *args, user="alice", check=False)
    assert result.returncode == code, (result.stdout, result.stderr)
    return result.stdout


def test_preview_lists_what_a_run_would_touch_and_creates_nothing(shop: Cluster) -> None:
    before, runs_before = world(shop), runs(shop)
    pods = shop.get("pods", "-n", TEAM, "-l", f"app={APP}")["items"]
    placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods}

    text = preview(shop)

    assert "Verdict:       ALLOWED: a run created now would be admitted: 2 of 3" in text
    assert "Targets:       2 of 3 pods" in text
    for name, node in placed.items():
        assert any(line.split() == [name, node] for line in text.splitlines()), text
    assert "Nodes:         " + ", ".join(sorted(set(placed.values()))) in text
    assert "Irreversible:  kill-one (PodDelete) (cannot be rolled back)" in text
    assert "Lock:          free" in text
    data = json.loads(preview(shop, "-o", "json"))["preview"]
    assert (data["allowed"], data["matched"], data["selected"]) == (True, 3, 2)
    assert {p["name"]: p["node"] for p in data["pods"]} == placed
    # The Experiment's status and its columns say so too.
    status = shop.get("experiment", EXPERIMENT, "-n", TEAM)["status"]["preview"]
    assert status["matched"] == 3
    assert status["allowed"] is True
    wide = shop.kubectl("get", "experiment", EXPERIMENT, "-n", TEAM, "-o", "wide").stdout
    assert column(wide, "MATCHED") == "3"
    assert column(wide, "ALLOWED") == "true"

    # A rail that refuses: the preview refuses with the reason and the message the Run
    # button then answers with.
    set_rails(shop, {"caps": {"maxTargets": 1}})
    # The switch's change alone refreshes the status, nobody asking.
    eventually(
        lambda: (
            shop.get("experiment", EXPERIMENT, "-n", TEAM)["status"]["preview"].get("reason")
            == "OverTargetCap"
        ),
        what="the preview refreshed by the change of the rails",
    )
    refused = preview(shop, code=2)
    assert "Verdict:       REFUSED (OverTargetCap): " in refused
    said = next(line for line in refused.splitlines() if line.startswith("Verdict:"))
    _, created = create_run(shop, EXPERIMENT, check=False)
    assert created.returncode != 0
    assert said.split("(OverTargetCap): ", 1)[1] in created.stderr.replace("\n", " ")
    set_rails(shop, NO_RAILS)

    # Nothing was created and nothing was touched.
    assert runs(shop) == runs_before
    assert world(shop) == before


def test_a_dry_run_goes_through_every_phase_and_touches_nothing(shop: Cluster) -> None:
    before = world(shop)
    assert doc_dry_run("api.md") == doc_dry_run()  # the same example in both docs
    created = shop.create(doc_dry_run(), user="alice")
    name = created.stdout.split()[0].split("/")[-1]
    assert "a dry run: nothing is applied" in created.stderr
    assert "kill-one (PodDelete)" in created.stderr

    # The window of the attacks: a real run holds its faults now. The dry run holds the
    # lock, like a run, and has journaled what each attack would do.
    status = wait_phase(shop, name, {"ATTACKS_STARTED", *TERMINAL})
    assert status["phase"] == "ATTACKS_STARTED", status
    attacks = {a["name"]: a for a in status["attacks"]}
    assert {a["state"] for a in attacks.values()} == {"Simulating"}
    assert attacks["shrink"]["message"] == (
        f"dry run: would scale Deployment {APP} from 3 to 1 replicas"
    )
    assert attacks["kill-one"]["message"].startswith("dry run: would delete 2 pod(s): ")
    assert attacks["fence"]["message"].startswith("dry run: would isolate 2 pod(s)")
    assert world(shop) == before
    holder = shop.get("chaosswitch", "default")["status"]["activeRun"]
    assert (holder["namespace"], holder["name"]) == (TEAM, name)
    _, other = create_run(shop, EXPERIMENT, check=False)
    assert other.returncode != 0
    assert f"{TEAM}/{name} holds the cluster-wide lock" in other.stderr

    status = wait_phase(shop, name, TERMINAL)
    assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
    assert [e["phase"] for e in status["timeline"]] == [
        "CREATED",
        "PREPARED",
        "ATTACKS_STARTED",
        "ATTACKS_STOPPED",
        "COMPLETED",
    ]
    assert status["dryRun"] is True
    assert status["message"].startswith(MARK)
    assert status["targets"]["selected"] == 2
    assert status["stateChecks"][0]["successes"] >= 1
    dry = next(c for c in status["conditions"] if c["type"] == "DryRun")
    assert dry["status"] == "True"
    assert {a["state"] for a in status["attacks"]} == {"Simulated"}
    assert all(a.get("targets", 0) == 0 for a in status["attacks"])
    # Events carry whole seconds: their order within one second is not kept.
    assert sorted(events(shop, name)) == sorted(
        ["Created", "Prepared", "AttacksStarted", "AttacksStopped", "Completed"]
    )
    messages = shop.get("events", "-n", TEAM, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    assert all(e["message"].startswith(MARK) for e in messages), messages
    report = shop.plugin("report", name, "-n", TEAM, user="alice").stdout
    assert report.splitlines()[0] == HEADLINE
    wide = shop.kubectl("get", "experimentrun", name, "-n", TEAM, "-o", "wide").stdout
    assert column(wide, "DRY RUN") == "true"
    # Nothing touched, no rollback record, the lock given back.
    assert world(shop) == before
    uid = shop.get("experimentrun", name, "-n", TEAM)["metadata"]["uid"]
    record = shop.kubectl(
        "get", "configmap", f"shakeout-run-{uid}", "-n", "shakeout-system", check=False
    )
    assert record.returncode != 0
    assert not shop.get("chaosswitch", "default").get("status", {}).get("activeRun")

    # The same Experiment, run for real: the same observations see every attack.
    real, _ = create_run(shop, EXPERIMENT)
    status = wait_phase(shop, real, {"ATTACKS_STARTED", *TERMINAL})
    assert status["phase"] == "ATTACKS_STARTED", status
    eventually(
        lambda: (
            {a["state"] for a in shop.get("experimentrun", real, "-n", TEAM)["status"]["attacks"]}
            == {"Applied"}
        ),
        what="the real run's attacks applied",
    )
    during = world(shop)
    assert during["replicas"] == 1
    assert during["networkpolicies"]
    shop.merge_patch("experimentrun", real, {"spec": {"cancel": True}}, namespace=TEAM)
    wait_phase(shop, real, TERMINAL)
    # Two pods were deleted (irreversible): the UIDs a dry run keeps are gone.
    after = world(shop)
    assert len({p[1] for p in before["pods"]} - {p[1] for p in after["pods"]}) >= 2


@pytest.mark.long  # an operator SIGKILL: the reliability suite's kind (unit tests cover resume)
def test_a_dry_run_never_applies_anything_across_an_operator_kill(
    shop: Cluster, live_operator: Operator
) -> None:
    """The docs' Experiment with a NodeCordon too (allowed for team-a on two nodes), every
    attack lasting long enough for the operator to be killed in their window."""
    experiment = doc_experiment()
    experiment["metadata"]["name"] = f"{EXPERIMENT}-cordon"
    spec = experiment["spec"]
    spec["attacks"].append({"name": "cordon", "type": "NodeCordon"})
    for attack in spec["attacks"]:
        attack["durationSeconds"] = 20
    set_rails(shop, {"clusterScopedAttacks": {"namespaces": [TEAM]}, "caps": {"maxNodes": 2}})
    shop.apply(experiment)
    try:
        before = world(shop)
        # The plugin's Run button, as a dry run (created with strict field validation).
        created = shop.plugin(
            "run", experiment["metadata"]["name"], "-n", TEAM, "--dry-run", user="alice"
        )
        name = created.stdout.split()[0].split("/")[-1]
        assert shop.get("experimentrun", name, "-n", TEAM)["spec"]["dryRun"] is True

        def simulating() -> Obj | None:
            status = shop.get("experimentrun", name, "-n", TEAM).get("status") or {}
            states = {a["state"] for a in status.get("attacks") or []}
            return status if states == {"Simulating"} else None

        status = eventually(simulating, timeout=60, what="the dry run's attacks journaled")
        cordon = next(a for a in status["attacks"] if a["name"] == "cordon")
        assert cordon["nodes"], cordon  # journaled as a run would, never touched
        assert cordon["message"].startswith("dry run: would cordon ")
        live_operator.kill()
        assert world(shop) == before
        live_operator.start()

        status = wait_phase(shop, name, TERMINAL, timeout=90)
        assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
        assert {a["state"] for a in status["attacks"]} == {"Simulated"}
        assert world(shop) == before
    finally:
        shop.kubectl(
            "delete", "experiment", experiment["metadata"]["name"], "-n", TEAM, check=False
        )


# -- node-level attacks: a real node agent, a target in a real network namespace ---------------


@pytest.fixture
def agent(ready: Cluster, tmp_path: Path) -> Iterator[NodeAgent]:
    with running_agent(ready, tmp_path) as node_agent:
        yield node_agent


@pytest.fixture
def target(ready: Cluster) -> Iterator[Netns]:
    ns = Netns.create()
    try:
        yield ns
    finally:
        ns.delete()


def nft_tables(ns: Netns) -> str:
    return ns.exec("nft", "list", "tables").stdout


def node_attacks_of(c: Cluster, run: str) -> list[dict[str, Any]]:
    """The NodeAttacks the operator handed out for this run."""
    items = c.get("nodeattacks", "-n", TEAM)["items"]
    return [a for a in items if a["spec"]["runName"] == run]


def test_a_dry_run_of_a_node_level_attack_hands_nothing_to_the_agent(
    ready: Cluster, agent: NodeAgent, target: Netns
) -> None:
    """The agent is connected and its target pod lives in a real network namespace that it
    can find: a real run blackholes it (an nftables table appears), a dry run does not,
    and creates no NodeAttack at all."""
    app = "dry-node"
    target_pod(ready, app, target)
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": app, "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": app}}},
                "attacks": [{"name": "hole", "type": "NetworkBlackhole", "durationSeconds": 4}],
            },
        }
    )
    try:
        # The preview names the agent the attack would involve, connected.
        seen = ready.plugin("preview", app, "-n", TEAM, "-o", "json", user="alice")
        data = json.loads(seen.stdout)["preview"]
        assert data["allowed"] is True, data
        assert [(a["node"], a["connected"]) for a in data["agents"]] == [(AGENT_NODE, True)]

        dry = doc_dry_run()
        dry["metadata"] = {"name": f"{app}-dry", "namespace": TEAM}
        dry["spec"]["experimentRef"]["name"] = app
        ready.create(dry, user="alice")
        status = wait_phase(ready, f"{app}-dry", {"ATTACKS_STARTED", *TERMINAL})
        assert status["phase"] == "ATTACKS_STARTED", status
        assert status["agents"] == [AGENT_NODE]  # prepared: the agent is connected
        (hole,) = status["attacks"]
        assert hole["state"] == "Simulating"
        assert hole["message"] == (
            f"dry run: would hand NetworkBlackhole of 1 pod(s): {app} to the node agents of "
            f"1 node(s): {AGENT_NODE}"
        )
        # Earlier tests' runs may have left NodeAttacks in the namespace: only this run's count.
        assert node_attacks_of(ready, f"{app}-dry") == []
        assert "shakeout_" not in nft_tables(target)
        status = wait_phase(ready, f"{app}-dry", TERMINAL)
        assert (status["phase"], status["attacks"][0]["state"]) == ("COMPLETED", "Simulated")
        assert node_attacks_of(ready, f"{app}-dry") == []
        assert "shakeout_" not in nft_tables(target)

        # The same Experiment for real: the agent applies it where the dry run did not.
        real, _ = create_run(ready, app)
        eventually(lambda: "shakeout_" in nft_tables(target), what="the real run's blackhole")
        assert node_attacks_of(ready, real)
        status = wait_phase(ready, real, TERMINAL)
        assert status["phase"] == "COMPLETED", status
    finally:
        ready.kubectl("delete", "experiment", app, "-n", TEAM, check=False)
        ready.kubectl("delete", "pod", app, "-n", TEAM, "--wait=false", check=False)
