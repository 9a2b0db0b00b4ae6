"""shakeout installed as users install it (`kubectl apply -k deploy/default`), on the
sandbox's real node: the operator's two replicas from the image `make image` built (leader
election), its webhooks called by the API server through their Service, the agent
DaemonSet with its pod-bound token, and a run whose node-level attacks (CpuStress,
PacketLoss) the agent applies to a real pod, found through its real cgroup, and rolls back.
The fixture `installed` is in tests.real.installed.conftest.py; `make test-real-node` runs it
(root; it builds the images first).
"""

from __future__ import annotations

import json
from typing import Any

from shakeout.sandbox import realnode
from tests.e2e.conftest import Cluster, eventually
from tests.real.installed.conftest import SYSTEM, get, leader

NS = "real-team"


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
    pods = get(c, "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=shakeout-operator")
    assert len(pods["items"]) == 2
    for pod in pods["items"]:
        assert pod["spec"]["nodeName"] == realnode.NAME
        assert pod["spec"]["containers"][0]["image"] == "localhost/shakeout/operator:0.1.0"
    holder = leader(c)
    assert holder is not None
    assert any(holder.startswith(p["metadata"]["name"]) for p in pods["items"])
    # The agent on the real node holds its Lease, with its pod's own token.
    lease = get(c, "lease", f"shakeout-agent-{realnode.NAME}", "-n", SYSTEM)
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
    run = get(c, "experimentrun", "burn-1", "-n", NS)
    creator = json.loads(run["metadata"]["annotations"]["shakeout.dev/started-by"])
    assert creator["username"] == "admin"

    def ended() -> dict[str, Any] | None:
        status = get(c, "experimentrun", "burn-1", "-n", NS).get("status") or {}
        return status if status.get("phase") in {"COMPLETED", "FAILED", "CANCELED"} else None

    status = eventually(ended, timeout=90, what="the run's end")
    assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
    reports = get(c, "nodeattacks", "-n", NS)["items"]
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
