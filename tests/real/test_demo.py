"""`make run` on a root machine: the demo on the real node (tools/run-demo.sh with the
sandbox's real node, deploy/demo-real/). Real shop pods answer HTTP through their Service,
the HttpGet state check calls them, and the attacks show in their answers: the target's
answers slow down under BandwidthLimit while the other pods' do not, and not after.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox, SandboxError

REPO = Path(__file__).resolve().parents[2]
# A line of tools/demo_probe.py: "  HH:MM:SS  shop: N answers, F failed | pod Nx M ms, ..."
PROBE = re.compile(r"^  (\d\d:\d\d:\d\d)  shop: \d+ answers, \d+ failed \| (.*)$")
ANSWERS = re.compile(r"([\w-]+) (\d+)x (\d+) ms")


def medians(line: str) -> dict[str, int]:
    """Each pod's median latency (ms) in one probe line."""
    return {name: int(ms) for name, _count, ms in ANSWERS.findall(line)}


def test_make_run_shows_the_attacks_in_the_real_shops_answers() -> None:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `sudo make test-real-node`")
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-demo-{checkout}")
    env = {**os.environ, "SHAKEOUT_SANDBOX_DIR": str(box.dir), "DEMO_EXIT": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        box.up(log=lambda msg: print(f"[sandbox] {msg}"), real_node=True)
        demo = subprocess.run(
            ["bash", str(REPO / "tools" / "run-demo.sh")],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    except SandboxError as err:
        pytest.fail(f"the sandbox with a real node did not come up: {err}")
    finally:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
    out = demo.stdout
    print(out[-6000:], demo.stderr[-3000:])
    assert demo.returncode == 0
    assert "Phase:       COMPLETED (Completed)" in out
    target = re.search(r"Targets:     1 of 4 matching pods: (\S+)", out)
    assert target, out
    victim = target[1]
    # The state check called the real pods through their Service and never failed.
    check = re.search(r"shop-answers\s+(\d+)\s+(\d+)\s+(\d+)\s+GET service shop:80/: 200", out)
    assert check, out
    assert int(check[1]) >= 5
    assert int(check[2]) == 0
    assert int(check[3]) == 0
    # While the attacks were applied the target answered far slower than its peers; before
    # and after, like them.
    lines = out.splitlines()
    started = next(i for i, line in enumerate(lines) if "  ATTACKS_STARTED  " in line)
    stopped = next(i for i, line in enumerate(lines) if "  ATTACKS_STOPPED  " in line)
    during = [medians(line) for line in lines[started + 2 : stopped] if PROBE.match(line)]
    before = [medians(line) for line in lines[:started] if PROBE.match(line)]
    assert during, out
    assert before, out
    seen = [m for m in during if victim in m and len(m) > 1]
    slow = [
        m for m in seen if m[victim] >= max(50, 10 * max(v for k, v in m.items() if k != victim))
    ]
    # A summary line whose 2 s overlap the rollback may show the target fast again.
    assert len(slow) >= 2, out
    assert len(slow) >= len(seen) / 2, out
    assert all(m.get(victim, 0) <= 10 * statistics.median(m.values()) + 5 for m in before)
