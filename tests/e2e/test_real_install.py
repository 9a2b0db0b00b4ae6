"""shakeout installed as users install it (`kubectl apply -k deploy/default`), on the
sandbox's real node: the operator's two replicas from the image `make image` built (leader
election), its webhooks called by the API server through their Service, the agent
DaemonSet with its pod-bound token, and a run whose node-level attacks (CpuStress,
PacketLoss) the agent applies to a real pod, found through its real cgroup, and rolls back.
`make test-real-node` runs it (root; it builds the images first).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shakeout.sandbox import realnode
from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox, SandboxError
from shakeout.sandbox.hoststate import HostState
from tests.e2e.conftest import Cluster, eventually

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "tests" / "e2e" / "real-install"
SYSTEM = "shakeout-system"
NS = "real-team"
IMAGES = cache_root() / "images"


@pytest.fixture(scope="module")
def installed() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `sudo make test-real-node`")
    if not (IMAGES / "operator.tar").exists() or not (IMAGES / "workload.tar").exists():
        pytest.fail(f"no images in {IMAGES}: run `make image` first")
    before = HostState.capture()
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-install-{checkout}")
    try:
        state = box.up(log=lambda msg: print(f"[sandbox] {msg}"), real_node=True)
    except SandboxError as err:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
        pytest.fail(f"the sandbox with a real node did not come up: {err}")
    cluster = Cluster(state.kubectl, box.kubeconfig(), box)
    try:
        cluster.kubectl("apply", "-k", str(REPO / "deploy" / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        began = time.monotonic()
        cluster.kubectl("apply", "-k", str(OVERLAY))
        cluster.kubectl(
            "rollout", "status", "daemonset/shakeout-agent", "-n", SYSTEM, "--timeout=120s"
        )
        eventually(lambda: _leader(cluster) is not None, timeout=120, what="an elected leader")
        eventually(lambda: _ready_replicas(cluster) >= 1, timeout=120, what="the leader Ready")
        print(f"[install] operator and agent up in {time.monotonic() - began:.1f}s")
        yield cluster
    finally:
        for pod in ("operator", "agent"):
            logs = cluster.kubectl(
                "logs", "-n", SYSTEM, "-l", f"app.kubernetes.io/name=shakeout-{pod}",
                "--tail=40", check=False,
            )  # fmt: skip
            print(f"--- {pod} logs ---\n{logs.stdout[-4000:]}")
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
        after = HostState.capture()
        assert before.differences(after, relevant=realnode.is_ours) == []


def _get(c: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(c.kubectl("get", *args, "-o", "json").stdout))


def _leader(c: Cluster) -> str | None:
    got = c.kubectl("get", "lease", "shakeout-operator", "-n", SYSTEM, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    holder = json.loads(got.stdout)["spec"].get("holderIdentity")
    return str(holder) if holder else None


def _ready_replicas(c: Cluster) -> int:
    status = _get(c, "deployment", "shakeout-operator", "-n", SYSTEM).get("status") or {}
    return int(status.get("readyReplicas") or 0)


def _workload(c: Cluster) -> None:
    c.kubectl("create", "namespace", NS, check=False)
    c.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "nodeSelector": {realnode.LABEL: "true"},
                        "tolerations": [
                            {"key": realnode.LABEL, "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "web",
                                "image": "localhost/shakeout/workload:1",
                                "imagePullPolicy": "Never",
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz", "port": 8080},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
    )
    c.kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=90s")


def test_the_operator_runs_from_its_image_with_a_leader_and_a_standby(
    installed: Cluster,
) -> None:
    c = installed
    pods = _get(c, "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=shakeout-operator")
    assert len(pods["items"]) == 2
    for pod in pods["items"]:
        assert pod["spec"]["nodeName"] == realnode.NAME
        assert pod["spec"]["containers"][0]["image"] == "localhost/shakeout/operator:0.1.0"
    leader = _leader(c)
    assert leader is not None
    assert any(leader.startswith(p["metadata"]["name"]) for p in pods["items"])
    # The agent on the real node holds its Lease, with its pod's own token.
    lease = _get(c, "lease", f"shakeout-agent-{realnode.NAME}", "-n", SYSTEM)
    assert lease["spec"]["holderIdentity"].startswith(realnode.NAME)


def test_node_level_attacks_on_a_real_pod_through_the_installed_operator(
    installed: Cluster,
) -> None:
    c = installed
    _workload(c)
    c.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "burn", "namespace": NS},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "web"}}, "limit": {"count": 1}},
                "attacks": [
                    {"name": "burn", "type": "CpuStress", "durationSeconds": 6,
                     "cpuStress": {"workers": 1}},
                    {"name": "lossy", "type": "PacketLoss", "durationSeconds": 6,
                     "packetLoss": {"percent": 30}},
                ],
                "stateChecks": [
                    {"name": "ready", "type": "WorkloadReady", "intervalSeconds": 1,
                     "workloadReady": {"workload": {"kind": "Deployment", "name": "web"},
                                       "minReady": 1}},
                ],
            },
        }
    )  # fmt: skip
    # Through the webhooks, called by the API server through their Service: the creator
    # is recorded by the mutating one.
    c.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"name": "burn-1", "namespace": NS},
            "spec": {"experimentRef": {"name": "burn"}},
        }
    )
    run = _get(c, "experimentrun", "burn-1", "-n", NS)
    creator = json.loads(run["metadata"]["annotations"]["shakeout.dev/started-by"])
    assert creator["username"] == "admin"

    def ended() -> dict[str, Any] | None:
        status = _get(c, "experimentrun", "burn-1", "-n", NS).get("status") or {}
        return status if status.get("phase") in {"COMPLETED", "FAILED", "CANCELED"} else None

    status = eventually(ended, timeout=90, what="the run's end")
    assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
    reports = _get(c, "nodeattacks", "-n", NS)["items"]
    assert sorted(r["spec"]["attack"]["type"] for r in reports) == ["CpuStress", "PacketLoss"]
    for report in reports:
        assert report["status"]["phase"] == "RolledBack", report["status"]
        assert [t["state"] for t in report["status"]["targets"]] == ["RolledBack"]


def test_the_validating_webhook_refuses_through_its_service(installed: Cluster) -> None:
    c = installed
    c.kubectl("create", "namespace", NS, check=False)
    refused = c.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"name": "nothing", "namespace": NS},
            "spec": {"experimentRef": {"name": "no-such-experiment"}},
        },
        check=False,
    )
    assert refused.returncode != 0
    assert "denied the request" in refused.stderr
    assert "no-such-experiment" in refused.stderr
