"""The pydantic models refuse what the CRD refuses, with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shakeout.api import ChaosSwitch, Experiment, ExperimentRun
from shakeout.api.checks import StateCheck
from shakeout.api.experiment import Attack


def experiment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "e", "namespace": "team-a"},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": "kill", "type": "PodDelete"}],
        },
    }
    base["spec"].update(spec)
    return base


def test_minimal_experiment_gets_defaults() -> None:
    exp = Experiment.model_validate(experiment())
    assert exp.spec.attacks[0].duration_seconds == 60
    assert exp.spec.warm_up_seconds == 0
    assert exp.spec.preparation_timeout_seconds == 120
    assert exp.spec.attacks[0].reversible is False


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"percent": 150}, "percent"),
        ({"count": 0}, "count"),
        ({}, "exactly one"),
        ({"count": 1, "percent": 5}, "exactly one"),
    ],
)
def test_bad_limits_are_refused(limit: dict[str, int], field: str) -> None:
    spec = {"blastRadius": {"selector": {"matchLabels": {"a": "b"}}, "limit": limit}}
    with pytest.raises(ValidationError, match=field):
        Experiment.model_validate(experiment(**spec))


def test_scale_needs_parameters_and_is_reversible() -> None:
    with pytest.raises(ValidationError, match="needs scaleWorkload"):
        Attack.model_validate({"name": "s", "type": "ScaleWorkload"})
    attack = Attack.model_validate(
        {
            "name": "s",
            "type": "ScaleWorkload",
            "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}, "replicas": 0},
        }
    )
    assert attack.reversible


def test_duplicate_attack_names_are_refused() -> None:
    attacks = [{"name": "x", "type": "PodDelete"}, {"name": "x", "type": "PodDelete"}]
    with pytest.raises(ValidationError, match="attack names must be unique"):
        Experiment.model_validate(experiment(attacks=attacks))


def test_round_trip_to_camel_case() -> None:
    run = ExperimentRun.model_validate(
        {"metadata": {"name": "r"}, "spec": {"experimentRef": {"name": "e"}}}
    )
    assert run.to_k8s()["spec"] == {
        "experimentRef": {"name": "e"},
        "cancel": False,
        "dryRun": False,
    }
    switch = ChaosSwitch.model_validate(
        {"metadata": {"name": "default"}, "spec": {"enabled": True}}
    )
    assert switch.spec.enabled is True


def test_every_attack_type_says_whether_it_can_be_rolled_back() -> None:
    from shakeout.api.attacks import NODE_LEVEL, REVERSIBLE, AttackType

    assert set(REVERSIBLE) == set(AttackType)
    assert {t for t, ok in REVERSIBLE.items() if not ok} == {
        AttackType.POD_DELETE,
        AttackType.PROCESS_KILL,
    }
    assert AttackType.PACKET_LOSS in NODE_LEVEL
    assert AttackType.NETWORK_ISOLATION not in NODE_LEVEL


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ({"type": "PacketLoss"}, "type PacketLoss needs packetLoss parameters"),
        ({"type": "MemoryStress"}, "type MemoryStress needs memoryStress parameters"),
        (
            {"type": "CpuStress", "networkDelay": {"delayMs": 5}},
            "networkDelay parameters belong to type NetworkDelay only",
        ),
        ({"type": "PacketLoss", "packetLoss": {"percent": 0}}, "greater than or equal to 1"),
        ({"type": "ProcessKill", "processKill": {"processName": "a b"}}, "should match pattern"),
    ],
)
def test_attack_parameters_must_match_the_type(attack: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Attack.model_validate({"name": "a", **attack})


def test_optional_parameters_default() -> None:
    attack = Attack.model_validate({"name": "b", "type": "NetworkBlackhole"})
    assert attack.parameters() is None
    assert attack.node_level
    assert attack.reversible
    loss = Attack.model_validate({"name": "l", "type": "PacketLoss", "packetLoss": {"percent": 5}})
    parameters = loss.parameters()
    assert parameters is not None
    assert parameters.model_dump(by_alias=True) == {"percent": 5, "direction": "Both"}


def test_at_most_one_network_isolation() -> None:
    isolation = {"type": "NetworkIsolation"}
    with pytest.raises(ValidationError, match="at most one NetworkIsolation"):
        Experiment.model_validate(
            experiment(attacks=[{"name": "a", **isolation}, {"name": "b", **isolation}])
        )


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ({"type": "WorkloadReady"}, "type WorkloadReady needs workloadReady parameters"),
        ({"type": "HttpGet"}, "type HttpGet needs httpGet parameters"),
        (
            {"type": "HttpGet", "httpGet": {"url": "http://a"}, "podsReady": {}},
            "podsReady parameters belong to type PodsReady only",
        ),
    ],
)
def test_state_check_parameters_must_match_the_type(check: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        StateCheck.model_validate({"name": "c", **check})
    assert StateCheck.model_validate({"name": "c", "type": "PodsReady"}).pods_ready is None


@pytest.mark.parametrize(
    ("http_get", "error"),
    [
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "link-local"),
        ({"url": "https://token@web.team-a.svc/"}, "credentials in the URL"),
        ({"url": "http://web.team-a.svc/", "service": {"name": "web", "port": 80}}, "exactly one"),
        ({"service": {"name": "Web", "port": 80}}, "name"),
        ({"service": {"name": "web", "port": 0}}, "port"),
    ],
)
def test_http_get_state_checks_refuse_unsafe_targets(
    http_get: dict[str, object], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        StateCheck.model_validate({"name": "c", "type": "HttpGet", "httpGet": http_get})


def test_an_http_get_state_check_names_a_service() -> None:
    check = StateCheck.model_validate(
        {"name": "c", "type": "HttpGet", "httpGet": {"service": {"name": "web", "port": 8080}}}
    )
    assert check.http_get is not None
    assert check.http_get.model_dump(by_alias=True, exclude_none=True)["service"] == {
        "name": "web",
        "port": 8080,
        "path": "/",
        "scheme": "http",
    }
