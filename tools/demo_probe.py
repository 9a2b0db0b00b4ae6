"""What the shop's users see during `make run` on the real node: GETs through the Service,
summarised every few seconds per answering pod (answers, median latency) and failures.

    python tools/demo_probe.py http://CLUSTER-IP/ [--every SECONDS]

It runs until stopped (SIGTERM or Ctrl-C). The host reaches a ClusterIP like any node:
kube-proxy's rules are in the host's own network namespace.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict


def get(url: str, timeout: float) -> tuple[str | None, float]:
    """(the answering pod's name, or None on a failure; seconds taken)."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
            name = resp.read(256).decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, TimeoutError):
        name = None
    return name, time.monotonic() - began


def summary(answers: dict[str, list[float]], failed: int) -> str:
    parts = [
        f"{name} {len(took)}x {statistics.median(took) * 1000:.0f} ms"
        for name, took in sorted(answers.items())
    ]
    total = sum(len(took) for took in answers.values())
    return f"{total} answers, {failed} failed | " + ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://CLUSTER-IP[:PORT]/PATH of the shop's Service")
    parser.add_argument("--every", type=float, default=2.0, help="seconds per summary line")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request")
    args = parser.parse_args()
    if not args.url.startswith("http://"):
        parser.error("the URL must be http://")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            answers: dict[str, list[float]] = defaultdict(list)
            failed = 0
            window = time.monotonic() + args.every
            while time.monotonic() < window:
                name, took = get(args.url, args.timeout)
                if name is None:
                    failed += 1
                else:
                    answers[name].append(took)
            print(f"  {time.strftime('%H:%M:%S')}  shop: {summary(answers, failed)}", flush=True)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
