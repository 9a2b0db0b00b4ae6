"""Prometheus and Alert state checks against the sandbox's real Prometheus.

The system under test is the workload server of images/workload (our Go HTTP server with
Prometheus metrics), built and run here as a host process on 127.0.0.1 (kwok nodes run no
containers), scraped every second by the sandbox's Prometheus through a file_sd target, and
kept busy by a client thread. The checks ask for its share of failed answers, in PromQL.

What degrades the workload, in most tests: the test itself, through the workload's knob
(`POST /config?error_rate=0.5`: an exact half of its answers become 503s) as soon as the
run reaches ATTACKS_STARTED, and back to 0 afterwards. Their run's own attack (a
ScaleWorkload on a kwok Deployment) is real but cannot touch a host process; the knob plays
the effect an attack on the workload would have. The run does not know: it sees only what
the real Prometheus answers, as in a cluster. The last test has no knob: the workload runs
in a network namespace a kwok pod names, a real node agent applies the run's
NetworkBlackhole to it, and the check sees the real Prometheus lose its target (`up` 0).

The admin's setting is the ChaosSwitch's spec.metricChecks.prometheusUrl (the sandbox's
Prometheus on loopback); the session's operator is used as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shakeout.sandbox.cluster import Sandbox, SandboxError
from tests.e2e.agents import Netns, NodeAgent, running_agent
from tests.e2e.conftest import REPO, Cluster, eventually
from tests.e2e.runs import TEAM, create_run, deployment, wait_phase
from tests.e2e.test_node_agents import target_pod
from tests.unit.test_docs import examples

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


def error_ratio(job: str) -> str:
    """The share of the workload's answers of / that failed, over the last 5 s. A workload
    that never failed has no 503 series: `or vector(0)` says that absence means zero."""
    sel = f'job="{job}",path="/"'
    return (
        f'(sum(rate(workload_http_requests_total{{{sel},code="503"}}[5s])) or vector(0))'
        f" / sum(rate(workload_http_requests_total{{{sel}}}[5s]))"
    )


@dataclass
class Workload:
    """images/workload as a host process, with a client that keeps asking it."""

    address: str
    job: str
    process: subprocess.Popen[bytes]
    stop: threading.Event = field(default_factory=threading.Event)

    def set_error_rate(self, rate: float) -> None:
        body = urllib.parse.urlencode({"error_rate": str(rate)}).encode()
        with urllib.request.urlopen(f"http://{self.address}/config", data=body, timeout=5) as resp:
            assert resp.status == 200

    def keep_busy(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{self.address}/", timeout=2).close()
            time.sleep(0.02)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        return list(json.loads(resp.read())["data"]["result"])


@pytest.fixture(scope="module")
def workload_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("workload") / "workload"
    subprocess.run(
        ["go", "build", "-o", str(out), "."],
        cwd=REPO / "images" / "workload",
        check=True,
        env={**os.environ, "CGO_ENABLED": "0"},
        timeout=600,
    )
    return out


@pytest.fixture
def prometheus(ready: Cluster) -> Iterator[tuple[Sandbox, str]]:
    """The sandbox's Prometheus, running (started again if a test stopped it), allowed by
    the admin as the cluster's Prometheus; the setting removed afterwards."""
    box = ready.sandbox
    if box is None:
        pytest.fail("these tests need the sandbox's Prometheus (not an external cluster)")
    try:
        url = box.start_prometheus(log=lambda msg: print(f"[sandbox] {msg}"))
    except SandboxError as err:
        # Never skip: CI builds it (make test-e2e depends on make prometheus).
        pytest.fail(f"no Prometheus on the sandbox: {err}")
    ready.merge_patch("chaosswitch", "default", {"spec": {"metricChecks": {"prometheusUrl": url}}})
    try:
        yield box, url
    finally:
        box.start_prometheus(log=lambda msg: print(f"[sandbox] {msg}"))
        ready.merge_patch("chaosswitch", "default", {"spec": {"metricChecks": None}})


@contextlib.contextmanager
def running_workload(box: Sandbox, url: str, binary: Path, job: str) -> Iterator[Workload]:
    """The workload on a free loopback port, busy, scraped as `job`, with a value of its
    error ratio in Prometheus already."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [str(binary), f"-listen=127.0.0.1:{port}", f"-name={job}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shop = Workload(f"127.0.0.1:{port}", job, proc)
    client = threading.Thread(target=shop.keep_busy, daemon=True)
    client.start()
    box.scrape(job, shop.address, {"job": job})
    try:
        # Scraped, with two samples: the ratio has a value before any run asks for it.
        eventually(
            lambda: query(url, error_ratio(job)),
            timeout=60,
            what=f"Prometheus has a value for {job}'s error ratio",
        )
        yield shop
    finally:
        box.unscrape(job)
        shop.stop.set()
        client.join(timeout=5)
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def workload(prometheus: tuple[Sandbox, str], workload_binary: Path) -> Iterator[Workload]:
    box, url = prometheus
    with running_workload(box, url, workload_binary, f"shop-{uuid.uuid4().hex[:6]}") as shop:
        yield shop


def experiment(name: str, check: dict[str, Any], duration: int = 20) -> dict[str, Any]:
    """A ScaleWorkload of the kwok Deployment `name` to 2 replicas for `duration` seconds,
    under one state check asked every second."""
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": name}}},
            "attacks": [
                {
                    "name": "scale",
                    "type": "ScaleWorkload",
                    "durationSeconds": duration,
                    "scaleWorkload": {
                        "workload": {"kind": "Deployment", "name": name},
                        "replicas": 2,
                    },
                }
            ],
            "stateChecks": [{"name": "errors", "intervalSeconds": 1, **check}],
        },
    }


def promql_check(job: str) -> dict[str, Any]:
    return {
        "type": "Prometheus",
        "prometheus": {
            "query": error_ratio(job),
            "comparison": "LessOrEqual",
            "threshold": 0.05,
            "timeoutSeconds": 2,
        },
    }


def replicas(cluster: Cluster, name: str) -> int:
    return int(cluster.get("deployment", name, "-n", TEAM)["spec"]["replicas"])


def run_under(
    cluster: Cluster, workload: Workload, check: dict[str, Any], during_attacks: Any
) -> dict[str, Any]:
    """One run of a fresh experiment; `during_attacks()` is called once the run reaches
    ATTACKS_STARTED. The run's final status, once the Deployment is back to 1 replica."""
    name = workload.job
    deployment(cluster, name, replicas=1)
    cluster.apply(experiment(name, check), user="alice")
    run, _ = create_run(cluster, name, user="alice")
    reached = wait_phase(cluster, run, {"ATTACKS_STARTED", *TERMINAL}, timeout=90)
    assert reached["phase"] == "ATTACKS_STARTED", reached
    eventually(lambda: replicas(cluster, name) == 2, what="the ScaleWorkload in force")
    during_attacks()
    status = wait_phase(cluster, run, TERMINAL, timeout=120)
    # Rolled back: the Deployment has its replica count again.
    eventually(lambda: replicas(cluster, name) == 1, what="the ScaleWorkload rolled back")
    return status


def tally(status: dict[str, Any]) -> dict[str, Any]:
    checks = status.get("stateChecks") or []
    assert len(checks) == 1, status
    return dict(checks[0])


def test_a_promql_check_fails_the_run_whose_attack_degrades_the_workload(
    ready: Cluster, workload: Workload, prometheus: tuple[Sandbox, str]
) -> None:
    try:
        status = run_under(
            ready, workload, promql_check(workload.job), lambda: workload.set_error_rate(0.5)
        )
    finally:
        workload.set_error_rate(0)
    assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckFailed"), status
    check = tally(status)
    assert check["successes"] >= 1  # it held before the attack
    assert check["failures"] >= 1
    message = check["lastMessage"]
    # The query, the value seen (about half of the answers failed) and the time.
    assert error_ratio(workload.job) in message, message
    assert "must be <= 0.05" in message
    value = float(message.split("value ", 1)[1].split(",", 1)[0])
    assert value > 0.05
    assert re.search(r" at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ on http://127\.0\.0\.1:", message)


def test_the_same_check_passes_a_run_whose_attack_does_not_degrade_it(
    ready: Cluster, workload: Workload
) -> None:
    status = run_under(ready, workload, promql_check(workload.job), lambda: None)
    assert status["phase"] == "COMPLETED", status
    check = tally(status)
    assert check["failures"] == 0, check
    assert check["successes"] >= 3
    assert "<= 0.05" in check["lastMessage"]


def test_an_alert_check_fails_the_run_once_the_alert_fires(
    ready: Cluster, workload: Workload, prometheus: tuple[Sandbox, str]
) -> None:
    box, _ = prometheus
    rule = f"ShopErrors{workload.job.split('-')[1]}"
    box.set_alert_rules(
        workload.job,
        {
            "groups": [
                {
                    "name": workload.job,
                    "rules": [
                        {
                            "alert": rule,
                            "expr": f"{error_ratio(workload.job)} > 0.1",
                            "labels": {"service": workload.job},
                        }
                    ],
                }
            ]
        },
    )
    check = {
        "type": "Alert",
        "alert": {"matchLabels": {"alertname": rule, "service": workload.job}},
    }
    try:
        status = run_under(ready, workload, check, lambda: workload.set_error_rate(0.5))
    finally:
        workload.set_error_rate(0)
        box.set_alert_rules(workload.job, None)
    assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckFailed"), status
    found = tally(status)
    assert found["successes"] >= 1
    assert "1 firing" in found["lastMessage"], found
    assert f'alertname="{rule}"' in found["lastMessage"]


# Long (over a minute): degrade-and-recover is covered in make test by
# test_check_semantics.py; this shows it on a PromQL check.
@pytest.mark.long
@pytest.mark.parametrize("recovers", [True, False], ids=["recovers", "stays-degraded"])
def test_a_promql_check_allowed_to_degrade_must_recover_in_the_cool_down(
    ready: Cluster, workload: Workload, recovers: bool
) -> None:
    """mayDegradeDuringAttacks on the real metric: half of the answers fail from
    ATTACKS_STARTED; the knob goes back to 0 at ATTACKS_STOPPED (recovers) or not at all
    (stays-degraded). The run completes only when the ratio holds again in the cool-down."""
    name = workload.job
    deployment(ready, name, replicas=1)
    check = {**promql_check(name), "mayDegradeDuringAttacks": True, "successThreshold": 2}
    spec = experiment(name, check, duration=8)
    spec["spec"]["coolDownSeconds"] = 20
    ready.apply(spec, user="alice")
    run, _ = create_run(ready, name, user="alice")
    try:
        reached = wait_phase(ready, run, {"ATTACKS_STARTED", *TERMINAL}, timeout=90)
        assert reached["phase"] == "ATTACKS_STARTED", reached
        workload.set_error_rate(0.5)
        reached = wait_phase(ready, run, {"ATTACKS_STOPPED", *TERMINAL}, timeout=60)
        assert reached["phase"] == "ATTACKS_STOPPED", reached
        if recovers:
            workload.set_error_rate(0)
        status = wait_phase(ready, run, TERMINAL, timeout=90)
    finally:
        workload.set_error_rate(0)
    found = tally(status)
    assert found["failures"] >= 1, found  # it did degrade under the attack
    assert found.get("degradedAt"), found
    if recovers:
        assert status["phase"] == "COMPLETED", status
        assert found.get("recoveredAt"), found
    else:
        assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckFailed"), status
        assert not found.get("recoveredAt"), found
        assert "must be <= 0.05" in found["lastMessage"], found


def test_prometheus_stopped_mid_run_ends_it_as_not_evaluated(
    ready: Cluster, workload: Workload, prometheus: tuple[Sandbox, str]
) -> None:
    """The server the check asks goes away under the attack: the check could not be
    evaluated (StateCheckNotEvaluated, issue 15 item 2), which says nothing about the
    system, and the faults are rolled back (run_under waits for the replicas' return)."""
    box, _ = prometheus
    status = run_under(ready, workload, promql_check(workload.job), box.stop_prometheus)
    check = tally(status)
    assert "unreachable" in check["lastMessage"], check
    assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckNotEvaluated"), status


def test_a_server_the_admin_did_not_allow_is_never_asked(
    ready: Cluster, workload: Workload
) -> None:
    """A check that names a Service of a namespace the admin did not list is refused by the
    operator before anything is sent: the run cannot get PREPARED, and since its only check
    could not be evaluated it ends StateCheckNotEvaluated, not PreparationTimedOut."""
    name = workload.job
    deployment(ready, name, replicas=1)
    check = {
        "type": "Prometheus",
        "prometheus": {
            "query": "vector(0)",
            "comparison": "Equal",
            "threshold": 0,
            "service": {"namespace": "kube-system", "name": "prometheus"},
        },
    }
    spec = experiment(name, check)
    spec["spec"]["preparationTimeoutSeconds"] = 3
    ready.apply(spec, user="alice")
    run, _ = create_run(ready, name, user="alice")
    status = wait_phase(ready, run, TERMINAL, timeout=60)
    assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckNotEvaluated"), status
    assert "namespace kube-system is not one whose Services" in tally(status)["lastMessage"]


def test_the_worked_example_of_the_docs_runs(
    ready: Cluster, prometheus: tuple[Sandbox, str], workload_binary: Path
) -> None:
    """docs/lifecycle.md's metric-check example, as written, on the workload scraped as
    job "shop": the scale-down does not degrade it, the run completes with both checks held."""
    (example,) = [
        d
        for f, d in examples()
        if f == "lifecycle.md"
        and isinstance(d, dict)
        and d.get("kind") == "Experiment"
        and d["metadata"]["name"] == "shop-errors"
    ]
    box, url = prometheus
    deployment(ready, "shop", replicas=3)
    with running_workload(box, url, workload_binary, "shop"):
        ready.apply(example, user="alice")
        try:
            run, _ = create_run(ready, "shop-errors", user="alice")
            status = wait_phase(ready, run, TERMINAL, timeout=120)
        finally:
            ready.kubectl("delete", "experiment", "shop-errors", "-n", TEAM)
    assert status["phase"] == "COMPLETED", status
    tallies = {t["name"]: t for t in status["stateChecks"]}
    assert tallies["error-ratio"]["failures"] == 0, tallies
    assert tallies["error-ratio"]["successes"] >= 1
    assert tallies["no-shop-alert"]["lastMessage"].endswith("none firing"), tallies


# -- a real attack on a real metric ---------------------------------------------------------


@pytest.fixture(scope="module")
def agent(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """A real `shakeout agent` for the kwok node AGENT_NODE (tests/e2e/agents.py)."""
    with running_agent(crds, tmp_path_factory.mktemp("agent")) as node_agent:
        yield node_agent


def test_a_real_blackhole_on_the_workloads_pod_fails_the_run_on_its_metric(
    ready: Cluster,
    prometheus: tuple[Sandbox, str],
    workload_binary: Path,
    agent: NodeAgent,
) -> None:
    """No knob here: the workload runs inside a network namespace that a kwok pod names
    (shakeout.dev/netns), the node agent applies the run's NetworkBlackhole to it, and the
    real Prometheus, scraping it from the host, sees its target go down (`up` 0). The check
    held before the attack, fails under it, and the blackhole is rolled back."""
    box, url = prometheus
    if not agent.running():
        agent.start()
    job = f"shop-{uuid.uuid4().hex[:6]}"
    up = f'up{{job="{job}"}}'
    ns = Netns.create()
    try:
        ns.start(str(workload_binary), "-listen=0.0.0.0:8080", f"-name={job}")
        box.scrape(job, f"{ns.ip}:8080", {"job": job})
        eventually(
            lambda: [r for r in query(url, up) if r["value"][1] == "1"],
            timeout=60,
            what=f"{job} scraped in its network namespace",
        )
        target_pod(ready, job, ns)  # a kwok pod whose network is that namespace
        check = {
            "type": "Prometheus",
            "prometheus": {"query": up, "comparison": "GreaterOrEqual", "threshold": 1},
        }
        spec = experiment(job, check)
        spec["spec"]["attacks"] = [
            {"name": "cut-off", "type": "NetworkBlackhole", "durationSeconds": 20}
        ]
        ready.apply(spec, user="alice")
        run, _ = create_run(ready, job, user="alice")
        reached = wait_phase(ready, run, {"ATTACKS_STARTED", *TERMINAL}, timeout=90)
        assert reached["phase"] == "ATTACKS_STARTED", reached
        status = wait_phase(ready, run, TERMINAL, timeout=120)
        assert (status["phase"], status.get("reason")) == ("FAILED", "StateCheckFailed"), status
        found = tally(status)
        assert found["successes"] >= 1  # it held before the attack
        assert f"query '{up}' at " in found["lastMessage"], found
        assert (
            f'value 0 of {{__name__="up",instance="{ns.ip}:8080",job="{job}"}}, must be >= 1'
            in (found["lastMessage"])
        ), found
        # Rolled back: the namespace's nftables fault is gone, the target is up again.
        eventually(
            lambda: "shakeout_" not in ns.exec("nft", "list", "tables").stdout,
            what="the blackhole rolled back",
        )
        eventually(
            lambda: [r for r in query(url, up) if r["value"][1] == "1"],
            timeout=60,
            what=f"{job} up again",
        )
    finally:
        box.unscrape(job)
        ready.kubectl("delete", "pod", job, "-n", TEAM, "--wait=false", check=False)
        ns.delete()


def test_only_an_admin_chooses_the_server_and_never_a_metadata_address(ready: Cluster) -> None:
    """spec.metricChecks is a rail: alice (team-a, edit) may flip spec.enabled but not
    point the operator at a server of her choice; the API server refuses link-local and
    credential-bearing URLs even from an admin."""
    body = {"spec": {"metricChecks": {"prometheusUrl": "http://attacker.example:9090"}}}
    refused = ready.merge_patch("chaosswitch", "default", body, user="alice", check=False)
    assert refused.returncode != 0
    assert "set-rails" in refused.stderr or "forbidden" in refused.stderr.lower(), refused.stderr
    for url in ("http://169.254.169.254/latest", "http://user:pw@prometheus:9090"):
        bad = {"spec": {"metricChecks": {"prometheusUrl": url}}}
        result = ready.merge_patch("chaosswitch", "default", bad, check=False)
        assert result.returncode != 0, url
        assert "metricChecks.prometheusUrl" in result.stderr, result.stderr
    switch = ready.get("chaosswitch", "default")
    assert "metricChecks" not in switch["spec"], switch["spec"]
