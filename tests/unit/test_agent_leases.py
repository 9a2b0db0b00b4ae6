"""Which Leases the operator takes for a node agent's (SEC-18): only `shakeout-agent-<node>`
in its own namespace, `<node>` being the Lease's node annotation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shakeout.api.labels import CAPABILITIES_ANNOTATION, NODE_ANNOTATION
from shakeout.gather import agents

NS = "shakeout-system"


def lease(name: str, node: str | None, namespace: str = NS, holder: str = "h") -> dict[str, Any]:
    annotations = {CAPABILITIES_ANNOTATION: json.dumps({"PacketLoss": None})}
    if node is not None:
        annotations[NODE_ANNOTATION] = node
    return {
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 6,
            "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


@pytest.fixture(autouse=True)
def empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents, "AGENTS", {})


@pytest.mark.parametrize(
    ("body", "node"),
    [
        (lease("shakeout-agent-n1", "n1"), "n1"),
        (lease("shakeout-agent-n1", "n1", namespace="team-a"), None),
        (lease("x", "n1"), None),
        (lease("shakeout-agent-n2", "n1"), None),
        (lease("shakeout-operator", "n1"), None),
        (lease("shakeout-agent-n1", None), None),
        (lease("shakeout-agent-", ""), None),
        ({"metadata": {"name": "shakeout-agent-n1", "namespace": NS}}, None),
    ],
    ids=[
        "own",
        "other-namespace",
        "other-name",
        "other-node",
        "leader",
        "no-node",
        "empty",
        "bare",
    ],
)
def test_lease_node(body: dict[str, Any], node: str | None) -> None:
    assert agents.lease_node(body, NS) == node


def test_a_forged_lease_changes_nothing() -> None:
    assert agents.observe(lease("shakeout-agent-n1", "n1", holder="real"), NS)
    before = agents.AGENTS["n1"]
    assert not agents.observe(lease("x", "n1", holder="fake"), NS)
    assert not agents.observe(lease("shakeout-agent-n1", "n1", "team-a", holder="fake"), NS)
    assert not agents.observe(lease("x", "n1"), NS, deleted=True)
    assert agents.AGENTS["n1"] is before
    assert agents.missing(["n1"], {"n1": "real"}) == ()


def test_a_full_list_forgets_the_nodes_gone() -> None:
    agents.observe(lease("shakeout-agent-n1", "n1"), NS)
    agents.observe(lease("shakeout-agent-n2", "n2"), NS)
    agents.observe_all([lease("shakeout-agent-n2", "n2"), lease("y", "n1")], NS)
    assert set(agents.AGENTS) == {"n2"}
    assert agents.capabilities(["n2"]) == {"n2": {"PacketLoss": None}}
