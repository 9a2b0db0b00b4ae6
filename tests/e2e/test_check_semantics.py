"""State-check semantics on the real control plane, with the example of docs/lifecycle.md
("When a check applies, holds and fails"): a check allowed to degrade during the attacks
passes the run when it recovers in the cool-down and fails it when it does not; a check
that cannot be evaluated mid-run ends the run with its own reason, faults rolled back; the
API server refuses bad semantics, naming the field.

kwok's nodes run no containers, but a Deployment's pods are scheduled and go Ready there,
so a ScaleWorkload really degrades a WorkloadReady check and its rollback really restores
it. To keep the workload from recovering, the test cordons every node during the attacks:
the rollback's new pods stay Pending, as when capacity is lost. The HttpGet check's server
is this test process on 127.0.0.1 (the session's operator allows that host)."""

from __future__ import annotations

import base64
import copy
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.runs import TEAM, TERMINAL, create_run, deployment, replicas, wait_phase
from tests.unit.test_docs import examples

APP = "shop"
EXPERIMENT = "shop-degrade"
NOT_EVALUATED_ADVICE = "the run says nothing about the system"

Obj = dict[str, Any]


def doc_experiment() -> Obj:
    found = [
        d
        for f, d in examples()
        if f == "lifecycle.md"
        and isinstance(d, dict)
        and d.get("kind") == "Experiment"
        and d["metadata"]["name"] == EXPERIMENT
    ]
    assert len(found) == 1, found
    return copy.deepcopy(found[0])


def tallies(status: Obj) -> dict[str, Obj]:
    return {t["name"]: t for t in status.get("stateChecks") or []}


def warning_events(cluster: Cluster, name: str) -> dict[str, str]:
    """reason -> message of the run's Warning Events."""
    items = cluster.get(
        "events", "-n", TEAM, "--field-selector", f"involvedObject.name={name},type=Warning"
    )["items"]
    return {e["reason"]: e["message"] for e in items}


@pytest.fixture
def shop(ready: Cluster) -> Iterator[Cluster]:
    deployment(ready, APP, replicas=3)
    ready.apply(doc_experiment(), user="alice")
    yield ready
    ready.kubectl("delete", "experiment", EXPERIMENT, "-n", TEAM, check=False)


@pytest.fixture
def cordoned_later(shop: Cluster) -> Iterator[list[str]]:
    """The nodes to cordon when the test says; uncordoned afterwards whatever happened."""
    nodes = [n["metadata"]["name"] for n in shop.get("nodes")["items"]]
    yield nodes
    for node in nodes:
        shop.kubectl("uncordon", node, check=False)


def test_a_check_allowed_to_degrade_passes_when_it_recovers_in_the_cool_down(
    shop: Cluster,
) -> None:
    name, _ = create_run(shop, EXPERIMENT)
    status = wait_phase(shop, name, TERMINAL, timeout=90)
    assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
    capacity = tallies(status)["shop-capacity"]
    # It did degrade: the attack took two of three replicas away.
    assert capacity["failures"] >= 1, capacity
    assert capacity["degradedAt"] <= capacity["recoveredAt"], capacity
    stopped = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STOPPED")
    assert capacity["recoveredAt"] >= stopped, "recovered in the cool-down"
    assert capacity["unit"] == "ready replicas"
    outcomes = [s["outcome"] for s in capacity["samples"]]
    assert outcomes[0] == "Pass"
    assert "Fail" in outcomes
    assert outcomes[-1] == "Pass"
    assert min(s["value"] for s in capacity["samples"]) < 3
    # The other check applies from the start of the attacks only, and never failed.
    up = tallies(status)["shop-up"]
    assert (up["failures"], up["errors"]) == (0, 0), up
    assert min(s["at"] for s in up["samples"]) >= next(
        e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STARTED"
    )
    assert replicas(shop, APP) == 3


def test_a_check_allowed_to_degrade_fails_the_run_when_it_does_not_recover(
    shop: Cluster, cordoned_later: list[str]
) -> None:
    name, _ = create_run(shop, EXPERIMENT)
    status = wait_phase(shop, name, {"ATTACKS_STARTED", *TERMINAL}, timeout=60)
    assert status["phase"] == "ATTACKS_STARTED", status
    for node in cordoned_later:
        shop.kubectl("cordon", node)
    # The cordon came in time: the rollback (5 s after the start) has not happened yet.
    assert wait_phase(shop, name, {"ATTACKS_STARTED", *TERMINAL})["phase"] == "ATTACKS_STARTED"

    status = wait_phase(shop, name, TERMINAL, timeout=90)
    assert (status["phase"], status["reason"]) == ("FAILED", "StateCheckFailed"), status
    message = status["message"]
    assert message.startswith(
        "state check shop-capacity did not recover within coolDownSeconds (10s): it degraded "
        "during the attacks"
    ), message
    assert "has not passed 2 times in a row (successThreshold) since" in message
    assert "Deployment shop: 1/3 ready (need 3)" in message
    assert "the system did not recover from the attacks in time" in message
    capacity = tallies(status)["shop-capacity"]
    assert capacity.get("recoveredAt") is None, capacity
    # The run failed at the end of the cool-down, not before.
    stopped = next(e["time"] for e in status["timeline"] if e["phase"] == "ATTACKS_STOPPED")
    assert status["finishedAt"] > stopped
    assert status["attacks"][0]["state"] == "RolledBack"
    assert replicas(shop, APP) == 3, "the rollback restored the replica count"
    summary = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (summary["status"], summary["reason"]) == ("False", "StateCheckFailed")
    posted = eventually(lambda: warning_events(shop, name), what="the failure's Warning Event")
    assert posted["StateCheckFailed"].startswith("state check shop-capacity did not recover")


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def blind_experiment(server: int, **spec: Any) -> Obj:
    """A scale-down of Deployment blind checked by an HttpGet of this process' server, with a
    header from the Secret blind-probe."""
    experiment: Obj = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "blind", "namespace": TEAM},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": "blind"}}},
            "attacks": [
                {
                    "name": "shrink",
                    "type": "ScaleWorkload",
                    "durationSeconds": 60,
                    "scaleWorkload": {
                        "workload": {"kind": "Deployment", "name": "blind"},
                        "replicas": 1,
                    },
                }
            ],
            "stateChecks": [
                {
                    "name": "health",
                    "type": "HttpGet",
                    "intervalSeconds": 1,
                    "failureThreshold": 2,
                    "httpGet": {
                        "url": f"http://127.0.0.1:{server}/healthz",
                        "headers": [
                            {
                                "name": "Authorization",
                                "valueFrom": {
                                    "secretKeyRef": {
                                        "name": "blind-probe",
                                        "key": "authorization",
                                    }
                                },
                            }
                        ],
                    },
                }
            ],
        },
    }
    experiment["spec"].update(spec)
    return experiment


def test_a_check_that_cannot_be_evaluated_mid_run_ends_it_with_its_own_reason(
    ready: Cluster, server: int
) -> None:
    """The check's Secret disappears under the attacks: the probes cannot be evaluated any
    more, which says nothing about the system; the run ends StateCheckNotEvaluated and the
    scale-down is rolled back."""
    deployment(ready, "blind", replicas=3)
    ready.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "blind-probe", "namespace": TEAM},
            "data": {"authorization": base64.b64encode(b"Bearer blind").decode()},
        },
        user="alice",
    )
    ready.apply(blind_experiment(server), user="alice")
    name, _ = create_run(ready, "blind")
    status = wait_phase(ready, name, {"ATTACKS_STARTED", *TERMINAL}, timeout=60)
    assert status["phase"] == "ATTACKS_STARTED", status
    eventually(lambda: replicas(ready, "blind") == 1, what="the scale-down applied")
    ready.kubectl("delete", "secret", "blind-probe", "-n", TEAM)

    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "StateCheckNotEvaluated"), status
    message = status["message"]
    assert message.startswith(
        "state check health could not be evaluated: refused: httpGet.headers[0]: Secret "
        "blind-probe key authorization: no such Secret (2 in a row, failureThreshold 2)"
    ), message
    assert NOT_EVALUATED_ADVICE in message
    assert "refuted" not in message
    health = tallies(status)["health"]
    assert health["errors"] >= 2, health
    assert health["failures"] == 0, health
    assert health["successes"] >= 1, health
    assert health["unit"] == "ms"
    assert [s["outcome"] for s in health["samples"]][-2:] == ["Error", "Error"]
    assert status["attacks"][0]["state"] == "RolledBack"
    assert replicas(ready, "blind") == 3
    posted = eventually(lambda: warning_events(ready, name), what="the end's Warning Event")
    assert NOT_EVALUATED_ADVICE in posted["StateCheckNotEvaluated"]
    ready.kubectl("delete", "experiment", "blind", "-n", TEAM)


def test_a_run_that_waited_only_on_checks_that_cannot_be_evaluated_says_so(
    ready: Cluster, server: int
) -> None:
    """No Secret for the check's header from the start: the run never prepares, and its
    end says that the checks, not the system, are what is wrong. Nothing is attacked."""
    deployment(ready, "blind", replicas=3)
    ready.kubectl("delete", "secret", "blind-probe", "-n", TEAM, "--ignore-not-found")
    ready.apply(blind_experiment(server, preparationTimeoutSeconds=3), user="alice")
    name, _ = create_run(ready, "blind")
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "StateCheckNotEvaluated"), status
    assert status["message"] == (
        "not prepared after 3s: state checks could not be evaluated: health (refused: "
        "httpGet.headers[0]: Secret blind-probe key authorization: no such Secret); "
        "the run says nothing about the system: fix the check or what it asks (its target, "
        "its server, its Secret, its query) and run again"
    )
    assert status["attacks"][0]["state"] == "Skipped"
    assert replicas(ready, "blind") == 3
    ready.kubectl("delete", "experiment", "blind", "-n", TEAM)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"phases": ["Throughout", "AfterAttacks"]},
            "spec.stateChecks[0].phases: Invalid value: phases: Throughout covers",
        ),
        ({"phases": ["AfterAttacks", "AfterAttacks"]}, "spec.stateChecks[0].phases[1]: Duplicate"),
        ({"failureThreshold": 0}, "spec.stateChecks[0].failureThreshold: Invalid value: 0"),
        (
            {"mayDegradeDuringAttacks": True, "phases": ["BeforeAttacks", "DuringAttacks"]},
            "spec.stateChecks[0].mayDegradeDuringAttacks: Invalid value: "
            "mayDegradeDuringAttacks: the check must apply during and after the attacks",
        ),
        (
            {"mayDegradeDuringAttacks": True, "intervalSeconds": 20},
            "spec.coolDownSeconds: Invalid value: coolDownSeconds: a state check "
            "with mayDegradeDuringAttacks recovers in the cool-down",
        ),
    ],
)
def test_the_api_server_refuses_bad_check_semantics_naming_the_field(
    ready: Cluster, change: Obj, message: str
) -> None:
    experiment = doc_experiment()
    experiment["spec"]["stateChecks"][0].update(change)
    result = ready.apply(experiment, user="alice", check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
