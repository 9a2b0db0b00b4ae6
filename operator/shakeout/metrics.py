"""Prometheus metrics of the operator (names follow the Prometheus conventions).

Served by `shakeout operator --metrics ADDR:PORT`. Labels are low-cardinality: phases,
reasons, attack types, webhook names; never run or pod names.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RUNS = Counter("shakeout_runs_total", "Runs that reached a terminal phase.", ["phase", "reason"])
RUN_DURATION = Histogram(
    "shakeout_run_duration_seconds",
    "From pick-up to the terminal phase.",
    ["phase"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
ACTIVE_RUNS = Gauge("shakeout_active_runs", "Runs this operator is executing now.")
STOP = Histogram(
    "shakeout_stop_duration_seconds",
    "From a cancel, Stop All or deletion seen by the operator to the run being terminal "
    "with everything rolled back.",
    ["reason"],
    buckets=LATENCY_BUCKETS,
)
ATTACKS_APPLIED = Counter("shakeout_attacks_applied_total", "Attacks applied.", ["type"])
ATTACKS_ROLLED_BACK = Counter(
    "shakeout_attacks_rolled_back_total", "Reversible attacks rolled back.", ["type"]
)
ROLLBACK_FAILURES = Counter(
    "shakeout_rollback_failures_total",
    "Rollbacks still failing after the quick retries (pending: retried until they succeed).",
    ["type"],
)
WEBHOOK_DURATION = Histogram(
    "shakeout_webhook_duration_seconds",
    "Time to answer an admission review.",
    ["webhook"],
    buckets=LATENCY_BUCKETS,
)

# Run UID -> monotonic time at which a stop (cancel, Stop All, deletion) was first seen.
STOP_REQUESTED: dict[str, float] = {}


def stop_requested(uid: str) -> None:
    STOP_REQUESTED.setdefault(uid, time.monotonic())


def stopped(uid: str, reason: str) -> None:
    began = STOP_REQUESTED.pop(uid, None)
    if began is not None:
        STOP.labels(reason).observe(time.monotonic() - began)


def serve(address: str) -> None:
    """Start the /metrics endpoint on ADDR:PORT (a thread of prometheus_client)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")  # noqa: S104  (a pod's metrics port)
