"""Helpers for the real-node tests that act from inside a pod."""

from __future__ import annotations

from tests.e2e.conftest import Cluster


def fetch_from_pod(
    c: Cluster, namespace: str, pod: str, host: str, port: int, *, wait: int = 2
) -> str:
    """An HTTP/1.0 GET / from `pod` (its busybox nc, `wait` s timeout): the answer or ''."""
    result = c.kubectl(
        "exec", pod, "-n", namespace, "--", "sh", "-c",
        f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w {wait} {host} {port}',
        check=False, timeout=30,
    )  # fmt: skip
    return result.stdout
