"""Two operator replicas with leader election: the standby does nothing until the active
one dies, then takes over within a stated bound and finishes its run, acting once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.invariants import TERMINAL, assert_clean
from tests.e2e.runs import TEAM, create_run, deployment, replicas, wait_phase
from tests.e2e.test_reliability import chaos_experiment, pod_uids

LEASE = "shakeout-operator"
NAMESPACE = "shakeout-system"


def holder(cluster: Cluster) -> str:
    result = cluster.kubectl(
        "get",
        "lease",
        LEASE,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
        check=False,
    )
    return result.stdout if result.returncode == 0 else ""


@pytest.fixture
def replicas_pair(
    ready: Cluster, live_operator: Operator, tmp_path: Path
) -> Iterator[tuple[Operator, Operator]]:
    """The session's operator makes way for two replicas with --leader-elect."""
    if ready.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        ready.kubectl("create", "namespace", NAMESPACE)
    ready.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")
    live_operator.stop()
    first = Operator(ready, tmp_path / "first.log", extra=("--leader-elect",))
    second = Operator(ready, tmp_path / "second.log", extra=("--leader-elect",))
    first.start()
    eventually(lambda: holder(ready), what="a leader")
    second.start()
    try:
        yield first, second
    finally:
        for op in (first, second):
            op.stop()
        print(first.output()[-2000:], second.output()[-2000:])
        live_operator.start()


def test_the_standby_takes_over_a_run_within_bounds_and_acts_once(
    ready: Cluster, replicas_pair: tuple[Operator, Operator]
) -> None:
    first, second = replicas_pair
    leader = holder(ready)
    assert "standby" in second.output()  # waiting, not acting
    deployment(ready, "ha-victim", replicas=3)
    deployment(ready, "ha-scaled", replicas=3)
    chaos_experiment(ready, "ha", "ha-victim", "ha-scaled")
    ready.kubectl(  # long enough to be under way when the leader dies
        "patch",
        "experiment",
        "ha",
        "-n",
        TEAM,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/attacks/1/durationSeconds","value":8}]',
    )
    before = pod_uids(ready, "ha-victim")
    name, _ = create_run(ready, "ha")
    wait_phase(ready, name, {"ATTACKS_STARTED"}, timeout=30)
    eventually(lambda: replicas(ready, "ha-scaled") == 1, what="scaled down")
    assert "resuming run" not in second.output()
    killed = time.monotonic()
    first.kill()
    eventually(
        lambda: holder(ready) not in ("", leader),
        timeout=15,
        interval=0.05,
        what="the standby holding the lease",
    )
    leading = time.monotonic() - killed
    eventually(
        lambda: "resuming run" in second.output(),
        timeout=15,
        interval=0.05,
        what="the new leader resuming the run",
    )
    resumed = time.monotonic() - killed
    status = wait_phase(ready, name, TERMINAL, timeout=60)
    assert status["phase"] == "COMPLETED", status
    eventually(lambda: len(pod_uids(ready, "ha-victim")) == 3, what="victims back")
    assert len(before - pod_uids(ready, "ha-victim")) == 1  # PodDelete acted once, not twice
    assert_clean(ready, TEAM, replicas={"ha-scaled": 3})
    print(
        f"\nleader SIGKILLed: the standby held the lease after {leading:.2f} s and resumed "
        f"the run after {resumed:.2f} s (lease 4 s; goal 5 s)"
    )
    assert resumed <= 15  # a bound on correctness; the figure above is the measurement
