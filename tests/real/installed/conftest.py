"""The real-node tier's shared fixture: shakeout installed as users install it
(`kubectl apply -k deploy/default`, placed on the real node by tests/real/install) on a
sandbox with one real node. tests/real/installed/test_install.py checks the install itself;
tests/real/installed/test_attacks.py runs every attack through it against real pods.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shakeout.sandbox import realnode
from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox, SandboxError
from shakeout.sandbox.hoststate import HostState
from tests.e2e.conftest import Cluster, eventually

REPO = Path(__file__).resolve().parents[3]
OVERLAY = REPO / "tests" / "real" / "installed" / "install"
SYSTEM = "shakeout-system"
IMAGES = cache_root() / "images"


def get(c: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(c.kubectl("get", *args, "-o", "json").stdout))


def leader(c: Cluster) -> str | None:
    got = c.kubectl("get", "lease", "shakeout-operator", "-n", SYSTEM, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    holder = json.loads(got.stdout)["spec"].get("holderIdentity")
    return str(holder) if holder else None


def ready_replicas(c: Cluster) -> int:
    status = get(c, "deployment", "shakeout-operator", "-n", SYSTEM).get("status") or {}
    return int(status.get("readyReplicas") or 0)


@pytest.fixture(scope="package")
def installed() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `sudo make test-real-node`")
    if not (IMAGES / "operator.tar").exists() or not (IMAGES / "workload.tar").exists():
        pytest.fail(f"no images in {IMAGES}: run `make image` first")
    before = HostState.capture()
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-install-{checkout}")
    try:
        state = box.up(log=lambda msg: print(f"[sandbox] {msg}"), real_node=True)
    except SandboxError as err:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
        pytest.fail(f"the sandbox with a real node did not come up: {err}")
    cluster = Cluster(state.kubectl, box.kubeconfig(), box)
    try:
        cluster.kubectl("apply", "-k", str(REPO / "deploy" / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        began = time.monotonic()
        cluster.kubectl("apply", "-k", str(OVERLAY))
        cluster.kubectl(
            "rollout", "status", "daemonset/shakeout-agent", "-n", SYSTEM, "--timeout=120s"
        )
        eventually(lambda: leader(cluster) is not None, timeout=120, what="an elected leader")
        eventually(lambda: ready_replicas(cluster) >= 1, timeout=120, what="the leader Ready")
        print(f"[install] operator and agent up in {time.monotonic() - began:.1f}s")
        yield cluster
    finally:
        for pod in ("operator", "agent"):
            logs = cluster.kubectl(
                "logs", "-n", SYSTEM, "-l", f"app.kubernetes.io/name=shakeout-{pod}",
                "--tail=60", "--prefix", check=False,
            )  # fmt: skip
            print(f"--- {pod} logs ---\n{logs.stdout[-6000:]}")
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))
        after = HostState.capture()
        assert before.differences(after, relevant=realnode.is_ours) == []
