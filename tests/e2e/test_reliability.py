"""The reliability suite's operator-side parts: SIGKILL at random points, racing creates,
racing status writers. Quick samples here (in `make test`); `make reliability` runs the
full counts (SHAKEOUT_RELIABILITY=full). Every run is checked by the invariant checker."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.invariants import TERMINAL, assert_clean, scaled
from tests.e2e.runs import (
    TEAM,
    create_run,
    deployment,
    race_creates,
    run_status,
    the_one_executed,
    wait_phase,
)


def chaos_experiment(cluster: Cluster, name: str, victim: str, scaled_app: str) -> None:
    """Three attacks at once: irreversible PodDelete (1 target), a reversible scale of
    another workload, and a reversible NetworkIsolation of the same target."""
    cluster.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": TEAM},
            "spec": {
                "blastRadius": {
                    "selector": {"matchLabels": {"app": victim}},
                    "limit": {"count": 1},
                },
                "attacks": [
                    {"name": "kill", "type": "PodDelete", "durationSeconds": 1},
                    {
                        "name": "scale",
                        "type": "ScaleWorkload",
                        "durationSeconds": 2,
                        "scaleWorkload": {
                            "workload": {"kind": "Deployment", "name": scaled_app},
                            "replicas": 1,
                        },
                    },
                    {"name": "isolate", "type": "NetworkIsolation", "durationSeconds": 2},
                ],
            },
        }
    )


def pod_uids(cluster: Cluster, app: str) -> set[str]:
    items = cluster.get("pods", "-n", TEAM, "-l", f"app={app}")["items"]
    return {p["metadata"]["uid"] for p in items if not p["metadata"].get("deletionTimestamp")}


def test_operator_sigkill_at_random_points_leaves_nothing_behind(
    ready: Cluster, live_operator: Operator
) -> None:
    runs = scaled(3, 200)
    rng = random.Random(20261127)  # the kill points are reproducible
    deployment(ready, "rel-victim", replicas=3)
    deployment(ready, "rel-scaled", replicas=3)
    chaos_experiment(ready, "rel-kill", "rel-victim", "rel-scaled")
    recoveries = []
    for i in range(runs):
        before = pod_uids(ready, "rel-victim")
        name, _ = create_run(ready, "rel-kill")
        time.sleep(rng.uniform(0.0, 2.5))  # anywhere from pick-up to rollback
        live_operator.kill()
        live_operator.start()
        restarted = time.monotonic()
        status = wait_phase(ready, name, TERMINAL, timeout=90)
        recoveries.append(time.monotonic() - restarted)
        # A SIGKILL is no shutdown: the restarted operator resumes the run from its journal.
        assert status["phase"] == "COMPLETED", status
        # Recreated pods replace the deleted one; none deleted twice, at most one in all.
        eventually(lambda: len(pod_uids(ready, "rel-victim")) == 3, what="victims back")
        deleted = before - pod_uids(ready, "rel-victim")
        assert len(deleted) <= 1, f"run {i}: {len(deleted)} pods deleted, the limit is 1"
        assert_clean(ready, TEAM, replicas={"rel-scaled": 3})
        if (i + 1) % 25 == 0:
            print(f"\n{i + 1} runs so far: every one clean, max recovery {max(recoveries):.1f} s")
    recoveries.sort()
    print(
        f"\n{runs} runs, operator SIGKILLed at a random point in each: every run terminal "
        f"after restart within max {recoveries[-1]:.1f} s "
        f"(p50 {recoveries[len(recoveries) // 2]:.1f} s)"
    )


def test_twenty_concurrent_creates_execute_exactly_one(ready: Cluster) -> None:
    deployment(ready, "rel-race", replicas=2)
    ready.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "rel-race", "namespace": TEAM},
            "spec": {
                "blastRadius": {"selector": {"matchLabels": {"app": "rel-race"}}},
                "attacks": [
                    {
                        "name": "scale",
                        "type": "ScaleWorkload",
                        "durationSeconds": 3,
                        # 2 -> 1: a pod stays Running, so that every losing run
                        # reaches the lock (with 0 a late pick-up finds no targets).
                        "scaleWorkload": {
                            "workload": {"kind": "Deployment", "name": "rel-race"},
                            "replicas": 1,
                        },
                    }
                ],
            },
        }
    )
    finals = race_creates(ready, "rel-race")
    the_one_executed(finals)
    print(
        f"\n20 concurrent creates: {20 - len(finals)} refused at admission, "
        f"{len(finals)} stored, 1 executed"
    )
    assert_clean(ready, TEAM, replicas={"rel-race": 2})


PHASES = ["CREATED", "PREPARED", "ATTACKS_STARTED", "ATTACKS_STOPPED", "COMPLETED"]


def test_concurrent_status_writers_cannot_move_a_phase_back(
    ready: Cluster, live_operator: Operator
) -> None:
    # The API server itself keeps phases monotone (CEL on status), whoever writes: two
    # writers race random phases into a run that no operator drives.
    live_operator.stop()
    try:
        with (
            ready.without("validatingwebhookconfiguration"),
            ready.without("mutatingwebhookconfiguration"),
        ):
            name, _ = create_run(ready, "nobody", user=None)
            writes = scaled(40, 400)

            def writer(seed: int) -> list[tuple[str, bool, str]]:
                rng = random.Random(seed)
                out = []
                for _ in range(writes):
                    phase = rng.choice(PHASES[:4])
                    result = ready.kubectl(
                        "patch",
                        "experimentrun",
                        name,
                        "-n",
                        TEAM,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        json.dumps({"status": {"phase": phase}}),
                        check=False,
                    )
                    out.append((phase, result.returncode == 0, result.stderr))
                return out

            with ThreadPoolExecutor(2) as pool:
                logs = list(pool.map(writer, [1, 2]))
        for log in logs:
            for _, ok, err in log:
                if not ok:
                    assert "a phase never goes back" in err, err
        final = run_status(ready, name)["phase"]
        accepted = [p for log in logs for p, ok, _ in log if ok]
        assert PHASES.index(final) == max(PHASES.index(p) for p in accepted)
        print(f"\n{2 * writes} racing status writes: {len(accepted)} accepted, the rest refused")
    finally:
        live_operator.start()
        ready.merge_patch("experimentrun", name, {"spec": {"cancel": True}}, namespace=TEAM)
        wait_phase(ready, name, TERMINAL, timeout=60)
