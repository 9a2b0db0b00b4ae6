"""Percentiles for the benchmark scripts (nearest rank, so p99 of 30 samples is the max)."""

from __future__ import annotations


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
