"""The sandbox's certificates and tokens: a CA, the API server's serving cert, client certs,
and the client certificate the API server presents to admission webhooks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shakeout.certs import CertificateAuthority, key_pem, write_private


@dataclass(frozen=True)
class Identity:
    """A sandbox user: a name, its groups, and how it authenticates."""

    name: str
    groups: tuple[str, ...]
    description: str


# The admin uses a client certificate (system:masters); the test identities use bearer
# tokens, so that RBAC, not a certificate, decides what they may do.
ADMIN = Identity("admin", ("system:masters",), "cluster admin (client certificate)")
TEST_IDENTITIES = (
    Identity("alice", ("team-a",), "member of team-a"),
    Identity("bob", ("team-b",), "member of team-b"),
    Identity("carol", (), "authenticated user in no team"),
)
# The API server's client certificate towards admission webhooks: signed by a CA of its
# own (webhook-client-ca.crt), which signs nothing else, so that a webhook that trusts that
# CA (`shakeout operator --webhook-client-ca`) accepts the API server and no other client,
# not even the sandbox's admin.
WEBHOOK_CLIENT = "apiserver-webhook-client"
# The webhooks the API server presents it to: every one. The sandbox's webhooks are on
# loopback, on a port chosen at each operator start; a kubeconfig user's name is matched
# against host:port exactly, or by a `*.` prefix of DNS labels, so only `*` matches them.
WEBHOOK_HOSTS = ("*",)
# The real node (`sandbox up --real-node`): the API server's client certificate towards
# kubelets, kube-proxy's (bound to system:node-proxier by the bootstrap policy), and the
# token of the NetworkPolicy engine (it reads only the in-cluster configuration).
KUBELET_CLIENT = "kube-apiserver-kubelet-client"
KUBE_PROXY = "system:kube-proxy"
NETPOL_USER = "shakeout:kube-network-policies"


@dataclass(frozen=True)
class Pki:
    """Where the sandbox's PKI files are."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "service-account.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "service-account.pub"

    @property
    def webhook_client_ca(self) -> Path:
        """The CA of the API server's webhook client certificate (for the operator)."""
        return self.dir / "webhook-client-ca.crt"

    @property
    def admission_config(self) -> Path:
        """kube-apiserver --admission-control-config-file."""
        return self.dir / "admission-config.yaml"

    @property
    def admission_kubeconfig(self) -> Path:
        """What the API server presents to admission webhooks, by webhook host."""
        return self.dir / "admission-kubeconfig.yaml"

    @property
    def tokens(self) -> Path:
        return self.dir / "tokens.csv"

    def token_of(self, user: str) -> str:
        for line in self.tokens.read_text().splitlines():
            token, name, *_ = line.split(",")
            if name == user:
                return token
        raise KeyError(user)


@dataclass(frozen=True)
class RealNodeIdentity:
    """The real node's name and address, for its certificates."""

    name: str
    ip: str


# How pods reach the API server (the `kubernetes` Service: its ClusterIP is the first
# address of components.SERVICE_CIDR, and its names): on its serving certificate when a
# real node runs pods.
KUBERNETES_SERVICE_HOSTS = (
    "10.96.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def create_pki(directory: Path, real_node: RealNodeIdentity | None = None) -> Pki:
    """Write a fresh CA, serving and client certificates, SA keys and the token file
    (and the real node's certificates and its policy engine's token when asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki(directory)
    ca = CertificateAuthority.create("shakeout-sandbox-ca")
    pki.ca_crt.write_bytes(ca.cert_pem())
    write_private(pki.key("ca"), key_pem(ca.key))

    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    if real_node is not None:
        # Pods on the real node reach it through the `kubernetes` Service, whose endpoint
        # is the node's address (components.kube_apiserver advertises it).
        hosts += (real_node.ip, *KUBERNETES_SERVICE_HOSTS)
    crt, key = ca.issue("kube-apiserver", server=True, hosts=hosts)
    pki.crt("apiserver").write_bytes(crt)
    write_private(pki.key("apiserver"), key)

    crt, key = ca.issue(ADMIN.name, ADMIN.groups)
    pki.crt(ADMIN.name).write_bytes(crt)
    write_private(pki.key(ADMIN.name), key)

    if real_node is not None:
        node = f"system:node:{real_node.name}"
        for name, orgs in (
            (node, ("system:nodes",)),
            (KUBE_PROXY, ()),
            (KUBELET_CLIENT, ()),
        ):
            crt, key = ca.issue(name, orgs)
            pki.crt(name).write_bytes(crt)
            write_private(pki.key(name), key)
        crt, key = ca.issue(node, server=True, hosts=(real_node.ip, real_node.name))
        pki.crt("kubelet-serving").write_bytes(crt)
        write_private(pki.key("kubelet-serving"), key)

    # Its CA's key is not kept: nothing else is ever signed by it.
    webhook_ca = CertificateAuthority.create("shakeout-sandbox-webhook-client-ca")
    pki.webhook_client_ca.write_bytes(webhook_ca.cert_pem())
    crt, key = webhook_ca.issue(WEBHOOK_CLIENT)
    pki.crt(WEBHOOK_CLIENT).write_bytes(crt)
    write_private(pki.key(WEBHOOK_CLIENT), key)
    config, kubeconfig = admission_configuration(pki)
    pki.admission_config.write_text(yaml.safe_dump(config, sort_keys=False))
    write_private(pki.admission_kubeconfig, yaml.safe_dump(kubeconfig, sort_keys=False).encode())

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(pki.sa_key, key_pem(sa))
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # Token file format: token,user,uid,"group1,group2" (kube-apiserver --token-auth-file).
    lines = []
    for i, ident in enumerate(TEST_IDENTITIES):
        groups = ",".join(ident.groups)
        line = f"{secrets.token_hex(16)},{ident.name},uid-{i}"
        lines.append(f'{line},"{groups}"' if groups else line)
    if real_node is not None:
        lines.append(f"{secrets.token_hex(16)},{NETPOL_USER},uid-netpol")
    write_private(pki.tokens, ("\n".join(lines) + "\n").encode())
    return pki


def admission_configuration(pki: Pki) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API server's AdmissionConfiguration and the kubeconfig it names: both webhook
    admission plugins present the client certificate WEBHOOK_CLIENT to WEBHOOK_HOSTS."""
    user = {
        "client-certificate": str(pki.crt(WEBHOOK_CLIENT)),
        "client-key": str(pki.key(WEBHOOK_CLIENT)),
    }
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "users": [{"name": host, "user": user} for host in WEBHOOK_HOSTS],
    }
    webhook = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "WebhookAdmissionConfiguration",
        "kubeConfigFile": str(pki.admission_kubeconfig),
    }
    config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [
            {"name": plugin, "configuration": webhook}
            for plugin in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")
        ],
    }
    return config, kubeconfig
