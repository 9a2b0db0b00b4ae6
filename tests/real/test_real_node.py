"""A sandbox with one real node (`shakeout sandbox up --real-node`), as root.

Real containers from an imported image, `kubectl logs` and `kubectl exec` through the
kubelet's own authentication, a ClusterIP Service through kube-proxy, a NetworkPolicy that
really drops packets, and a host left as it was found. `make test-real-node` runs it
(`make test-e2e` leaves it out: it needs root and a sandbox of its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shakeout.sandbox import processes, realnode
from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox, SandboxError
from shakeout.sandbox.hoststate import HostState
from tests.e2e.conftest import Cluster, eventually
from tests.real.pods import fetch_from_pod

REPO = Path(__file__).resolve().parents[2]
NS = "realnode-test"


@dataclass
class RealNode:
    cluster: Cluster
    box: Sandbox
    before: HostState


@pytest.fixture(scope="module")
def real() -> Iterator[RealNode]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `sudo make test-real-node`")
    before = HostState.capture()
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-realnode-{checkout}")
    began = time.monotonic()
    try:
        state = box.up(log=lambda msg: print(f"[sandbox] {msg}"), real_node=True)
    except SandboxError as err:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
        pytest.fail(f"the sandbox with a real node did not come up: {err}")
    print(f"[sandbox] up with the real node in {time.monotonic() - began:.1f}s")
    try:
        yield RealNode(Cluster(state.kubectl, box.kubeconfig(), box), box, before)
    finally:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))  # a no-op after the last test


def _pod(name: str, labels: dict[str, str], command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": realnode.HTTPD_IMAGE,
        "imagePullPolicy": "Never",
        "securityContext": {"runAsUser": 65534, "runAsNonRoot": True},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    if command:
        container["command"] = command
        del container["readinessProbe"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            # The real node is tainted: only pods that ask for it land there.
            "nodeSelector": {realnode.LABEL: "true"},
            "tolerations": [{"key": realnode.LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            # busybox ignores SIGTERM as PID 1.
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


@pytest.fixture(scope="module")
def pods(real: RealNode) -> RealNode:
    """`web` (busybox httpd on 8080, behind the Service `web`) and `client`."""
    c = real.cluster
    c.kubectl("create", "namespace", NS)
    c.apply(_pod("web", {"app": "web"}))
    c.apply(_pod("client", {"app": "client"}, ["sh", "-c", "echo client started; exec sleep 3600"]))
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    c.kubectl("wait", "pod/web", "pod/client", "-n", NS, "--for=condition=Ready", "--timeout=90s")
    return real


def _get(c: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(c.kubectl("get", *args, "-o", "json").stdout))


def _fetch_from_client(c: Cluster, host: str, port: int) -> str:
    """An HTTP GET from the client pod (3 s timeout): the answer or ''."""
    return fetch_from_pod(c, NS, "client", host, port, wait=3)


def _dropped(real: RealNode) -> float:
    """Packets the policy engine gave a drop verdict (its Prometheus counter)."""
    st = real.box.state()
    assert st is not None
    url = f"http://127.0.0.1:{st.ports['netpol-metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kube_network_policies_packet_count{") and 'verdict="drop"' in line
    )


def test_the_real_node_is_ready_with_its_own_identity(real: RealNode) -> None:
    c = real.cluster
    node = _get(c, "node", realnode.NAME)
    ready = {x["type"]: x["status"] for x in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert node["metadata"]["labels"][realnode.LABEL] == "true"
    assert {"key": realnode.LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == realnode.NODE_IP
    # The kwok nodes are still there beside it.
    names = {n["metadata"]["name"] for n in _get(c, "nodes")["items"]}
    assert {"kwok-node-0", "kwok-node-1", realnode.NAME} <= names
    # Its own certificate (system:node:realnode-0): NodeRestriction keeps it to its node.
    node_kubeconfig = real.box.dir / "realnode" / "node.kubeconfig"
    own = c.kubectl(f"--kubeconfig={node_kubeconfig}", "auth", "whoami", "-o", "json", check=False)
    assert json.loads(own.stdout)["status"]["userInfo"]["username"] == (
        f"system:node:{realnode.NAME}"
    )
    other = c.kubectl(
        f"--kubeconfig={node_kubeconfig}", "label", "node", "kwok-node-0", "x=y", check=False
    )
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()


def test_a_pod_from_the_imported_image_runs_on_the_real_node(pods: RealNode) -> None:
    pod = _get(pods.cluster, "pod", "web", "-n", NS)
    assert pod["spec"]["nodeName"] == realnode.NAME
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"].startswith("10.244.128.")
    # An ordinary pod (no toleration) does not land on the real node.
    pods.cluster.kubectl("create", "deployment", "plain", "--image=nginx", "-n", NS)
    eventually(
        lambda: [
            p["spec"].get("nodeName")
            for p in _get(pods.cluster, "pods", "-n", NS, "-l", "app=plain")["items"]
            if p["spec"].get("nodeName")
        ],
        timeout=30,
        what="the plain pod scheduled",
    )
    placed = _get(pods.cluster, "pods", "-n", NS, "-l", "app=plain")["items"]
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in placed)


def test_kubectl_logs_and_exec_reach_the_kubelet(pods: RealNode) -> None:
    c = pods.cluster
    logs = c.kubectl("logs", "client", "-n", NS)
    assert "client started" in logs.stdout
    out = c.kubectl("exec", "client", "-n", NS, "--", "cat", "/www/index.html")
    assert out.stdout == realnode.INDEX_HTML
    who = c.kubectl("exec", "client", "-n", NS, "--", "id", "-u")
    assert who.stdout.strip() == "65534"


def test_a_service_reaches_the_pod_from_a_pod_and_from_the_host(pods: RealNode) -> None:
    c = pods.cluster
    ip = _get(c, "service", "web", "-n", NS)["spec"]["clusterIP"]
    assert "hello from a real container" in _fetch_from_client(c, ip, 80)
    with urllib.request.urlopen(f"http://{ip}:80/", timeout=5) as resp:
        assert resp.read().decode() == realnode.INDEX_HTML


def test_pods_reach_the_api_server_through_the_kubernetes_service(pods: RealNode) -> None:
    """An operator installed as users install it talks to the API server from a pod: the
    `kubernetes` Service's endpoint is the node's address, and the API server's
    certificate names it and the Service (verified with the cluster's CA)."""
    c = pods.cluster
    endpoints = _get(c, "endpoints", "kubernetes", "-n", "default")
    assert [a["ip"] for a in endpoints["subsets"][0]["addresses"]] == [realnode.NODE_IP]
    service = _get(c, "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    # Plain HTTP to its TLS port: the API server's own answer, through kube-proxy.
    assert "Client sent an HTTP request to an HTTPS server" in _fetch_from_client(c, service, 443)
    st = pods.box.state()
    assert st is not None
    context = ssl.create_default_context(cafile=str(pods.box.pki.ca_crt))
    for name in ("kubernetes.default.svc", realnode.NODE_IP):
        with (
            socket.create_connection((realnode.NODE_IP, st.ports["apiserver"]), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() is not None


def test_a_network_policy_drops_traffic_and_deleting_it_restores_it(pods: RealNode) -> None:
    c = pods.cluster
    ip = _get(c, "service", "web", "-n", NS)["spec"]["clusterIP"]
    pod_ip = _get(c, "pod", "web", "-n", NS)["status"]["podIP"]
    assert "hello" in _fetch_from_client(c, pod_ip, 8080)
    c.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-web", "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
        }
    )
    eventually(
        lambda: "hello" not in _fetch_from_client(c, pod_ip, 8080),
        timeout=30,
        what="the policy to drop pod-to-pod traffic",
    )
    assert "hello" not in _fetch_from_client(c, ip, 80)  # nor through the Service
    assert _dropped(pods) > 0  # the engine's own verdicts did it
    c.kubectl("delete", "networkpolicy", "deny-web", "-n", NS)
    eventually(
        lambda: "hello" in _fetch_from_client(c, pod_ip, 8080),
        timeout=30,
        what="traffic back after deleting the policy",
    )
    assert "hello" in _fetch_from_client(c, ip, 80)


def test_sandbox_status_shows_the_real_node(real: RealNode) -> None:
    status = real.box.status()
    assert status["up"]
    assert status["realNode"]["name"] == realnode.NAME
    for name in realnode.COMPONENTS:
        assert status["components"][name] is True, name


def test_down_leaves_the_host_as_it_found_it(real: RealNode) -> None:
    """Last: interfaces, nftables, iptables, mounts, cgroups, host paths and sysctls."""
    st = real.box.state()
    assert st is not None
    pids = dict(st.pids)
    began = time.monotonic()
    real.box.down(log=lambda msg: print(f"[sandbox] {msg}"))
    print(f"[sandbox] down in {time.monotonic() - began:.1f}s")
    for name, pid in pids.items():
        assert not processes.alive(pid, name), name
    after = HostState.capture()
    assert real.before.differences(after, relevant=realnode.is_ours) == []
    assert after.nft_tables == real.before.nft_tables
    assert after.iptables == real.before.iptables
    for name in (*realnode.KUBELET_SYSCTLS, "net.ipv4.ip_forward"):
        assert after.sysctls[name] == real.before.sysctls[name], name


def test_a_failed_start_leaves_the_host_as_it_found_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real node whose kubelet never becomes Ready: `up` fails, and everything it had
    started and changed on the host is gone again."""
    before = HostState.capture()
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-realnode-broken-{checkout}")

    def boom(_self: realnode.Node) -> bool:
        raise RuntimeError("the node never became Ready")

    monkeypatch.setattr(realnode.Node, "_ready", boom)
    with pytest.raises(RuntimeError, match="never became Ready"):
        box.up(log=lambda msg: print(f"[broken] {msg}"), real_node=True)
    assert box.state() is None
    assert before.differences(HostState.capture(), relevant=realnode.is_ours) == []
