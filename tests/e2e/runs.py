"""Helpers for run tests: a demo workload, experiments, runs, and waiting on phases."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, Operator, eventually

TERMINAL = {"COMPLETED", "CANCELED", "FAILED"}
TEAM = "team-a"  # alice is a member (edit), bob and carol are not


def set_switch(cluster: Cluster, enabled: bool, user: str | None = None) -> None:
    body = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ChaosSwitch",
        "metadata": {"name": "default"},
        "spec": {"enabled": enabled},
    }
    if cluster.kubectl("get", "chaosswitch", "default", check=False).returncode != 0:
        cluster.create(body)
    else:
        cluster.kubectl(
            "patch",
            "chaosswitch",
            "default",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"enabled": enabled}}),
            user=user,
        )


def wait_no_active_runs(cluster: Cluster) -> None:
    def idle() -> bool:
        runs = cluster.get("experimentruns", "-A")["items"]
        return all(r.get("status", {}).get("phase") in TERMINAL for r in runs)

    eventually(idle, timeout=60, what="every run terminal")


def deployment(
    cluster: Cluster, name: str, replicas: int = 3, namespace: str = TEAM, timeout: float = 60
) -> None:
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        }
    )
    eventually(
        lambda: (
            cluster.get("deployment", name, "-n", namespace).get("status", {}).get("readyReplicas")
            == replicas
        ),
        timeout=timeout,
        what=f"deployment {name} ready",
    )


def replicas(cluster: Cluster, name: str, namespace: str = TEAM) -> int:
    return int(cluster.get("deployment", name, "-n", namespace)["spec"]["replicas"])


def scale_experiment(
    cluster: Cluster,
    name: str,
    app: str,
    *,
    to: int = 1,
    duration: int = 3,
    min_ready: int = 1,
    warm_up: int = 0,
    cool_down: int = 0,
    namespace: str = TEAM,
    extra_attacks: list[dict[str, Any]] | None = None,
) -> None:
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": app}}},
                "attacks": [
                    {
                        "name": "scale",
                        "type": "ScaleWorkload",
                        "durationSeconds": duration,
                        "scaleWorkload": {
                            "workload": {"kind": "Deployment", "name": app},
                            "replicas": to,
                        },
                    },
                    *(extra_attacks or []),
                ],
                "stateChecks": [
                    {
                        "name": "ready",
                        "type": "WorkloadReady",
                        "intervalSeconds": 1,
                        "workloadReady": {
                            "workload": {"kind": "Deployment", "name": app},
                            "minReady": min_ready,
                        },
                    }
                ],
                "warmUpSeconds": warm_up,
                "coolDownSeconds": cool_down,
            },
        }
    )


def schedule_now(cluster: Cluster, experiment: str, namespace: str = TEAM) -> None:
    """Give the Experiment an every-minute schedule whose latest due time counts as not yet
    run: the operator creates the scheduled run at its next tick (about a second), exactly
    as for a minute that just began, instead of the test waiting for the minute.

    The schedule's memory is its status.lastScheduleTime (written by the operator); as an
    admin, the test sets it long back, so the latest due time is newer than it and within
    the starting deadline."""
    cluster.merge_patch(
        "experiment", experiment, {"spec": {"schedule": {"cron": "* * * * *"}}}, namespace=namespace
    )
    long_ago = json.dumps({"status": {"lastScheduleTime": "2000-01-01T00:00:00Z"}})
    cluster.kubectl(
        "patch", "experiment", experiment, "-n", namespace, "--subresource=status",
        "--type=merge", "-p", long_ago,
    )  # fmt: skip


def create_run(
    cluster: Cluster,
    experiment: str,
    *,
    user: str | None = "alice",
    namespace: str = TEAM,
    check: bool = True,
) -> tuple[str, Any]:
    name = f"{experiment}-{uuid.uuid4().hex[:5]}"
    result = cluster.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"experimentRef": {"name": experiment}},
        },
        user=user,
        check=check,
    )
    return name, result


def run_status(cluster: Cluster, name: str, namespace: str = TEAM) -> dict[str, Any]:
    return dict(cluster.get("experimentrun", name, "-n", namespace).get("status") or {})


def wait_phase(
    cluster: Cluster, name: str, phases: set[str], timeout: float = 60, namespace: str = TEAM
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = run_status(cluster, name, namespace)
        return status if status.get("phase") in phases else None

    result: dict[str, Any] = eventually(reached, timeout=timeout, what=f"{name} in {phases}")
    return result


def events(cluster: Cluster, name: str, namespace: str = TEAM) -> list[str]:
    items = cluster.get(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: e.get("firstTimestamp") or "")]


def cancel_all(cluster: Cluster) -> None:
    for run in cluster.get("experimentruns", "-A")["items"]:
        if run.get("status", {}).get("phase") not in TERMINAL:
            cluster.merge_patch(
                "experimentrun",
                run["metadata"]["name"],
                '{"spec":{"cancel":true}}',
                namespace=run["metadata"]["namespace"],
            )


@pytest.fixture
def ready(crds: Cluster, live_operator: Operator) -> Iterator[Cluster]:
    """Experimenting enabled and no run under way, before and after each test."""
    set_switch(crds, True)
    cancel_all(crds)
    wait_no_active_runs(crds)
    yield crds
    set_switch(crds, True)
    cancel_all(crds)
    wait_no_active_runs(crds)


def patch_run_as(
    cluster: Cluster, user: str, name: str, body: dict[str, Any], namespace: str = TEAM
) -> str | None:
    """A merge patch of a run as `user`, straight to the API server, as `kubectl shakeout
    stop` sends it (kubectl patch reads the object first, which an outsider may not): the
    API server's refusal message, or None when it was accepted."""
    from kubernetes import client as kube
    from kubernetes import config as kube_config

    assert cluster.sandbox is not None, "needs the sandbox's per-user kubeconfigs"
    api_client = kube_config.new_client_from_config(str(cluster.sandbox.kubeconfig(user)))
    try:
        kube.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            "shakeout.dev", "v1alpha1", namespace, "experimentruns", name, body
        )
    except kube.ApiException as err:
        return str(json.loads(err.body)["message"])
    finally:
        api_client.close()
    return None


def scheduled_style_run(
    cluster: Cluster, experiment: str, namespace: str = TEAM, name: str | None = None
) -> str:
    """A run made the way the scheduler makes one: by the operator's user (the sandbox's
    admin), labelled as scheduled: the webhook lets it through unchecked, and the
    operator's pick-up is its check. Returns its name."""
    name = name or f"{experiment}-s{uuid.uuid4().hex[:5]}"
    cluster.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"shakeout.dev/trigger": "schedule"},
            },
            "spec": {"experimentRef": {"name": experiment}},
        }
    )
    return name


def pinned_deployment(cluster: Cluster, name: str, node: str, namespace: str = TEAM) -> None:
    """One replica, placed by the scheduler on `node` (a nodeSelector, not a nodeName)."""
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "containers": [{"name": "c", "image": "nginx"}],
                    },
                },
            },
        }
    )
    eventually(
        lambda: (
            cluster.get("deployment", name, "-n", namespace).get("status", {}).get("readyReplicas")
            == 1
        ),
        what=f"deployment {name} ready",
    )


def race_creates(cluster: Cluster, experiment: str, count: int = 20) -> dict[str, dict[str, Any]]:
    """`count` runs of `experiment` created at the same instant (a barrier), as a team
    would by clicking Run together: those admission refused say another run executes;
    returns the final status of each stored run."""
    barrier = threading.Barrier(count)

    def create(_: int) -> tuple[str, Any]:
        barrier.wait()
        return create_run(cluster, experiment, check=False)

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(create, range(count)))
    stored = [name for name, result in results if result.returncode == 0]
    refused = [result.stderr for _, result in results if result.returncode != 0]
    assert stored, refused
    for message in refused:
        assert "another run is executing" in message, message
    return {n: wait_phase(cluster, n, TERMINAL, timeout=60) for n in stored}


def the_one_executed(finals: dict[str, dict[str, Any]]) -> str:
    """The one run of a race that attacked; every other one failed AnotherRunActive
    without attacking anything."""
    executed = [n for n, s in finals.items() if s.get("attacks") and s["phase"] == "COMPLETED"]
    assert len(executed) == 1, finals
    for name, status in finals.items():
        if name not in executed:
            assert (status["phase"], status["reason"]) == ("FAILED", "AnotherRunActive")
            assert status.get("attacks", []) == []
    return executed[0]
