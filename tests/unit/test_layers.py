"""What each process loads: the node agent runs without kopf and without operator code."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import shakeout.agent.main
import shakeout.cli.main
loaded = sorted(m for m in sys.modules if m == "kopf" or m.startswith(("kopf.", "shakeout.")))
print("\\n".join(loaded))
"""

OPERATOR_ONLY = (
    "shakeout.handlers",
    "shakeout.admission",
    "shakeout.execution",
    "shakeout.attacks",
    "shakeout.gather",
    "shakeout.operator",
)


def test_the_agent_process_loads_neither_kopf_nor_the_operator() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "shakeout.agent.daemon" in out  # the probe really imported the agent
    assert "shakeout.kube.client" in out
    assert not [m for m in out if m == "kopf" or m.startswith("kopf.")]
    assert not [m for m in out if m.startswith(OPERATOR_ONLY)]
