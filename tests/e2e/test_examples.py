"""The library of ready Experiments (docs/examples.md), end to end: each template made
with `kubectl shakeout init` as a user makes it (short durations), applied by alice and
run with `kubectl shakeout run --wait` to COMPLETED, its effect seen while it runs and
gone afterwards.

One world for the module (the e2e tier is at its time budget):

* `lib-web`: 2 replicas in zone-a (pod label topology.kubernetes.io/zone), placed by the
  scheduler on the agent's node; their network is one network namespace of this machine
  (annotation shakeout.dev/netns).
* the HTTP server the HttpGet checks ask: in this process, on 127.0.0.1, which the session's
  operator allows (`--allow-check-host`), given to init as `--url`. Not a Service: the
  sandbox routes no ClusterIP, and a real node's kube-proxy on this machine (another
  checkout's tests) drops this machine's traffic to every unallocated address of
  10.96.0.0/16, the sandboxes' Service range.
* `lib-web-b`: 2 replicas in zone-b, their pods labelled app=lib-web too, on any node
  (the other zone; the drain's victims).
* `lib-backend`: 1 replica on the agent's node in a namespace of its own: the dependency.
* a real node agent for that node (tests/e2e/agents.py).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shakeout.cli import templates
from tests.e2e.agents import AGENT_NODE, Netns, NodeAgent, running_agent
from tests.e2e.conftest import REPO, Cluster, Operator, eventually
from tests.e2e.invariants import assert_clean
from tests.e2e.runs import TEAM, cancel_all, set_switch, wait_no_active_runs

# Short, for the sandbox: every check probed each second, no warm-up; the attacks' duration
# and the cool-down are each case's.
QUICK = ("--warm-up", "0", "--interval", "1")
PATH = "/healthz"
ZONE_A = "topology.kubernetes.io/zone=zone-a"
ZONE_B = "topology.kubernetes.io/zone=zone-b"
# Names of this module's own (other tests' `web` Deployments may be in the namespace).
WEB, WEB_B, BACKEND = "lib-web", "lib-web-b", "lib-backend"


@dataclass
class World:
    cluster: Cluster
    agent: NodeAgent
    web: Netns  # the network of the web pods
    backend: Netns  # the dependency's network
    url: str  # the HttpGet checks' server


@dataclass(frozen=True)
class Case:
    """How the test fills in a template, and what its run must show."""

    selector: str
    workload: str | None = WEB
    targets: int = 1
    # Seconds; a node-level fault gets two, to be seen from here while it is applied.
    duration: int = 1
    # Seconds; two for a template whose check may degrade: a probe or two to recover in.
    cool_down: int = 1
    # Seen in this machine's namespaces while the attack is applied (node-level ones).
    effect: Callable[[World], bool] | None = None
    # Checked on the finished run.
    after: Callable[[World, dict[str, Any], dict[str, Any]], None] | None = None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def nft_fault(ns: Netns) -> bool:
    return "shakeout_" in ns.exec("nft", "list", "tables").stdout


def tbf(ns: Netns) -> bool:
    return "tbf" in ns.exec("tc", "qdisc", "show").stdout


def stressed(world: World) -> bool:
    """A process in the web pods' namespace: the stress (nothing else runs there)."""
    return bool(world.web.pids())


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    items = cluster.get("pods", "-n", TEAM, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


# `after` hooks get the run and the pods of app=lib-web (both zones) before it: name -> node.
def node_drained(world: World, run: dict[str, Any], before: dict[str, str]) -> None:
    status = run["status"]
    cordon = next(a for a in status["attacks"] if a["type"] == "NodeCordon")
    (node,) = cordon["nodes"]
    (target,) = status["targets"]["names"]
    assert node == before[target]
    after = world.cluster.get("node", node)
    assert not after["spec"].get("unschedulable"), f"{node} left cordoned"
    assert "shakeout.dev/cordoned-by" not in (after["metadata"].get("annotations") or {})


def one_pod_replaced(world: World, run: dict[str, Any], before: dict[str, str]) -> None:
    now = {p["metadata"]["name"] for p in pods(world.cluster, f"app={WEB}")}
    assert len(set(before) - now) == 1, (before, now)


def zone_a_only(world: World, run: dict[str, Any], before: dict[str, str]) -> None:
    zone_a = {p["metadata"]["name"] for p in pods(world.cluster, f"app={WEB},{ZONE_A}")}
    targets = run["status"]["targets"]
    assert set(targets["names"]) == zone_a  # every pod of the zone, none of zone-b's
    assert targets["matched"] == 2


CASES: dict[str, Case] = {
    "pod-delete": Case(f"app={WEB}", cool_down=2, after=one_pod_replaced),
    "rolling-restart": Case(f"app={WEB}", cool_down=2),  # 25 percent of 4 pods
    "zone-outage": Case(f"app={WEB},{ZONE_A}", workload=None, targets=2, after=zone_a_only),
    "node-drain": Case(f"app={WEB},{ZONE_B}", workload=WEB_B, after=node_drained),
    "cpu-pressure": Case(f"app={WEB},{ZONE_A}", duration=2, effect=stressed),
    "memory-pressure": Case(f"app={WEB},{ZONE_A}", duration=2, cool_down=2, effect=stressed),
    "dependency-slow": Case(f"app={BACKEND}", duration=2, effect=lambda w: tbf(w.backend)),
    "dependency-lossy": Case(f"app={BACKEND}", duration=2, effect=lambda w: nft_fault(w.backend)),
    "dependency-down": Case(f"app={BACKEND}", duration=2, effect=lambda w: nft_fault(w.backend)),
}


def test_every_template_is_run_here() -> None:
    assert sorted(CASES) == sorted(templates.templates())


# -- the world --------------------------------------------------------------------------


class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200 if self.path == PATH else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def deployment(
    name: str, replicas: int, labels: dict[str, str], netns: Netns | None
) -> dict[str, Any]:
    template: dict[str, Any] = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    if netns is not None:
        # On the agent's node, placed there by the scheduler (NodeCordon takes such pods).
        template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": AGENT_NODE}
        template["metadata"]["annotations"] = {"shakeout.dev/netns": netns.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": template,
        },
    }


WORKLOADS = {WEB: 2, WEB_B: 2, BACKEND: 1}


def all_ready(cluster: Cluster) -> None:
    def ready() -> bool:
        found = {
            d["metadata"]["name"]: d.get("status", {})
            for d in cluster.get("deployments", "-n", TEAM)["items"]
        }
        return all(
            found.get(name, {}).get("readyReplicas") == count
            and found[name].get("replicas") == count
            for name, count in WORKLOADS.items()
        )

    eventually(ready, timeout=60, what=f"{', '.join(WORKLOADS)} fully ready")


@pytest.fixture(scope="module")
def agent(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with running_agent(crds, tmp_path_factory.mktemp("agent")) as node_agent:
        yield node_agent


@pytest.fixture(scope="module")
def world(crds: Cluster, operator: Operator, agent: NodeAgent) -> Iterator[World]:
    """The workloads, their networks and the checks' server; experimenting enabled and no
    run under way (once for the module: each test's run ends, or is canceled, in it)."""
    cluster = crds
    if not operator.running():
        operator.start()
    set_switch(cluster, True)
    cancel_all(cluster)
    wait_no_active_runs(cluster)
    web, backend = Netns.create(), Netns.create()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
        world = World(cluster, agent, web, backend, url)
        zone = "topology.kubernetes.io/zone"
        cluster.apply(deployment(WEB, 2, {"app": WEB, zone: "zone-a"}, web))
        cluster.apply(deployment(WEB_B, 2, {"app": WEB, zone: "zone-b"}, None))
        cluster.apply(deployment(BACKEND, 1, {"app": BACKEND}, backend))
        all_ready(cluster)
        yield world
    finally:
        for name in WORKLOADS:
            cluster.kubectl("delete", "deployment", name, "-n", TEAM, "--wait=false", check=False)
        server.shutdown()
        web.delete()
        backend.delete()


@pytest.fixture
def cordons_allowed(world: World) -> Iterator[None]:
    """NodeCordon allowed in TEAM as an admin allows it; the switch's rail put back as it
    was found (others share the sandbox)."""
    ready = world.cluster
    spec = ready.get("chaosswitch", "default")["spec"]
    found = spec.get("clusterScopedAttacks")
    allowed = dict(found or {})
    allowed["namespaces"] = sorted({*allowed.get("namespaces", []), TEAM})
    ready.merge_patch("chaosswitch", "default", {"spec": {"clusterScopedAttacks": allowed}})
    try:
        yield
    finally:
        ready.merge_patch("chaosswitch", "default", {"spec": {"clusterScopedAttacks": found}})
        assert ready.get("chaosswitch", "default")["spec"].get("clusterScopedAttacks") == found


class Watcher:
    """Polls a predicate in a thread while the run goes on: was the effect ever seen?"""

    def __init__(self, seen: Callable[[], bool]) -> None:
        self.check, self.seen = seen, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set() and not self.seen:
            self.seen = self.check()
            self.stop.wait(0.2)

    def close(self) -> bool:
        self.stop.set()
        self.thread.join()
        return self.seen


# -- each template ----------------------------------------------------------------------


@pytest.mark.parametrize("template", sorted(CASES))
def test_the_example_runs_to_completed(
    template: str, world: World, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case = CASES[template]
    if template == "node-drain":
        request.getfixturevalue("cordons_allowed")
    cluster = world.cluster
    all_ready(cluster)
    name = f"ex-{template}"
    args = ["init", template, "--name", name, "-n", TEAM, "--selector", case.selector]
    if case.workload:
        args += ["--workload", case.workload]
    args += ["--url", world.url, *QUICK]
    args += ["--duration", str(case.duration), "--cool-down", str(case.cool_down)]
    made = cluster.plugin(*args, "-o", str(tmp_path / "exp.yaml"), user="alice")
    assert made.stderr == f"wrote {tmp_path / 'exp.yaml'}\n"
    cluster.kubectl("apply", "-f", str(tmp_path / "exp.yaml"), user="alice")
    before = (
        {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods(cluster, f"app={WEB}")}
        if case.after
        else {}
    )
    watcher = Watcher(lambda: case.effect(world)) if case.effect else None
    try:
        done = cluster.plugin(
            "run", name, "-n", TEAM, "--wait", user="alice", check=False, timeout=90
        )
    except subprocess.TimeoutExpired:
        found = diagnosis(world, name)
        cancel_all(cluster)  # not to hold the lock for the next test
        wait_no_active_runs(cluster)
        pytest.fail(f"{template}: no end within 90 s\n{found}")
    finally:
        seen = watcher.close() if watcher else None
    run_name = done.stdout.split("experimentrun.shakeout.dev/")[1].split()[0]
    run = cluster.get("experimentrun", run_name, "-n", TEAM)
    status = run["status"]
    try:
        assert status["phase"] == "COMPLETED", status
        assert done.returncode == 0, done.stderr
        assert "Phase:       COMPLETED" in done.stdout  # the report, printed at the end
        # Every attack ended as its kind ends, on the targets the template selects.
        for attack in status["attacks"]:
            final = "RolledBack" if attack["reversible"] else "Completed"
            assert attack["state"] == final, attack
            assert attack.get("targets", case.targets) == case.targets, attack
        assert status["targets"]["selected"] == len(status["targets"]["names"]) == case.targets
        # Every check held: probed, and holding at the end (a probe that timed out on a
        # loaded machine may fail alone; failureThreshold in a row would have failed the run).
        for check in status["stateChecks"]:
            assert check["successes"] >= 1, check
            assert check.get("consecutiveFailures", 0) == 0, check
            if check["name"] in ("service-answers", "caller-answers"):  # the HttpGet checks
                assert check["lastMessage"] == f"GET {world.url}: 200", check
        if case.effect is not None:
            assert seen, f"{template}: the fault was never seen in this machine's namespaces"
            node_attacks(cluster, run, case.targets)
            eventually(lambda: not case.effect(world), what=f"{template}'s fault gone")
        if case.after is not None:
            case.after(world, run, before)
    finally:
        cluster.kubectl(
            "delete", f"experimentrun/{run_name}", f"experiment/{name}", "-n", TEAM, "--wait=false"
        )


def diagnosis(world: World, experiment: str) -> str:
    """What a run that did not end was doing: its status, its NodeAttacks, the agent's log,
    and whether the checks' server answers."""
    cluster = world.cluster
    runs = [
        r
        for r in cluster.get("experimentruns", "-n", TEAM)["items"]
        if r["spec"]["experimentRef"]["name"] == experiment
    ]
    uids = {r["metadata"]["uid"] for r in runs}
    node_attacks = [
        n
        for n in cluster.get("nodeattacks", "-n", TEAM)["items"]
        if n["spec"].get("runUID") in uids
    ]
    return json.dumps(
        {
            "runs": [r.get("status") for r in runs],
            "nodeAttacks": [n.get("status") for n in node_attacks],
            "agent": world.agent.output()[-3000:],
            "server answers": answers(world.url),
        },
        indent=1,
        default=str,
    )


def node_attacks(cluster: Cluster, run: dict[str, Any], targets: int) -> None:
    """The agent's report: the run's one NodeAttack, every target rolled back."""
    uid = run["metadata"]["uid"]
    (obj,) = cluster.get("nodeattacks", "-n", TEAM, "-l", f"shakeout.dev/run-uid={uid}")["items"]
    assert obj["spec"]["node"] == AGENT_NODE
    report = obj["status"]
    assert report["phase"] == "RolledBack", report
    assert [t["state"] for t in report["targets"]] == ["RolledBack"] * targets, report
    assert {t["name"] for t in report["targets"]} == set(run["status"]["targets"]["names"])


def test_nothing_is_left_behind(world: World) -> None:
    """After every example: no run open, no fault applied, no mark, no cordon, the lock
    free (tests/e2e/invariants.py); the workloads back at full strength."""
    assert_clean(world.cluster, TEAM, replicas=WORKLOADS, netns=[world.web, world.backend])
    all_ready(world.cluster)


def test_deploy_examples_are_accepted_as_they_are(world: World) -> None:
    """deploy/examples/ (every template with its defaults) passes the API server's schema,
    CEL rules and webhooks unchanged."""
    result = world.cluster.kubectl(
        "apply", "--dry-run=server", "-n", TEAM, "-f", str(REPO / "deploy" / "examples")
    )
    assert result.stdout.count("created (server dry run)") == len(CASES), result.stdout
