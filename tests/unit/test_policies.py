from __future__ import annotations

import pytest

from shakeout.api.switch import ChaosSwitchSpec
from shakeout.engine.policies import NamespaceFacts, cap_refusal, namespace_refusal

OPEN = ChaosSwitchSpec(enabled=True)
OPT_IN = ChaosSwitchSpec.model_validate({"enabled": True, "namespaceMode": "OptIn"})
OPERATOR = frozenset({"shakeout-system"})


@pytest.mark.parametrize(
    ("name", "labels", "switch", "words"),
    [
        ("kube-system", {}, OPEN, "system namespaces"),
        ("kube-node-lease", {}, OPEN, "system namespaces"),
        ("shakeout-system", {}, OPEN, "runs the shakeout operator"),
        ("payments", {"shakeout.dev/protected": "true"}, OPEN, "labelled shakeout.dev/protected"),
        ("team-a", {}, OPT_IN, "has not opted in"),
        ("team-a", {"shakeout.dev/chaos": "disabled"}, OPT_IN, "has not opted in"),
    ],
)
def test_protected_namespaces(
    name: str, labels: dict[str, str], switch: ChaosSwitchSpec, words: str
) -> None:
    message = namespace_refusal(NamespaceFacts(name, labels), switch, OPERATOR)
    assert message is not None
    assert words in message


def test_open_namespaces() -> None:
    assert namespace_refusal(NamespaceFacts("team-a", {}), OPEN, OPERATOR) is None
    opted = NamespaceFacts("team-a", {"shakeout.dev/chaos": "enabled"})
    assert namespace_refusal(opted, OPT_IN, OPERATOR) is None


def test_caps_by_count_and_percent() -> None:
    capped = ChaosSwitchSpec.model_validate(
        {"enabled": True, "caps": {"maxTargets": 10, "maxPercent": 50}}
    )
    assert cap_refusal(100, 10, capped) is None
    message = cap_refusal(100, 11, capped)
    assert message is not None
    assert "cap of 10" in message
    message = cap_refusal(10, 6, capped)
    assert message is not None
    assert "cap of 50%" in message
    assert cap_refusal(10, 5, capped) is None
    assert cap_refusal(1, 1, capped) is None  # a percent cap always allows one pod
    assert cap_refusal(10_000, 10_000, OPEN) is None
