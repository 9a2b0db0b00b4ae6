"""A run's lifecycle rules on the real control plane, one test per rule, driven with kubectl."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    events,
    patch_run_as,
    replicas,
    run_status,
    scale_experiment,
    schedule_now,
    set_switch,
    wait_phase,
)


def runs_in(cluster: Cluster, namespace: str = TEAM) -> set[str]:
    return {r["metadata"]["name"] for r in cluster.get("experimentruns", "-n", namespace)["items"]}


def test_a_run_passes_through_every_phase_to_completed(ready: Cluster) -> None:
    deployment(ready, "web1")
    scale_experiment(ready, "web1", "web1", to=1, duration=3, warm_up=1, cool_down=1)
    name, _ = create_run(ready, "web1", user="alice")
    status = wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    assert replicas(ready, "web1") == 1  # the attack is really applied
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert status["phase"] == "COMPLETED", status
    assert [e["phase"] for e in status["timeline"]] == [
        "CREATED",
        "PREPARED",
        "ATTACKS_STARTED",
        "ATTACKS_STOPPED",
        "COMPLETED",
    ]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True"
    assert conditions["Succeeded"]["reason"] == "Completed"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    attack = status["attacks"][0]
    assert (attack["state"], attack["previousReplicas"]) == ("RolledBack", 3)
    assert status["startedBy"]["username"] == "alice"
    assert status["stateChecks"][0]["failures"] == 0
    assert status["stateChecks"][0]["successes"] >= 1
    assert replicas(ready, "web1") == 3
    reasons = eventually(
        lambda: (r := events(ready, name)) and "Completed" in r and r, what="events"
    )
    for reason in ("Created", "Prepared", "AttacksStarted", "AttacksStopped", "Completed"):
        assert reason in reasons
    experiment = ready.get("experiment", "web1", "-n", TEAM)
    assert experiment["status"]["lastRun"]["name"] == name
    # The Reports list and the findings afterwards.
    ready.merge_patch(
        "experimentrun",
        name,
        json.dumps({"spec": {"findings": "p99 doubled", "actionRequired": "Yes"}}),
        namespace=TEAM,
        user="alice",
    )
    row = ready.kubectl("get", "experimentruns", name, "-n", TEAM, "--no-headers").stdout.split()
    assert row[:5] == [name, "web1", "COMPLETED", "3", "Yes"]
    # A finished run leaves the operator's watch (kopf would keep its body in memory for
    # as long as it exists): labelled finished, and without the operator's finalizer, so
    # that it deletes at once.
    meta = retired(ready, name)
    assert "shakeout.dev/finalizer" not in (meta.get("finalizers") or []), meta
    ready.kubectl("delete", "experimentrun", name, "-n", TEAM, "--timeout=20s")


def retired(cluster: Cluster, name: str) -> dict[str, object]:
    """The run's metadata once the operator has labelled it finished."""

    def labelled() -> dict[str, object] | None:
        meta = cluster.get("experimentrun", name, "-n", TEAM)["metadata"]
        return meta if (meta.get("labels") or {}).get("shakeout.dev/finished") == "true" else None

    return dict(eventually(labelled, what=f"run {name} labelled finished"))


def test_finished_runs_still_watched_are_retired_at_operator_start(
    ready: Cluster, live_operator: Operator
) -> None:
    # As a run finished before runs were retired, or by an operator stopped between a
    # run's end and its retirement, would be.
    deployment(ready, "retire")
    scale_experiment(ready, "retire", "retire", to=1, duration=1)
    name, _ = create_run(ready, "retire")
    wait_phase(ready, name, {"COMPLETED"}, timeout=60)
    retired(ready, name)
    ready.kubectl("label", "experimentrun", name, "-n", TEAM, "shakeout.dev/finished-")
    live_operator.stop()
    live_operator.start()
    assert retired(ready, name)


def test_refused_preconditions_leave_no_run_behind(ready: Cluster) -> None:
    deployment(ready, "web2", replicas=2)
    scale_experiment(ready, "web2", "web2", duration=30)
    scale_experiment(ready, "nobody", "no-such-app")
    before = runs_in(ready)

    # 3. the blast radius resolves to no target
    _, result = create_run(ready, "nobody", check=False)
    assert result.returncode != 0
    assert "resolves to no pods" in result.stderr
    # the experiment must exist
    _, result = create_run(ready, "missing", check=False)
    assert "Experiment team-a/missing not found" in result.stderr
    # 1. experimenting must be enabled
    set_switch(ready, False)
    _, result = create_run(ready, "web2", check=False)
    assert result.returncode != 0
    assert "experimenting is disabled" in result.stderr
    set_switch(ready, True)
    # 2. no other experiment may be running
    first, _ = create_run(ready, "web2")
    wait_phase(ready, first, {"ATTACKS_STARTED"}, timeout=30)
    _, result = create_run(ready, "web2", check=False)
    assert result.returncode != 0
    assert f"another run is executing: {TEAM}/{first} holds the cluster-wide lock" in result.stderr
    assert runs_in(ready) == before | {first}


def test_a_failing_state_check_fails_the_run_and_rolls_back(ready: Cluster) -> None:
    deployment(ready, "web3")
    scale_experiment(ready, "web3", "web3", to=0, duration=60, min_ready=2)
    name, _ = create_run(ready, "web3")
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "StateCheckFailed"), status
    assert "state check ready failed" in status["message"]
    assert status["attacks"][0]["state"] == "RolledBack"
    assert replicas(ready, "web3") == 3
    summary = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (summary["status"], summary["reason"]) == ("False", "StateCheckFailed")
    # The failure is a Warning Event (what `kubectl get events --field-selector
    # type=Warning` and alerting on Events pick up); the phases before it are Normal.
    posted = eventually(
        lambda: (e := event_types(ready, name)).get("StateCheckFailed") and e,
        what="the failure's Event",
    )
    assert posted["StateCheckFailed"] == "Warning", posted
    assert posted["Created"] == "Normal", posted


def event_types(cluster: Cluster, name: str) -> dict[str, str]:
    """reason -> type of the run's Events."""
    items = cluster.get("events", "-n", TEAM, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return {e["reason"]: e["type"] for e in items}


def test_an_authenticated_user_outside_the_team_can_cancel(ready: Cluster) -> None:
    deployment(ready, "web4")
    scale_experiment(ready, "web4", "web4", to=1, duration=120)
    name, _ = create_run(ready, "web4")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(lambda: replicas(ready, "web4") == 1, what="scaled down")
    # carol is in no team; RBAC lets any authenticated user cancel (a patch by name, as
    # `kubectl shakeout stop` sends it: she may not read the run).
    assert patch_run_as(ready, "carol", name, {"spec": {"cancel": True}}) is None
    status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
    assert (status["phase"], status["reason"]) == ("CANCELED", "Canceled")
    assert status["canceledBy"]["username"] == "carol"
    assert status["attacks"][0]["state"] == "RolledBack"
    assert replicas(ready, "web4") == 3
    # A cancel cannot be withdrawn.
    result = ready.merge_patch(
        "experimentrun",
        name,
        '{"spec":{"cancel":false}}',
        namespace=TEAM,
        check=False,
    )
    assert "cannot be withdrawn" in result.stderr


def test_stop_all_cancels_refuses_and_continue_allows_again(ready: Cluster) -> None:
    deployment(ready, "web5")
    scale_experiment(ready, "web5", "web5", to=1, duration=120)
    name, _ = create_run(ready, "web5")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    set_switch(ready, False, user="bob")  # bob: any authenticated user may Stop All
    status = wait_phase(ready, name, {"CANCELED", "FAILED", "COMPLETED"}, timeout=15)
    assert (status["phase"], status["reason"]) == ("CANCELED", "StoppedAll")
    assert replicas(ready, "web5") == 3
    switch = ready.get("chaosswitch", "default")
    eventually(
        lambda: (
            ready.get("chaosswitch", "default")["status"].get("lastChange", {}).get("by") == "bob"
        ),
        what="who flipped the switch",
    )
    _, refused = create_run(ready, "web5", check=False)
    assert "experimenting is disabled" in refused.stderr
    set_switch(ready, True, user="carol")
    again, _ = create_run(ready, "web5")
    wait_phase(ready, again, {"ATTACKS_STARTED"}, timeout=30)
    assert switch["metadata"]["name"] == "default"


def test_deleting_a_run_mid_attack_rolls_back_first(ready: Cluster) -> None:
    deployment(ready, "web6")
    scale_experiment(ready, "web6", "web6", to=1, duration=120)
    name, _ = create_run(ready, "web6")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(lambda: replicas(ready, "web6") == 1, what="scaled down")
    ready.kubectl("delete", "experimentrun", name, "-n", TEAM, "--timeout=30s")
    assert replicas(ready, "web6") == 3
    assert ready.kubectl("get", "experimentrun", name, "-n", TEAM, check=False).returncode != 0


def test_operator_sigkill_during_attacks_restores_the_workload(
    ready: Cluster, live_operator: Operator
) -> None:
    deployment(ready, "web7")
    scale_experiment(ready, "web7", "web7", to=1, duration=8)
    name, _ = create_run(ready, "web7")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(lambda: replicas(ready, "web7") == 1, what="scaled down")
    live_operator.kill()
    assert replicas(ready, "web7") == 1  # nobody rolled back: the operator is dead
    live_operator.start()
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert status["phase"] == "COMPLETED", status
    assert status["attacks"][0]["state"] == "RolledBack"
    assert replicas(ready, "web7") == 3


def test_racing_creates_without_the_webhook_execute_exactly_one(ready: Cluster) -> None:
    deployment(ready, "web8")
    scale_experiment(ready, "web8", "web8", to=1, duration=5)
    with ready.without("validatingwebhookconfiguration"):
        names = [create_run(ready, "web8")[0] for _ in range(3)]
        finals = [wait_phase(ready, n, {"COMPLETED", "FAILED", "CANCELED"}) for n in names]
    completed = [n for n, s in zip(names, finals, strict=True) if s["phase"] == "COMPLETED"]
    assert len(completed) == 1, finals
    for name, status in zip(names, finals, strict=True):
        if name in completed:
            continue
        assert (status["phase"], status["reason"]) == ("FAILED", "AnotherRunActive")
        assert completed[0] in status["message"]
        assert status.get("attacks", []) == []  # never attacked anything
    assert replicas(ready, "web8") == 3
    assert run_status(ready, completed[0])["attacks"][0]["state"] == "RolledBack"


def test_invalid_cron_is_refused_at_admission(ready: Cluster) -> None:
    scale_experiment(ready, "cron-ok", "web1")
    result = ready.merge_patch(
        "experiment",
        "cron-ok",
        json.dumps({"spec": {"schedule": {"cron": "61 * * * *"}}}),
        namespace=TEAM,
        check=False,
    )
    assert result.returncode != 0
    assert "spec.schedule" in result.stderr
    assert "invalid cron expression" in result.stderr


def test_a_scheduled_run_while_disabled_is_recorded_failed_and_not_caught_up(
    ready: Cluster,
) -> None:
    deployment(ready, "cron1", replicas=1)
    scale_experiment(ready, "cron1", "cron1", to=0, duration=1)
    set_switch(ready, False)
    schedule_now(ready, "cron1")

    def scheduled() -> list[dict[str, object]]:
        return ready.get("experimentruns", "-n", TEAM, "-l", "shakeout.dev/experiment=cron1")[
            "items"
        ]

    runs = eventually(scheduled, timeout=20, interval=0.5, what="a scheduled run")
    name = runs[0]["metadata"]["name"]
    status = wait_phase(ready, name, {"FAILED", "COMPLETED", "CANCELED"}, timeout=20)
    assert (status["phase"], status["reason"]) == ("FAILED", "ExperimentingDisabled")
    assert status.get("attacks", []) == []
    assert replicas(ready, "cron1") == 1  # nothing attacked
    # Continue: the missed run is not caught up.
    set_switch(ready, True)
    ready.kubectl(
        "patch",
        "experiment",
        "cron1",
        "-n",
        TEAM,
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/schedule"}]',
    )
    assert len(scheduled()) == 1
    experiment = ready.get("experiment", "cron1", "-n", TEAM)
    assert experiment["status"]["lastScheduleTime"]


class _Handler(http.server.BaseHTTPRequestHandler):
    status_code = 200

    def do_GET(self) -> None:
        self.send_response(self.server.status_code)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"service healthy")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def http_service() -> Iterator[http.server.HTTPServer]:
    """A real HTTP endpoint on loopback for HttpGet checks (status settable per test)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    server.status_code = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_pod_delete_with_pod_and_http_checks(
    ready: Cluster, http_service: http.server.HTTPServer
) -> None:
    deployment(ready, "web9", replicas=4)
    before = {
        p["metadata"]["name"] for p in ready.get("pods", "-n", TEAM, "-l", "app=web9")["items"]
    }
    url = f"http://127.0.0.1:{http_service.server_address[1]}/health"
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "web9", "namespace": TEAM},
            "spec": {
                "blastRadius": {
                    "selector": {"matchLabels": {"app": "web9"}},
                    "limit": {"percent": 25},
                },
                "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 2}],
                "stateChecks": [
                    {"name": "pods", "type": "PodsReady", "podsReady": {"minReadyPercent": 50}},
                    {
                        "name": "http",
                        "type": "HttpGet",
                        "intervalSeconds": 1,
                        "httpGet": {"url": url, "bodyContains": "healthy"},
                    },
                ],
            },
        }
    )
    exp = eventually(
        lambda: ready.get("experiment", "web9", "-n", TEAM).get("status", {}).get("attacks"),
        what="experiment status",
    )
    assert exp == [{"name": "kill", "type": "PodDelete", "reversible": False}]
    name, _ = create_run(ready, "web9")
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert status["phase"] == "COMPLETED", status
    attack = status["attacks"][0]
    assert (attack["state"], attack["reversible"], attack["targets"]) == ("Completed", False, 1)
    assert status["targets"]["selected"] == 1  # 25 percent of 4 pods
    after = {
        p["metadata"]["name"] for p in ready.get("pods", "-n", TEAM, "-l", "app=web9")["items"]
    }
    assert len(before - after) == 1  # exactly one pod deleted (and replaced by its ReplicaSet)
    tallies = {t["name"]: t for t in status["stateChecks"]}
    assert tallies["http"]["successes"] >= 1
    assert tallies["http"]["failures"] == 0
    report = ready.plugin("report", name, "-n", TEAM).stdout
    assert "NO (cannot be rolled back)" in report


def test_preparation_times_out_with_its_own_reason(
    ready: Cluster, http_service: http.server.HTTPServer
) -> None:
    http_service.status_code = 503  # type: ignore[attr-defined]
    deployment(ready, "web10", replicas=1)
    url = f"http://127.0.0.1:{http_service.server_address[1]}/"
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "web10", "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "web10"}}},
                "attacks": [{"name": "kill", "type": "PodDelete"}],
                "stateChecks": [
                    {
                        "name": "http",
                        "type": "HttpGet",
                        "intervalSeconds": 1,
                        "httpGet": {"url": url},
                    }
                ],
                "preparationTimeoutSeconds": 3,
            },
        }
    )
    name, _ = create_run(ready, "web10")
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=30)
    assert (status["phase"], status["reason"]) == ("FAILED", "PreparationTimedOut"), status
    assert status["stateChecks"][0]["failures"] >= 1
    assert "status 503" in status["stateChecks"][0]["lastMessage"]
    assert status["attacks"][0]["state"] == "Skipped"
