"""The real node's configuration and host bookkeeping, without root or a cluster."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from shakeout.sandbox import realnode
from shakeout.sandbox.components import (
    POD_CIDR,
    REAL_NODE_IP,
    SERVICE_CIDR,
    Site,
    kube_apiserver,
)
from shakeout.sandbox.hoststate import HostState
from shakeout.sandbox.pki import KUBELET_CLIENT, KUBERNETES_SERVICE_HOSTS, Pki
from shakeout.sandbox.processes import SandboxError


def test_refuses_to_start_without_root_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs root: it runs containerd and kubelet"):
        realnode.check_host()


def test_containerd_clamps_oom_score_adj_and_keeps_its_state_private(tmp_path: Path) -> None:
    paths = realnode.Paths(tmp_path / "realnode")
    config = realnode.containerd_config(paths, "/usr/sbin/runc")
    assert "restrict_oom_score_adj = true" in config
    assert f'address = "{paths.socket}"' in config
    assert f'conf_dir = "{paths.cni_conf}"' in config
    assert "/var/lib/containerd" not in config
    assert "SystemdCgroup = false" in config


def test_pods_get_addresses_away_from_kwoks() -> None:
    pods = ipaddress.ip_network(realnode.POD_RANGE)
    assert pods.subnet_of(ipaddress.ip_network(POD_CIDR))
    # kwok hands out addresses from the start of POD_CIDR.
    assert int(pods.network_address) - int(ipaddress.ip_network(POD_CIDR).network_address) > 30000


def test_the_kubelet_authenticates_and_authorizes_every_request(tmp_path: Path) -> None:
    paths = realnode.Paths(tmp_path)
    ports = dict.fromkeys(realnode.PORTS, 1) | {"apiserver": 2}
    config = realnode.kubelet_config(paths, Pki(tmp_path / "pki"), ports)
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["readOnlyPort"] == 0
    assert config["imageGCHighThresholdPercent"] == 100


def test_the_apiserver_reaches_kubelets_by_ip_only_with_a_real_node(tmp_path: Path) -> None:
    from shakeout.sandbox.binaries import Binaries

    b = Binaries(
        etcd=Path("etcd"),
        kube_apiserver=Path("kube-apiserver"),
        kubectl=Path("kubectl"),
        kube_controller_manager=Path("kcm"),
        kube_scheduler=Path("ks"),
        kwok=Path("kwok"),
        kwok_stages=tmp_path,
    )
    ports = {"etcd": 1, "apiserver": 2}
    pki = Pki(tmp_path)
    plain = kube_apiserver(b, Site(tmp_path, pki, ports, tmp_path / "kc"))
    real = kube_apiserver(b, Site(tmp_path, pki, ports, tmp_path / "kc", real_node=True))
    assert not any(a.startswith("--kubelet-") for a in plain)
    assert "--kubelet-preferred-address-types=InternalIP" in real
    assert f"--kubelet-client-certificate={pki.crt(KUBELET_CLIENT)}" in real
    assert "--enable-admission-plugins=NodeRestriction" in real
    # Its pods reach the API server through the `kubernetes` Service: the node's address.
    assert "--bind-address=127.0.0.1" in plain
    assert "--advertise-address=127.0.0.1" in plain
    assert "--bind-address=0.0.0.0" in real
    assert f"--advertise-address={REAL_NODE_IP}" in real


def test_the_kubernetes_service_address_is_the_first_of_the_service_range() -> None:
    first = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    assert str(first) == KUBERNETES_SERVICE_HOSTS[0]


def test_host_differences_name_what_changed_and_ignore_foreign_items() -> None:
    before = HostState(
        interfaces=["eth0", "lo"],
        nft_tables=[],
        mounts=["/"],
        cgroups=["memory/user"],
        entries=["/run/lock"],
        sysctls={"net.ipv4.ip_forward": "0", "net.ipv4.conf.eth0.forwarding": "0"},
    )
    after = HostState(
        interfaces=["eth0", "lo", "sko-cni0", "someone-elses0"],
        nft_tables=["ip kube-proxy"],
        mounts=["/", "/run/netns/cni-1"],
        cgroups=["memory/user", "memory/kubepods"],
        entries=["/run/lock", "/run/containerd"],
        sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth0.forwarding": "1"},
    )
    diff = before.differences(after, relevant=realnode.is_ours)
    assert "interfaces added: sko-cni0" in diff
    assert "nft tables added: ip kube-proxy" in diff
    assert "mounts added: /run/netns/cni-1" in diff
    assert "cgroups added: memory/kubepods" in diff
    assert "host paths added: /run/containerd" in diff
    assert "sysctl net.ipv4.ip_forward: 0 before, 1 now" in diff
    assert not any("someone-elses0" in line for line in diff)
    assert before.differences(before) == []
