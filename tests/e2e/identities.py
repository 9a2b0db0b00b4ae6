"""The shipped identities of the operator and the node agents, as the API server sees them:
their RBAC applied from deploy/base, their ServiceAccount tokens, kubectl with a token.

An agent's token is bound to a pod on its node, as the kubelet's is: the API server then
names the node in the request's user info (authentication.kubernetes.io/node-name), which
the policy shakeout-agent-identity checks.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tests.e2e.conftest import REPO, Cluster

NAMESPACE = "shakeout-system"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def shipped(cluster: Cluster, kinds: set[str]) -> list[dict[str, Any]]:
    """The objects of these kinds in deploy/base, as kustomize renders them."""
    rendered = cluster.kubectl("kustomize", str(REPO / "deploy" / "base")).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]


def apply_shipped_rbac(cluster: Cluster) -> None:
    """The operator's and the agent's ServiceAccounts and roles, and the policies."""
    cluster.kubectl("apply", "-f", str(REPO / "deploy" / "base" / "namespace.yaml"))
    cluster.apply(yaml.safe_dump_all(shipped(cluster, RBAC_KINDS)))
    cluster.kubectl("apply", "-k", str(REPO / "deploy" / "rbac"))


def pod_on(cluster: Cluster, node: str, service_account: str = "shakeout-agent") -> str:
    """A kwok pod of this ServiceAccount bound to `node`: what a token can be bound to."""
    name = f"{service_account}-{node}-{uuid.uuid4().hex[:4]}"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "serviceAccountName": service_account,
                "nodeName": node,
                "containers": [{"name": "c", "image": "shakeout/operator:0.1.0"}],
            },
        }
    )
    return name


def token(cluster: Cluster, service_account: str, pod: str | None = None) -> str:
    """A token of the ServiceAccount, bound to `pod` (None: bound to nothing)."""
    bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod}"] if pod else []
    args = ["create", "token", service_account, "-n", NAMESPACE, "--duration=1h", *bound]
    return cluster.kubectl(*args).stdout.strip()


def kubeconfig(cluster: Cluster, token_: str, path: Path) -> Path:
    """The admin kubeconfig's cluster, with this token as its only user."""
    admin = yaml.safe_load(cluster.admin_kubeconfig.read_text())
    context = admin["contexts"][0]["context"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [c for c in admin["clusters"] if c["name"] == context["cluster"]],
        "users": [{"name": "token", "user": {"token": token_}}],
        "contexts": [
            {"name": "token", "context": {"cluster": context["cluster"], "user": "token"}}
        ],
        "current-context": "token",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class TokenUser:
    """kubectl as the holder of one token."""

    def __init__(self, cluster: Cluster, config: Path) -> None:
        self.cluster = cluster
        self.config = config

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cluster.kubectl_bin, f"--kubeconfig={self.config}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def apply_json(self, verb: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl(verb, "-f", "-", stdin=json.dumps(obj))

    def patch_status(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> Any:
        """A merge patch of a shakeout.dev object's status, as the agent reports: no read
        before (kubectl would GET the status first, which the agent may not). Returns a
        CompletedProcess-like result (returncode, stderr)."""
        client = kubernetes.config.new_client_from_config(config_file=str(self.config))
        api = kubernetes.client.CustomObjectsApi(client)
        try:
            api.patch_namespaced_custom_object_status(
                "shakeout.dev", "v1alpha1", namespace, plural, name, body
            )
        except kubernetes.client.ApiException as err:
            return subprocess.CompletedProcess([], 1, "", f"{err.status} {err.reason}: {err.body}")
        finally:
            client.close()
        return subprocess.CompletedProcess([], 0, "", "")

    def whoami(self) -> dict[str, Any]:
        out = self.kubectl("auth", "whoami", "-o", "json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout)["status"]["userInfo"])
