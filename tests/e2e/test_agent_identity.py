"""One identity per node for the node agents (SEC-11), played by an attacker holding one
agent's token: the shipped RBAC and the policy shakeout-agent-identity, on the real API
server, with real ServiceAccount tokens bound to kwok pods as the kubelet binds them.

The agent of kwok-node-0 may write its own Lease and report its own node's NodeAttacks;
it may not touch kwok-node-1's Lease or NodeAttacks, nor the operator's leader Lease, and
a token of the agent's ServiceAccount that is bound to no pod writes nothing. A real
`shakeout agent` with its pod's token still holds its Lease and runs an attack.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_node_agents
from tests.e2e.agents import AGENT_NODE, Netns, NodeAgent
from tests.e2e.conftest import Cluster, eventually
from tests.e2e.identities import (
    NAMESPACE,
    TokenUser,
    apply_shipped_rbac,
    kubeconfig,
    pod_on,
    token,
)

OTHER_NODE = "kwok-node-1"
POLICY = "ValidatingAdmissionPolicy 'shakeout-agent-identity'"

target = test_node_agents.target


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(name: str, holder: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 6, "renewTime": now()},
    }


def node_attack(name: str, node: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "NodeAttack",
        "metadata": {"name": name, "namespace": namespace, "labels": {"shakeout.dev/node": node}},
        "spec": {
            "runName": "r",
            "runUID": str(uuid.uuid4()),
            "node": node,
            "attack": {"name": "a", "type": "NetworkBlackhole"},
            "targets": [{"name": "p", "uid": str(uuid.uuid4())}],
        },
    }


def refused(result: Any, *words: str) -> None:
    assert result.returncode != 0, f"allowed:\n{result.stdout}"
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    print(f"\nrefused: {result.stderr.strip()}")


@pytest.fixture(scope="module")
def identities(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TokenUser]:
    """kubectl as the agent of kwok-node-0 (its pod's token), and with an unbound token."""
    apply_shipped_rbac(crds)
    workdir = tmp_path_factory.mktemp("agent-identity")
    pod = pod_on(crds, AGENT_NODE)
    users = {
        "node0": TokenUser(
            crds, kubeconfig(crds, token(crds, "shakeout-agent", pod), workdir / "node0")
        ),
        "unbound": TokenUser(crds, kubeconfig(crds, token(crds, "shakeout-agent"), workdir / "u")),
    }
    extra = users["node0"].whoami().get("extra") or {}
    assert extra.get("authentication.kubernetes.io/node-name") == [AGENT_NODE], extra
    assert "authentication.kubernetes.io/node-name" not in (
        users["unbound"].whoami().get("extra") or {}
    )
    # The VAP is enforced once the API server has loaded it: wait for the first refusal.
    eventually(
        lambda: (
            users["node0"].apply_json("apply", lease(f"shakeout-agent-{OTHER_NODE}")).returncode
            != 0
        ),
        what="the policy shakeout-agent-identity in force",
    )
    return users


def test_an_agent_writes_its_own_lease_and_no_other(
    identities: dict[str, TokenUser], crds: Cluster
) -> None:
    agent = identities["node0"]
    own = f"shakeout-agent-{AGENT_NODE}"
    crds.kubectl("delete", "lease", own, "-n", NAMESPACE, "--ignore-not-found")
    # Its own: create, then update (what the agent does, a PUT with the version read).
    result = agent.apply_json("create", lease(own))
    assert result.returncode == 0, result.stderr
    current = crds.get("lease", own, "-n", NAMESPACE)
    current["spec"]["renewTime"] = now()
    result = agent.apply_json("replace", current)
    assert result.returncode == 0, result.stderr

    # Another node's Lease: neither created nor, once it exists, changed.
    other = f"shakeout-agent-{OTHER_NODE}"
    crds.kubectl("delete", "lease", other, "-n", NAMESPACE, "--ignore-not-found")
    refused(agent.apply_json("create", lease(other)), POLICY, other)
    crds.apply(lease(other, holder="the real one"))
    forged = crds.get("lease", other, "-n", NAMESPACE)
    forged["spec"]["holderIdentity"] = "forged"
    refused(agent.apply_json("replace", forged), POLICY)
    assert crds.get("lease", other, "-n", NAMESPACE)["spec"]["holderIdentity"] == "the real one"

    # Any other name in its namespace, e.g. a Lease under a made-up name.
    refused(agent.apply_json("create", lease("shakeout-agent-x")), POLICY)


def test_the_operators_leader_lease_is_out_of_an_agents_reach(
    identities: dict[str, TokenUser], crds: Cluster
) -> None:
    """SEC-11's reproduction: holding `shakeout-operator` with a fresh renewTime would
    make the leader exit and keep every standby waiting."""
    agent = identities["node0"]
    crds.apply(lease("shakeout-operator", holder="operator-replica"))
    leader = crds.get("lease", "shakeout-operator", "-n", NAMESPACE)
    leader["spec"].update(holderIdentity="x", renewTime=now())
    refused(agent.apply_json("replace", leader), POLICY, "shakeout-operator")
    body = '{"spec":{"holderIdentity":"x","renewTime":"' + now() + '"}}'
    refused(
        agent.kubectl(
            "patch", "lease", "shakeout-operator", "-n", NAMESPACE, "--type=merge", "-p", body
        )
    )
    assert (
        crds.get("lease", "shakeout-operator", "-n", NAMESPACE)["spec"]["holderIdentity"]
        == "operator-replica"
    )
    crds.kubectl("delete", "lease", "shakeout-operator", "-n", NAMESPACE)
    refused(agent.apply_json("create", lease("shakeout-operator")), POLICY)


def report(user: TokenUser, name: str, namespace: str) -> Any:
    """What the agent does to report: a merge patch of the NodeAttack's status."""
    body = {"status": {"phase": "Failed", "message": "forged"}}
    return user.patch_status("nodeattacks", namespace, name, body)


def test_an_agent_reports_only_its_own_nodes_node_attacks(
    identities: dict[str, TokenUser], crds: Cluster, namespace: str
) -> None:
    agent = identities["node0"]
    crds.create(node_attack("mine", AGENT_NODE, namespace))
    crds.create(node_attack("theirs", OTHER_NODE, namespace))
    result = report(agent, "mine", namespace)
    assert result.returncode == 0, result.stderr
    assert crds.get("nodeattack", "mine", "-n", namespace)["status"]["phase"] == "Failed"
    refused(report(agent, "theirs", namespace), POLICY, "NodeAttacks of its own node")
    assert "status" not in crds.get("nodeattack", "theirs", "-n", namespace)
    # Nor the NodeAttack itself (RBAC: the agent only reads them).
    rollback = '{"spec":{"rollback":true}}'
    args = ["patch", "nodeattack", "theirs", "-n", namespace, "--type=merge", "-p", rollback]
    refused(agent.kubectl(*args))


def test_a_token_bound_to_no_pod_writes_nothing(
    identities: dict[str, TokenUser], crds: Cluster, namespace: str
) -> None:
    """A token of the agent's ServiceAccount minted without a pod (TokenRequest by whoever
    may create tokens, or a legacy Secret token) names no node: it writes nothing."""
    unbound = identities["unbound"]
    own = f"shakeout-agent-{AGENT_NODE}"
    crds.apply(lease(own))
    current = crds.get("lease", own, "-n", NAMESPACE)
    current["spec"]["holderIdentity"] = "forged"
    refused(unbound.apply_json("replace", current), POLICY, "names no node")
    refused(unbound.apply_json("create", lease("shakeout-agent-anywhere")), POLICY)
    crds.create(node_attack("mine", AGENT_NODE, namespace))
    refused(report(unbound, "mine", namespace), POLICY)


def test_a_real_agent_with_its_pods_token_renews_and_runs_an_attack(
    identities: dict[str, TokenUser],
    ready: Cluster,
    target: Netns,
    tmp_path: Path,
) -> None:
    """`shakeout agent` for kwok-node-0 as the DaemonSet runs it: the token of its pod.
    It holds its Lease (the operator counts it connected) and reports its NodeAttack: a
    NetworkBlackhole is applied and rolled back, the run COMPLETED."""
    pod = pod_on(ready, AGENT_NODE)
    config = kubeconfig(ready, token(ready, "shakeout-agent", pod), tmp_path / "agent")
    ready.kubectl("delete", "lease", f"shakeout-agent-{AGENT_NODE}", "-n", NAMESPACE,
                  "--ignore-not-found")  # fmt: skip
    agent = NodeAgent(ready, tmp_path, kubeconfig=config)
    agent.start()  # waits for its Lease, renewed by it
    try:
        run = test_node_agents.run_attack(
            ready, "identity", target, {"type": "NetworkBlackhole", "durationSeconds": 3}
        )
        status = test_node_agents.finished(ready, run)
        assert status["phase"] == "COMPLETED", status
        assert status["attacks"][0]["state"] == "RolledBack", status
        log = agent.output()
        assert "forbidden" not in log.lower(), log[-3000:]
    finally:
        agent.stop()
        print(agent.output()[-3000:])
