"""The Argo CD health check (deploy/gitops/argocd-health.lua), run in a real Lua."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = (
    Path(__file__).resolve().parents[2] / "deploy" / "gitops" / "argocd-health.lua"
).read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def run(phase: str | None, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "message": "why"}
    if phase:
        status["phase"] = phase
    return {"kind": "ExperimentRun", "metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (run("COMPLETED"), "Healthy"),
        (run("FAILED"), "Degraded"),
        (run("CANCELED"), "Suspended"),
        (run("ATTACKS_STARTED"), "Progressing"),
        (run("COMPLETED", generation=2, observed=1), "Progressing"),
        ({"kind": "ExperimentRun", "metadata": {"generation": 1}}, "Progressing"),
        (
            {
                "kind": "Experiment",
                "metadata": {"generation": 3},
                "status": {
                    "observedGeneration": 3,
                    "conditions": [{"type": "Valid", "status": "False", "message": "bad"}],
                },
            },
            "Degraded",
        ),
        (
            {
                "kind": "Experiment",
                "metadata": {"generation": 3},
                "status": {
                    "observedGeneration": 3,
                    "conditions": [{"type": "Valid", "status": "True", "message": "ok"}],
                },
            },
            "Healthy",
        ),
        ({"kind": "ChaosSwitch", "spec": {"enabled": True}}, "Healthy"),
        ({"kind": "ChaosSwitch", "spec": {"enabled": False}}, "Suspended"),
    ],
)
def test_health(obj: dict[str, Any], expected: str) -> None:
    assert health(obj)[0] == expected


def test_messages_say_why() -> None:
    assert health(run("FAILED")) == ("Degraded", "FAILED: why")
