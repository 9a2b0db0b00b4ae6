from __future__ import annotations

from datetime import UTC, datetime

from shakeout.engine.experiments import experiment_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def body(attacks: list[dict[str, object]]) -> dict[str, object]:
    return {
        "metadata": {"name": "e", "namespace": "t", "generation": 3},
        "spec": {"blastRadius": {"selector": {"matchLabels": {"a": "b"}}}, "attacks": attacks},
    }


def test_valid_experiment_lists_irreversible_attacks() -> None:
    status = experiment_status(
        body(
            [
                {"name": "kill", "type": "PodDelete"},
                {
                    "name": "scale",
                    "type": "ScaleWorkload",
                    "scaleWorkload": {
                        "workload": {"kind": "Deployment", "name": "w"},
                        "replicas": 1,
                    },
                },
            ]
        ),
        None,
        NOW,
    )
    assert [(a.name, a.reversible) for a in status.attacks] == [("kill", False), ("scale", True)]
    assert status.irreversible_attacks == 1
    assert status.attack_types == "PodDelete,ScaleWorkload"
    valid = status.conditions[0]
    assert (valid.type, valid.status, valid.observed_generation) == ("Valid", "True", 3)
    assert "cannot be rolled back: kill" in valid.message


def test_invalid_experiment_names_the_field() -> None:
    status = experiment_status(body([{"name": "s", "type": "ScaleWorkload"}]), None, NOW)
    valid = status.conditions[0]
    assert (valid.status, valid.reason) == ("False", "InvalidSpec")
    assert "spec.attacks.0" in valid.message


def test_attack_types_list_every_type_once_in_the_order_of_the_attacks() -> None:
    attacks: list[dict[str, object]] = [
        {"name": "cut", "type": "NetworkBlackhole"},
        {"name": "kill", "type": "PodDelete"},
        {"name": "kill-again", "type": "PodDelete"},
        {"name": "burn", "type": "CpuStress"},
    ]
    status = experiment_status(body(attacks), None, NOW)
    assert status.attack_types == "NetworkBlackhole,PodDelete,CpuStress"
    assert status.to_k8s()["attackTypes"] == "NetworkBlackhole,PodDelete,CpuStress"
