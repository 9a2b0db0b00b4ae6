"""The operator's identity as shipped (SEC-12, SEC-18), on the real API server: the token of
the ServiceAccount shakeout-operator with deploy/base's RBAC and deploy/rbac's policies.

* Webhook configurations: it may create and patch the two named shakeout.dev (what kopf's
  managed mode sends: a POST answered 409 when they exist, then PATCHes), with webhooks on
  the shakeout.dev kinds calling the Service shakeout-webhook only. It may not patch or
  delete anyone else's, create another, nor hook pods or call a URL from its own.
* Its other rights: the custom verb `operate` on runs, ConfigMaps and Leases in its own
  namespace only.
* The operator, run with that token, sees the agents' Leases of its own namespace only and
  under their own names: forged Leases (another namespace, another name) neither fail its
  runs nor change what it thinks a node can do.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.e2e import test_node_agents
from tests.e2e.agents import AGENT_NODE, Netns, NodeAgent
from tests.e2e.conftest import REPO, Cluster, Operator, eventually
from tests.e2e.identities import NAMESPACE, TokenUser, apply_shipped_rbac, kubeconfig, token
from tests.e2e.runs import TEAM, create_run

OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:shakeout-operator"
POLICY = "ValidatingAdmissionPolicy 'shakeout-operator-webhooks'"
VICTIM = "victim.example.com"

target = test_node_agents.target


def refused(result: Any, *words: str) -> None:
    assert result.returncode != 0, f"allowed:\n{result.stdout}"
    assert "forbidden" in result.stderr.lower(), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    print(f"\nrefused: {result.stderr.strip()}")


@pytest.fixture(scope="module")
def operator_sa(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> TokenUser:
    apply_shipped_rbac(crds)
    path = tmp_path_factory.mktemp("operator-identity") / "operator.kubeconfig"
    user = TokenUser(crds, kubeconfig(crds, token(crds, "shakeout-operator"), path))
    assert user.whoami()["username"] == OPERATOR_SA
    return user


@pytest.fixture
def victim(crds: Cluster) -> Iterator[str]:
    """Someone else's webhook configuration (on a group nobody serves: harmless)."""
    crds.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": VICTIM},
            "webhooks": [webhook("guard.victim.example.com", "victim.example.com", url=True)],
        }
    )
    yield VICTIM
    crds.kubectl("delete", "validatingwebhookconfiguration", VICTIM, "--ignore-not-found")


def webhook(name: str, group: str, url: bool = False, service: str = "shakeout-webhook") -> Any:
    client = (
        {"url": "https://127.0.0.1:1/x"}
        if url
        else {"service": {"namespace": NAMESPACE, "name": service, "path": "/x"}}
    )
    return {
        "name": name,
        "clientConfig": client,
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": ["*"],
                "operations": ["CREATE"],
                "resources": ["*"],
            }
        ],
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }


def patch_shakeout(user: TokenUser, hooks: list[Any], dry_run: bool = True) -> Any:
    """A merge patch of the ValidatingWebhookConfiguration shakeout.dev, as kopf sends."""
    args = ["patch", "validatingwebhookconfiguration", "shakeout.dev", "--type=merge"]
    args += ["-p", json.dumps({"webhooks": hooks})]
    return user.kubectl(*args, *(["--dry-run=server"] if dry_run else []))


def test_the_operator_changes_only_its_own_webhook_configurations(
    operator_sa: TokenUser, crds: Cluster, victim: str
) -> None:
    crds.kubectl("apply", "-f", str(REPO / "deploy" / "base" / "operator-webhooks.yaml"))
    eventually(
        lambda: operator_sa.kubectl(
            "create", "-f", "-", "--dry-run=server",
            stdin=json.dumps({"apiVersion": "admissionregistration.k8s.io/v1",
                              "kind": "MutatingWebhookConfiguration",
                              "metadata": {"name": "probe"}}),
        ).returncode != 0,
        what="the policy shakeout-operator-webhooks in force",
    )  # fmt: skip

    # What kopf's managed mode sends, allowed: the create (409: shipped already) ...
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": "shakeout.dev"},
        }
        result = operator_sa.apply_json("create", body)
        assert result.returncode != 0, result.stdout
        assert "AlreadyExists" in result.stderr, result.stderr
    # ... and the patch of its webhooks (on its kinds, calling its Service).
    result = patch_shakeout(operator_sa, [webhook("run.shakeout.dev", "shakeout.dev")])
    assert result.returncode == 0, result.stderr

    # Someone else's configuration: neither patched (taking a guard away) nor deleted.
    client = kubernetes.config.new_client_from_config(config_file=str(operator_sa.config))
    admission = kubernetes.client.AdmissionregistrationV1Api(client)
    with pytest.raises(kubernetes.client.ApiException) as err:
        admission.patch_validating_webhook_configuration(VICTIM, {"webhooks": []})
    assert err.value.status == 403, err.value
    print(f"\nrefused: {err.value.body}")
    with pytest.raises(kubernetes.client.ApiException) as err:
        admission.delete_validating_webhook_configuration(VICTIM)
    assert err.value.status == 403, err.value
    client.close()
    assert crds.get("validatingwebhookconfiguration", VICTIM)["webhooks"]

    # A configuration of its own under another name: a mutating webhook on every pod.
    evil = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "evil.example.com"},
        "webhooks": [webhook("pods.evil.example.com", "")],
    }
    refused(operator_sa.apply_json("create", evil), POLICY, "named shakeout.dev")
    evil["kind"] = "ValidatingWebhookConfiguration"
    refused(operator_sa.apply_json("create", evil), POLICY)

    # Its own configuration turned into a hook on pods, or onto a URL of its choice.
    refused(patch_shakeout(operator_sa, [webhook("pods.shakeout.dev", "")]), POLICY, "kinds")
    refused(patch_shakeout(operator_sa, [webhook("u.shakeout.dev", "shakeout.dev", url=True)]))
    refused(patch_shakeout(operator_sa, [webhook("s.shakeout.dev", "shakeout.dev", service="api")]))
    # Nor may it delete its own (RBAC: get and patch only).
    refused(operator_sa.kubectl("delete", "mutatingwebhookconfiguration", "shakeout.dev"))


@pytest.mark.parametrize(
    ("verb", "resource", "where", "allowed"),
    [
        ("operate", "experimentruns.shakeout.dev", ["-n", TEAM], True),
        ("create", "configmaps", ["-n", NAMESPACE], True),
        ("delete", "configmaps", ["-n", NAMESPACE], True),
        ("watch", "configmaps", ["-n", NAMESPACE], True),
        ("create", "configmaps", ["-n", TEAM], False),
        ("get", "configmaps", ["-n", TEAM], False),
        ("watch", "leases.coordination.k8s.io", ["-n", NAMESPACE], True),
        ("list", "leases.coordination.k8s.io", ["-n", TEAM], False),
        ("list", "leases.coordination.k8s.io", ["--all-namespaces"], False),
        ("update", "leases.coordination.k8s.io", ["-n", "kube-node-lease"], False),
        ("create", "validatingwebhookconfigurations", [], True),
        ("patch", "validatingwebhookconfigurations/shakeout.dev", [], True),
        ("patch", f"validatingwebhookconfigurations/{VICTIM}", [], False),
        ("patch", "mutatingwebhookconfigurations/other", [], False),
        ("list", "validatingwebhookconfigurations", [], False),
        ("delete", "mutatingwebhookconfigurations/shakeout.dev", [], False),
    ],
)
def test_the_operators_rights(
    operator_sa: TokenUser, verb: str, resource: str, where: list[str], allowed: bool
) -> None:
    result = operator_sa.kubectl("auth", "can-i", verb, resource, *where)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (result.stdout, result.stderr)


def test_users_do_not_operate(crds: Cluster) -> None:
    for user in ("alice", "bob", "carol"):
        args = ("auth", "can-i", "operate", "experimentruns.shakeout.dev", "-n", TEAM)
        assert crds.kubectl(*args, user=user, check=False).stdout.strip() == "no"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Forger:
    """Writes forged agent Leases for a node every 0.3 s, each time from a new holder and
    with capabilities that say the node can do nothing: in another namespace under the
    right name, and in the operator's namespace under another name."""

    def __init__(self, cluster: Cluster, node: str, elsewhere: str) -> None:
        self.cluster = cluster
        self.places = [
            (elsewhere, f"shakeout-agent-{node}"),
            (NAMESPACE, f"forged-{node}"),
            (NAMESPACE, f"shakeout-agent-{node}x"),
        ]
        self.node = node
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.writes = 0

    def body(self, namespace: str, name: str) -> dict[str, Any]:
        nothing = dict.fromkeys(("NetworkBlackhole", "PacketLoss", "CpuStress"), "forged")
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"shakeout.dev/agent": "node"},
                "annotations": {
                    "shakeout.dev/node": self.node,
                    "shakeout.dev/capabilities": json.dumps(nothing),
                },
            },
            "spec": {
                "holderIdentity": f"forged-{uuid.uuid4().hex[:6]}",
                "leaseDurationSeconds": 3600,
                "renewTime": now(),
            },
        }

    def run(self) -> None:
        while not self.stop.wait(0.3):
            for namespace, name in self.places:
                self.cluster.apply(self.body(namespace, name), check=False)
                self.writes += 1

    def __enter__(self) -> Forger:
        for namespace, name in self.places:
            self.cluster.apply(self.body(namespace, name))
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        for namespace, name in self.places:
            self.cluster.kubectl("delete", "lease", name, "-n", namespace, check=False)


def test_forged_agent_leases_are_ignored_by_the_operator_under_its_own_identity(
    operator_sa: TokenUser,
    ready: Cluster,
    live_operator: Operator,
    target: Netns,
    tmp_path: Path,
) -> None:
    """The operator runs with its ServiceAccount's token (no webhook: the API server could
    not reach a Service here), so it has only the shipped rights; Leases beyond its
    namespace are out of its reach anyway. While forged Leases keep claiming kwok-node-0
    (every attack unsupported, a new holder each time) and kwok-node-1 (which has no
    agent), a NetworkBlackhole on kwok-node-0 completes, and a run on kwok-node-1 still
    fails for want of an agent."""
    live_operator.stop()  # one operator at a time; the next test's live_operator restarts it
    own = Operator(
        Cluster(ready.kubectl_bin, operator_sa.config, ready.sandbox),
        tmp_path / "operator.log",
        extra=("--no-webhook",),
    )
    agent = NodeAgent(ready, tmp_path / "agent")
    (tmp_path / "agent").mkdir()
    elsewhere = f"forge-{uuid.uuid4().hex[:6]}"
    ready.kubectl("create", "namespace", elsewhere)
    try:
        own.start()
        agent.start()
        with Forger(ready, AGENT_NODE, elsewhere), Forger(ready, "kwok-node-1", elsewhere) as f:
            run = test_node_agents.run_attack(
                ready, "forged", target, {"type": "NetworkBlackhole", "durationSeconds": 3}
            )
            status = test_node_agents.finished(ready, run)
            assert status["phase"] == "COMPLETED", status
            assert status["attacks"][0]["state"] == "RolledBack", status

            pod = {"name": "noagent", "namespace": TEAM, "labels": {"app": "noagent"}}
            spec = {"nodeName": "kwok-node-1", "containers": [{"name": "c", "image": "x"}]}
            ready.apply({"apiVersion": "v1", "kind": "Pod", "metadata": pod, "spec": spec})
            test_node_agents.node_experiment(
                ready, "noagent", {"type": "NetworkBlackhole"}, agentTimeoutSeconds=2
            )
            run, _ = create_run(ready, "noagent")
            status = test_node_agents.finished(ready, run, timeout=30)
            assert (status["phase"], status["reason"]) == ("FAILED", "AgentsNotConnected"), status
            assert f.writes > 10
        log = own.output()
        assert "ignored: an agent's Lease is named" in log, log[-3000:]
        assert "Forbidden" not in log, log[-5000:]
        assert " 403 " not in log, log[-5000:]
    finally:
        agent.stop()
        own.stop()
        print(own.output()[-5000:])
        ready.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)
        live_operator.start()
