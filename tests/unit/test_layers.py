"""What each process loads: the node agent runs without kopf and without operator code;
the operator without the cryptography package (webhook_tls.py says why)."""

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


def loaded_by(probe: str) -> list[str]:
    """The module names a fresh Python process running `probe` prints."""
    return subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()


def test_the_agent_process_loads_neither_kopf_nor_the_operator() -> None:
    out = loaded_by(PROBE)
    assert "shakeout.agent.daemon" in out  # the probe really imported the agent
    assert "shakeout.kube.client" in out
    assert not [m for m in out if m == "kopf" or m.startswith("kopf.")]
    assert not [m for m in out if m.startswith(OPERATOR_ONLY)]


OPERATOR_PROBE = """
import sys
import shakeout.operator
shakeout.operator.register_handlers(webhook=True)
print("\\n".join(sorted(sys.modules)))
"""


def test_the_operator_process_does_not_load_cryptography() -> None:
    out = loaded_by(OPERATOR_PROBE)
    assert "shakeout.handlers.settings" in out  # the probe really registered the handlers
    assert "shakeout.admission.runs" in out
    assert not [m for m in out if m == "cryptography" or m.startswith("cryptography.")]


def test_every_handler_of_ours_runs_on_the_event_loop() -> None:
    """kopf runs a plain function in a thread pool: with 1,000 Experiments created at
    once, each thread that allocates keeps a malloc heap of its own (resident memory
    from 70 to over 100 MiB, bench/footprint.py), and a handler that touches the
    operator's state (the scheduler's, a run's stop) would race the event loop."""
    import inspect

    import kopf

    import shakeout.operator

    shakeout.operator.register_handlers(webhook=True)
    registry = kopf.get_default_registry()
    # kopf's registry has no public listing of every handler: one part per kind of handler.
    parts = ("_activities", "_watching", "_spawning", "_changing", "_webhooks")
    ours = [h.fn for part in parts for h in getattr(registry, part).get_all_handlers()]
    ours = [fn for fn in ours if fn.__module__.startswith("shakeout.")]
    assert len(ours) >= 20  # the registry was read
    assert [fn.__qualname__ for fn in ours if not inspect.iscoroutinefunction(fn)] == []
