"""The CRDs on a real API server: explain teaches the API, bad objects are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Cluster


def experiment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [{"name": "kill", "type": "PodDelete"}],
        },
    }
    body["spec"].update(spec)
    return body


def test_explain_prints_the_descriptions(crds: Cluster) -> None:
    out = crds.kubectl("explain", "experiment.spec").stdout
    assert "blastRadius" in out
    assert "The pods that the attacks hit." in out
    out = crds.kubectl("explain", "experiment.spec.blastRadius.limit.percent").stdout
    assert "0-100" in out
    out = crds.kubectl("explain", "experimentrun.spec.cancel").stdout
    assert "cancel the run" in out


def test_get_chaos_lists_every_kind(crds: Cluster, namespace: str) -> None:
    crds.create(experiment("demo", namespace))
    out = crds.kubectl("get", "chaos", "-n", namespace).stdout
    assert "experiment.shakeout.dev/demo" in out
    resources = crds.kubectl("api-resources", "--categories=chaos", "-o", "name").stdout.split()
    assert sorted(resources) == [
        "chaosswitches.shakeout.dev",
        "experimentruns.shakeout.dev",
        "experiments.shakeout.dev",
        "nodeattacks.shakeout.dev",
    ]


def test_a_valid_experiment_is_stored_with_defaults(crds: Cluster, namespace: str) -> None:
    crds.create(experiment("ok", namespace))
    stored = crds.get("experiment", "ok", "-n", namespace)
    assert stored["spec"]["attacks"][0]["durationSeconds"] == 60
    assert stored["spec"]["warmUpSeconds"] == 0


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            {"blastRadius": {"selector": {"matchLabels": {"a": "b"}}, "limit": {"percent": 150}}},
            "spec.blastRadius.limit.percent",
            "less than or equal to 100",
        ),
        (
            {"blastRadius": {"selector": {}}},
            "spec.blastRadius.selector",
            "must not be empty",
        ),
        (
            {"blastRadius": {"selector": {"matchLabels": {"a": "b"}}, "limit": {}}},
            "spec.blastRadius.limit",
            "exactly one of count or percent",
        ),
        (
            {"attacks": [{"name": "s", "type": "ScaleWorkload"}]},
            "spec.attacks[0].scaleWorkload",
            "scaleWorkload parameters are required for, and only for, type ScaleWorkload",
        ),
        (
            {"attacks": [{"name": "l", "type": "CpuStress", "packetLoss": {"percent": 5}}]},
            "spec.attacks[0].packetLoss",
            "packetLoss parameters are required for, and only for, type PacketLoss",
        ),
        (
            {"attacks": [{"name": "l", "type": "PacketLoss", "packetLoss": {"percent": 101}}]},
            "spec.attacks[0].packetLoss.percent",
            "should be less than or equal to 100",
        ),
        (
            {"attacks": [{"name": "k", "type": "Teleport"}]},
            "spec.attacks[0].type",
            "Unsupported value",
        ),
        (
            {
                "attacks": [
                    {"name": "a", "type": "PodDelete", "after": ["nope"]},
                ]
            },
            "spec.attacks",
            "may name only attacks listed before it",
        ),
        (
            {
                "attacks": [
                    {"name": "a", "type": "PodDelete", "after": ["b"]},
                    {"name": "b", "type": "PodDelete", "after": ["a"]},
                ]
            },
            "spec.attacks",
            "no unknown names, no cycles",
        ),
        (
            {"allowedWindows": [{"name": "w", "startTime": "09:00"}]},
            "spec.allowedWindows[0].endTime",
            "give both startTime and endTime",
        ),
        (
            {"allowedWindows": [{"name": "w", "days": ["Mon"]}, {"name": "w", "days": ["Tue"]}]},
            "spec.allowedWindows",
            "window names must be unique",
        ),
        (
            {"allowedWindows": [{"name": "w", "startTime": "25:00", "endTime": "26:00"}]},
            "spec.allowedWindows[0].startTime",
            "should match",
        ),
    ],
    ids=[
        "after-unknown",
        "after-cycle",
        "window-half-open",
        "window-twice",
        "window-bad-time",
        "percent-150",
        "empty-selector",
        "limit-neither",
        "scale-no-params",
        "params-of-other-type",
        "loss-101",
        "unknown-type",
    ],
)
def test_invalid_experiments_are_refused_naming_the_field(
    crds: Cluster, namespace: str, spec: dict[str, Any], field: str, words: str
) -> None:
    result = crds.create(experiment("bad", namespace, **spec), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr
    assert crds.kubectl("get", "experiment", "bad", "-n", namespace, check=False).returncode != 0


def test_a_chaosswitch_with_another_name_is_refused(crds: Cluster) -> None:
    body = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ChaosSwitch",
        "metadata": {"name": "other"},
        "spec": {"enabled": True},
    }
    result = crds.create(body, check=False)
    assert result.returncode != 0
    assert "metadata.name" in result.stderr
    assert "must be named 'default'" in result.stderr


def test_the_experiment_reference_of_a_run_is_immutable(crds: Cluster, namespace: str) -> None:
    run = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {"name": "r1", "namespace": namespace},
        "spec": {"experimentRef": {"name": "one"}},
    }
    # The schema alone is under test: a run that the webhook would refuse (no such
    # Experiment) is stored with the webhook out of the way, if an operator serves one.
    webhook = crds.kubectl("get", "validatingwebhookconfiguration", "shakeout.dev", check=False)
    if webhook.returncode == 0:
        with crds.without("validatingwebhookconfiguration"):
            crds.create(run)
    else:
        crds.create(run)
    patch = json.dumps({"spec": {"experimentRef": {"name": "two"}}})
    result = crds.kubectl(
        "patch", "experimentrun", "r1", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0
    assert "spec.experimentRef" in result.stderr
    assert "experimentRef is immutable" in result.stderr
    # findings stay editable
    crds.merge_patch(
        "experimentrun",
        "r1",
        json.dumps({"spec": {"findings": "all good", "actionRequired": "No"}}),
        namespace=namespace,
    )
    out = crds.kubectl("get", "experimentrun", "r1", "-n", namespace).stdout
    assert "ACTION REQUIRED" in out
    assert " No " in out
