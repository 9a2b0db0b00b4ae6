"""The sandbox is a real cluster: pods run on kwok nodes and RBAC is enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shakeout.sandbox.cluster import Sandbox
from tests.e2e.conftest import Cluster, eventually


def test_deployment_pods_run_on_kwok_nodes(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=3", "-n", namespace)

    def running() -> list[tuple[str, str]]:
        pods = cluster.get("pods", "-n", namespace, "-l", "app=web")["items"]
        ready = [
            (p["spec"].get("nodeName", ""), p["status"].get("phase", ""))
            for p in pods
            if p["status"].get("phase") == "Running"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]
        return ready if len(ready) == 3 else []

    pods = eventually(running, timeout=60, what="3 Running and Ready pods")
    assert all(node.startswith("kwok-node-") for node, _ in pods)
    cluster.kubectl(
        "wait", "deployment/web", "-n", namespace, "--for=condition=Available", "--timeout=30s"
    )


def test_rbac_is_enforced_for_the_test_identities(cluster: Cluster) -> None:
    cm = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {}}
    )
    # team-b may not write in team-a, carol (no team) nowhere; alice may in team-a.
    denied = cluster.kubectl("create", "-n", "team-a", "-f", "-", user="bob", stdin=cm, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert 'User "bob"' in denied.stderr
    denied = cluster.kubectl("get", "pods", "-n", "team-a", user="carol", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    allowed = cluster.kubectl("create", "-n", "team-a", "-f", "-", user="alice", stdin=cm)
    assert "configmap/probe created" in allowed.stdout
    cluster.kubectl("delete", "configmap", "probe", "-n", "team-a")
    whoami = cluster.kubectl("auth", "whoami", "-o", "json", user="bob")
    info = json.loads(whoami.stdout)["status"]["userInfo"]
    assert info["username"] == "bob"
    assert "team-b" in info["groups"]


def test_a_failed_start_leaves_no_process_behind(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second, throwaway sandbox whose start fails half-way (after etcd and the API
    server are up): every process it started is stopped again."""
    box = Sandbox(tmp_path / "broken")

    def boom(*_: object) -> bool:
        raise RuntimeError("nodes never became Ready")

    monkeypatch.setattr(Sandbox, "_nodes_ready", boom)
    started: list[int] = []
    real_spawn = Sandbox._spawn  # noqa: SLF001

    def spawn(self: Sandbox, name: str, args: list[str]) -> int:
        pid = real_spawn(self, name, args)
        started.append(pid)
        return pid

    monkeypatch.setattr(Sandbox, "_spawn", spawn)
    with pytest.raises(RuntimeError, match="never became Ready"):
        box.up(log=lambda _m: None)
    assert len(started) == 5  # etcd, apiserver, controller manager, scheduler, kwok
    assert box.state() is None
    for pid in started:  # stopped and reaped: no process, not even a zombie
        assert not Path(f"/proc/{pid}").exists(), pid
