"""The sandbox's components and their command lines: one argument builder per component.

Every builder takes the binaries and the sandbox's `Site` and returns the full argv,
binary first. All of them listen on loopback only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shakeout.sandbox.binaries import Binaries
from shakeout.sandbox.pki import KUBELET_CLIENT, Pki

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
# The real node's address: on a bridge of its own on the host (sandbox/realnode.py).
REAL_NODE_IP = "10.99.0.1"
POD_CIDR = "10.244.0.0/16"
# The loopback ports a sandbox listens on, picked free at each start.
PORTS = ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")
# Stop order: dependants first, etcd last. Prometheus depends on nothing but is stopped
# first: it only watches.
COMPONENTS = (
    "prometheus",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)
# The probes and metrics of the controller manager and the scheduler need no credentials.
ALWAYS_ALLOW = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"


@dataclass(frozen=True)
class Site:
    """Where one sandbox's components find their files, and the ports they listen on."""

    dir: Path
    pki: Pki
    ports: Mapping[str, int]
    admin_kubeconfig: Path
    real_node: bool = False


def etcd(binaries: Binaries, site: Site) -> list[str]:
    client = f"http://{LOOPBACK}:{site.ports['etcd']}"
    peer = f"http://{LOOPBACK}:{site.ports['etcd-peer']}"
    return [
        str(binaries.etcd),
        "--name=sandbox",
        f"--data-dir={site.dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=sandbox={peer}",
        "--unsafe-no-fsync",
        "--auto-compaction-retention=1",
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ]


def kube_apiserver(binaries: Binaries, site: Site) -> list[str]:
    """With a real node, its pods reach the API server through the `kubernetes` Service,
    whose endpoint is the advertised address: the node's (REAL_NODE_IP, on a bridge of
    the host), so the API server listens on every address of the host then, not on
    loopback only (its certificate names that address and the Service: pki.py)."""
    p = site.pki
    args = [
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://{LOOPBACK}:{site.ports['etcd']}",
        # With a real node: every address, its port kept to the host and the node's
        # bridges by realnode._guard_apiserver.
        f"--bind-address={'0.0.0.0' if site.real_node else LOOPBACK}",  # noqa: S104
        f"--advertise-address={REAL_NODE_IP if site.real_node else LOOPBACK}",
        f"--secure-port={site.ports['apiserver']}",
        f"--tls-cert-file={p.crt('apiserver')}",
        f"--tls-private-key-file={p.key('apiserver')}",
        f"--client-ca-file={p.ca_crt}",
        f"--token-auth-file={p.tokens}",
        # Admission webhooks are called with a client certificate (pki.WEBHOOK_CLIENT).
        f"--admission-control-config-file={p.admission_config}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={site.dir / 'apiserver-certs'}",
    ]
    if site.real_node:
        # logs/exec/port-forward reach the real kubelet by its InternalIP (there is no DNS
        # name for it), present a client certificate (the kubelet authorizes it with a
        # SubjectAccessReview), and check the kubelet's serving certificate.
        args += [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={p.crt(KUBELET_CLIENT)}",
            f"--kubelet-client-key={p.key(KUBELET_CLIENT)}",
            f"--kubelet-certificate-authority={p.ca_crt}",
            "--enable-admission-plugins=NodeRestriction",
        ]
    if not binaries.has_nodes:
        # No controller manager makes no default ServiceAccount; envtest does the same.
        args.append("--disable-admission-plugins=ServiceAccount")
    return args


def _controller(binary: Path | None, site: Site, port: str) -> list[str]:
    """The arguments the controller manager and the scheduler share: the admin's
    kubeconfig for everything, loopback, and no leader election (there is one of each)."""
    assert binary is not None
    admin = str(site.admin_kubeconfig)
    return [
        str(binary),
        f"--kubeconfig={admin}",
        f"--authentication-kubeconfig={admin}",
        f"--authorization-kubeconfig={admin}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={site.ports[port]}",
        "--leader-elect=false",
        ALWAYS_ALLOW,
    ]


def kube_controller_manager(binaries: Binaries, site: Site) -> list[str]:
    return [
        *_controller(binaries.kube_controller_manager, site, "kcm"),
        f"--service-account-private-key-file={site.pki.sa_key}",
        f"--root-ca-file={site.pki.ca_crt}",
        "--use-service-account-credentials=false",
        # kwok renews node leases; a short grace period lets a dead fake node
        # be noticed quickly, as kwokctl does.
        "--node-monitor-grace-period=40s",
    ]


def kube_scheduler(binaries: Binaries, site: Site) -> list[str]:
    return _controller(binaries.kube_scheduler, site, "scheduler")


def kwok(binaries: Binaries, site: Site) -> list[str]:
    assert binaries.kwok is not None
    assert binaries.kwok_stages is not None
    args = [
        str(binaries.kwok),
        f"--kubeconfig={site.admin_kubeconfig}",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-ip=10.0.0.1",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
    ]
    for stage in sorted(binaries.kwok_stages.glob("*.yaml")):
        args += ["--config", str(stage)]
    return args


# Each component's argument builder, by the component's name.
ARGUMENTS: dict[str, Callable[[Binaries, Site], list[str]]] = {
    "etcd": etcd,
    "kube-apiserver": kube_apiserver,
    "kube-controller-manager": kube_controller_manager,
    "kube-scheduler": kube_scheduler,
    "kwok": kwok,
}
# The components that give the sandbox nodes, in start order (after the API server).
NODE_COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kwok")
