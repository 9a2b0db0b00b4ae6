"""Warm start of the sandbox: `up` to a cluster whose fake nodes are Ready, repeated.

Usage: .venv/bin/python bench/sandbox_start.py [REPETITIONS]   (binaries must be built)
Prints p50/p99/max of the start and stop times, next to the time of a bare
`kubectl version` round trip measured in the same run (the floor of any API call).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shakeout.sandbox.cluster import Sandbox
from stats import pct  # bench/stats.py, beside this script


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ups: list[float] = []
    downs: list[float] = []
    calls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        for _ in range(reps):
            began = time.perf_counter()
            state = box.up(log=lambda _m: None)
            ups.append(time.perf_counter() - began)
            for _ in range(5):
                began = time.perf_counter()
                subprocess.run(
                    [state.kubectl, f"--kubeconfig={box.kubeconfig()}", "version"],
                    check=True,
                    capture_output=True,
                )
                calls.append(time.perf_counter() - began)
            began = time.perf_counter()
            box.down(log=lambda _m: None)
            downs.append(time.perf_counter() - began)
    print("| measure | n | p50 | p99 | max |\n|---|---|---|---|---|")
    for name, values in (
        ("sandbox up (warm, to nodes Ready)", ups),
        ("sandbox down", downs),
        ("baseline: kubectl version round trip", calls),
    ):
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} s "
            f"| {pct(values, 0.99):.2f} s | {max(values):.2f} s |"
        )


if __name__ == "__main__":
    main()
