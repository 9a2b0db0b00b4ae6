"""Every attack on real pods, through shakeout installed as users install it.

Each test runs one Experiment against the Deployment `web` (the workload image on the real
node, behind the Service `web`), observes the attack's effect from outside while it is
applied (from another pod, from the host, from the pod's own cgroup counters, through the
Kubernetes API), and observes it gone after the run's end. The agent of the real node finds
the targets through their real cgroups (docs/node-agent.md). The fixture `installed` is in
tests.real.installed.conftest.py.

Bands are relative to what this run saw before the attack (throughput, CPU, memory), or
are ratios with a wide margin (a share of dropped pings), so a busy machine does not fail
them; no test asserts how fast anything happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shakeout.agent.node.locate import pod_component_matches
from shakeout.sandbox import realnode
from tests.e2e.conftest import Cluster, eventually
from tests.real.installed.conftest import SYSTEM, get
from tests.real.pods import fetch_from_pod

NS = "real-attacks"
REPLICAS = 3
TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
WORKLOAD_IMAGE = "localhost/shakeout/workload:1"
ON_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {realnode.LABEL: "true"},
    "tolerations": [{"key": realnode.LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
MIB = 1 << 20


# -- the workload ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(installed: Cluster) -> Cluster:
    """`web`: 3 pods of the workload image behind the Service `web`, and a `client` pod."""
    c = installed
    c.kubectl("create", "namespace", NS)
    # NodeCordon reaches beyond the namespace: an admin allows it for this one.
    c.kubectl(
        "patch", "chaosswitch", "default", "--type=merge", "-p",
        f'{{"spec":{{"clusterScopedAttacks":{{"namespaces":["{NS}"]}}}}}}',
    )  # fmt: skip
    c.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    # `serving` only the Service selects: EndpointRemoval takes it away.
                    "metadata": {"labels": {"app": "web", "serving": "true"}},
                    "spec": {
                        **ON_REAL_NODE,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "web",
                                "image": WORKLOAD_IMAGE,
                                "imagePullPolicy": "Never",
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    }
                                ],
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz", "port": 8080},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
    )
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "selector": {"app": "web", "serving": "true"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        }
    )
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": NS, "labels": {"app": "client"}},
            "spec": {
                **ON_REAL_NODE,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "client",
                        "image": realnode.HTTPD_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "exec sleep 3600"],
                        "securityContext": {"runAsUser": 65534, "runAsNonRoot": True},
                    }
                ],
            },
        }
    )
    c.kubectl("wait", "pod/client", "-n", NS, "--for=condition=Ready", "--timeout=90s")
    return c


@pytest.fixture
def web(shop: Cluster) -> Iterator[Cluster]:
    """Before each test: all replicas Ready, every pod of the Service answering. After it:
    no run left going (a failed test must not hold the lock for the next one)."""
    shop.kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=90s")
    eventually(lambda: len(ready_pods(shop)) == REPLICAS, timeout=60, what="3 Ready pods")
    eventually(
        lambda: answering_names(shop) == {p["metadata"]["name"] for p in ready_pods(shop)},
        timeout=30,
        what="every pod answering through the Service",
    )
    yield shop
    for item in get(shop, "experimentruns", "-n", NS)["items"]:
        if (item.get("status") or {}).get("phase") not in TERMINAL:
            name = item["metadata"]["name"]
            shop.kubectl(
                "patch", "experimentrun", name, "-n", NS, "--type=merge",
                "-p", '{"spec":{"cancel":true}}', check=False,
            )  # fmt: skip
            Run(shop, name).ended(timeout=60)


def ready_pods(c: Cluster) -> list[dict[str, Any]]:
    pods = get(c, "pods", "-n", NS, "-l", "app=web")["items"]
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(
            x["type"] == "Ready" and x["status"] == "True"
            for x in p["status"].get("conditions") or []
        )
    ]


def pod(c: Cluster, name: str) -> dict[str, Any]:
    return get(c, "pod", name, "-n", NS)


def http(url: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, bytes]:
    """A request from the host (it reaches pod and Service addresses like any node)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, TimeoutError):
        return 0, b""


def service_ip(c: Cluster) -> str:
    return str(get(c, "service", "web", "-n", NS)["spec"]["clusterIP"])


def answering_names(c: Cluster, requests: int = 40) -> set[str]:
    """The pod names that answered `/` through the Service (kube-proxy picks at random:
    40 requests miss one of 3 pods with a probability of about 1e-7)."""
    ip = service_ip(c)
    names = set()
    for _ in range(requests):
        code, body = http(f"http://{ip}/", timeout=1.0)
        if code == 200:
            names.add(body.decode().strip())
    return names


def from_client(c: Cluster, ip: str, port: int = 8080) -> str:
    """An HTTP GET from the client pod (2 s timeout): the answer or ''."""
    return fetch_from_pod(c, NS, "client", ip, port)


def connects(ip: str, port: int = 8080, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=timeout):
        return True
    return False


def ping_loss(ip: str, count: int = 100) -> float:
    """The share of ICMP echoes to `ip` that got no answer (busybox ping, as root)."""
    out = subprocess.run(
        ["busybox", "ping", "-q", "-c", str(count), "-i", "0.02", "-W", "2", ip],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    found = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert found, out
    sent, received = int(found[1]), int(found[2])
    return 1 - received / sent


def throughput(ip: str, size: int) -> float:
    """Bytes per second of a download of `size` bytes from the pod to the host."""
    began = time.monotonic()
    code, body = http(f"http://{ip}:8080/bytes?n={size}", timeout=60)
    took = time.monotonic() - began
    assert (code, len(body)) == (200, size), (code, len(body))
    return size / took


# -- the pod's own cgroup counters (cgroup v1, or v2) --------------------------------------

CGROUP = "/sys/fs/cgroup"


def pod_cgroup(uid: str, controller: str) -> str:
    """The pod's cgroup directory of a v1 controller (or the v2 one), named as kubelet names
    it with either cgroup driver (locate.pod_component_matches, the agent's own rule)."""
    base = os.path.join(CGROUP, controller)
    if not os.path.isdir(base):
        base = CGROUP  # cgroup v2: one hierarchy
    for root, dirs, _files in os.walk(base):
        for d in dirs:
            if pod_component_matches(d, uid):
                return os.path.join(root, d)
    raise AssertionError(f"no cgroup of pod {uid} under {base}")


def cpu_seconds(uid: str) -> float:
    directory = pod_cgroup(uid, "cpuacct")
    v1 = os.path.join(directory, "cpuacct.usage")
    if os.path.exists(v1):
        with open(v1) as f:
            return int(f.read()) / 1e9
    with open(os.path.join(directory, "cpu.stat")) as f:
        usage = dict(line.split() for line in f)
    return int(usage["usage_usec"]) / 1e6


def cpu_rate(uid: str, seconds: float = 2.0) -> float:
    """The pod's CPU use in cores over `seconds` of wall time."""
    first, began = cpu_seconds(uid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(uid) - first) / (time.monotonic() - began)


def anonymous_memory(uid: str) -> int:
    """The pod's anonymous memory in bytes (page cache left out: it outlives a process)."""
    directory = pod_cgroup(uid, "memory")
    with open(os.path.join(directory, "memory.stat")) as f:
        stat = dict(line.split() for line in f)
    return int(stat["total_rss"] if "total_rss" in stat else stat["anon"])


# -- runs ----------------------------------------------------------------------------------

_runs = iter(range(1, 1000))


@dataclass
class Run:
    c: Cluster
    name: str

    def status(self) -> dict[str, Any]:
        return dict(get(self.c, "experimentrun", self.name, "-n", NS).get("status") or {})

    def applied(self, timeout: float = 60) -> dict[str, Any]:
        """Wait until every attack is Applied (a node-level one: reported by the agent)."""

        def check() -> dict[str, Any] | None:
            status = self.status()
            if status.get("phase") in TERMINAL:
                raise AssertionError(f"the run ended before its attacks applied: {status}")
            attacks = status.get("attacks") or []
            applied = all(a["state"] in ("Applied", "Completed") for a in attacks)
            if status.get("phase") == "ATTACKS_STARTED" and attacks and applied:
                return status
            return None

        return dict(eventually(check, timeout=timeout, what=f"{self.name}'s attacks applied"))

    def ended(self, timeout: float = 90) -> dict[str, Any]:
        return dict(
            eventually(
                lambda: (s := self.status()).get("phase") in TERMINAL and s,
                timeout=timeout,
                what=f"{self.name}'s end",
            )
        )

    def completed(self) -> dict[str, Any]:
        status = self.ended()
        assert (status["phase"], status["reason"]) == ("COMPLETED", "Completed"), status
        for attack in status["attacks"]:
            assert attack["state"] in ("RolledBack", "Completed"), attack
        return status

    def target(self) -> dict[str, Any]:
        names = self.status()["targets"]["names"]
        assert len(names) == 1, names
        return pod(self.c, names[0])


def start(
    c: Cluster,
    attacks: list[dict[str, Any]],
    checks: list[dict[str, Any]] | None = None,
    limit: dict[str, int] | None = None,
) -> Run:
    """An Experiment with these attacks against one pod of `web` (or `limit`), and a run."""
    name = f"x{next(_runs)}-{attacks[0]['type'].lower()}"
    c.apply(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "blastRadius": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "limit": limit or {"count": 1},
                },
                "attacks": attacks,
                "stateChecks": checks or [],
            },
        }
    )
    c.create(
        {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"experimentRef": {"name": name}},
        }
    )
    return Run(c, name)


def attack(kind: str, seconds: int = 10, **parameters: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": kind.lower(), "type": kind, "durationSeconds": seconds}
    if parameters:
        spec[kind[0].lower() + kind[1:]] = parameters
    return spec


# -- API-level attacks ----------------------------------------------------------------------


def test_pod_delete_replaces_the_pod_with_a_new_container(web: Cluster) -> None:
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ready_pods(web)}
    run = start(web, [attack("PodDelete", 4)])
    status = run.completed()
    victim = status["targets"]["names"][0]
    assert victim in before
    assert status["attacks"][0]["reversible"] is False
    # The victim is gone; its replacement is a new pod whose container started after the
    # run did, and it answers through the Service while the victim never does again.
    eventually(lambda: len(ready_pods(web)) == REPLICAS, timeout=60, what="the replacement")
    pods = {p["metadata"]["name"]: p for p in ready_pods(web)}
    assert victim not in pods
    (replacement,) = set(pods) - set(before)
    started = pods[replacement]["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert started >= status["startedAt"], (started, status["startedAt"])
    names = eventually(
        lambda: (n := answering_names(web)) == set(pods) and n,
        timeout=30,
        what="the replacement answering",
    )
    assert victim not in names


def test_scale_workload_takes_pods_away_and_brings_them_back(web: Cluster) -> None:
    run = start(web, [attack("ScaleWorkload", 12, workload={"kind": "Deployment", "name": "web"},
                             replicas=1)])  # fmt: skip
    run.applied()
    # Two real containers stop: one pod left, and only it answers through the Service.
    eventually(
        lambda: len(get(web, "pods", "-n", NS, "-l", "app=web")["items"]) == 1,
        timeout=30,
        what="the scaled-away pods gone",
    )
    (left,) = [p["metadata"]["name"] for p in get(web, "pods", "-n", NS, "-l", "app=web")["items"]]
    assert answering_names(web) == {left}
    status = run.completed()
    assert status["attacks"][0]["previousReplicas"] == REPLICAS
    eventually(lambda: len(ready_pods(web)) == REPLICAS, timeout=60, what="3 pods again")
    eventually(lambda: len(answering_names(web)) == REPLICAS, timeout=30, what="3 answering")


def test_endpoint_removal_takes_the_pod_out_of_its_service_only(web: Cluster) -> None:
    run = start(web, [attack("EndpointRemoval", 12)])
    run.applied()
    target = run.target()
    name, ip = target["metadata"]["name"], target["status"]["podIP"]
    assert "serving" not in target["metadata"]["labels"]
    # kube-proxy follows the EndpointSlice: the Service stops routing to the pod...
    eventually(lambda: name not in answering_names(web), timeout=30, what="the pod out of it")
    assert len(answering_names(web)) == REPLICAS - 1
    # ...which still runs and answers at its own address (it was not replaced).
    assert http(f"http://{ip}:8080/") == (200, f"{name}\n".encode())
    run.completed()
    assert pod(web, name)["metadata"]["labels"]["serving"] == "true"
    eventually(lambda: name in answering_names(web), timeout=30, what="the pod routed again")


def test_network_isolation_drops_traffic_through_the_policy_engine(web: Cluster) -> None:
    run = start(web, [attack("NetworkIsolation", 12)])
    run.applied()
    target = run.target()
    name, ip = target["metadata"]["name"], target["status"]["podIP"]
    others = [p for p in ready_pods(web) if p["metadata"]["name"] != name]
    # kube-network-policies drops the client pod's packets to the target...
    eventually(lambda: name not in from_client(web, ip), timeout=30, what="traffic dropped")
    # ...and only to it.
    assert others[0]["metadata"]["name"] in from_client(web, others[0]["status"]["podIP"])
    policies = get(web, "networkpolicies", "-n", NS)["items"]
    assert len(policies) == 1
    run.completed()
    assert get(web, "networkpolicies", "-n", NS)["items"] == []
    eventually(lambda: name in from_client(web, ip), timeout=30, what="traffic restored")


def test_node_cordon_keeps_new_pods_off_the_real_node_until_rolled_back(web: Cluster) -> None:
    run = start(web, [attack("NodeCordon", 12)])
    status = run.applied()
    assert status["attacks"][0]["nodes"] == [realnode.NAME]
    assert get(web, "node", realnode.NAME)["spec"].get("unschedulable") is True
    web.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "latecomer", "namespace": NS},
            "spec": {
                **ON_REAL_NODE,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "w", "image": WORKLOAD_IMAGE, "imagePullPolicy": "Never"}],
            },
        }
    )
    try:
        # The scheduler's own verdict: the only node it may use is cordoned.
        def unschedulable() -> bool:
            conditions = pod(web, "latecomer")["status"].get("conditions") or []
            return any(
                x["type"] == "PodScheduled" and x.get("reason") == "Unschedulable"
                for x in conditions
            )

        eventually(unschedulable, timeout=30, what="the latecomer refused by the scheduler")
        run.completed()
        assert not get(web, "node", realnode.NAME)["spec"].get("unschedulable")
        web.kubectl("wait", "pod/latecomer", "-n", NS, "--for=condition=Ready", "--timeout=60s")
        assert pod(web, "latecomer")["spec"]["nodeName"] == realnode.NAME
    finally:
        web.kubectl("delete", "pod", "latecomer", "-n", NS, "--wait=false", check=False)


# -- node-level attacks, applied by the agent DaemonSet ------------------------------------


def test_cpu_stress_burns_cpu_in_the_pods_own_cgroup(web: Cluster) -> None:
    uids = {p["metadata"]["uid"] for p in ready_pods(web)}
    idle = {uid: cpu_rate(uid, 1.0) for uid in uids}
    run = start(web, [attack("CpuStress", 12, workers=1)])
    run.applied()
    uid = run.target()["metadata"]["uid"]
    during = cpu_rate(uid)
    print(f"\nCpuStress: target pod {during:.2f} cores (idle {idle[uid]:.3f})")
    # One busy worker, charged to the pod: at least a fifth of a core even on a loaded
    # 2-core machine, and far above what the pod used idle.
    assert during >= 0.2
    assert during >= 5 * idle[uid] + 0.05
    run.completed()
    after = cpu_rate(uid)
    assert after < during / 4, (after, during)


def test_memory_stress_holds_memory_in_the_pods_own_cgroup(web: Cluster) -> None:
    run = start(web, [attack("MemoryStress", 12, megabytes=64)])
    status = run.applied()
    uid = pod(web, status["targets"]["names"][0])["metadata"]["uid"]
    held = anonymous_memory(uid)
    run.completed()
    freed = eventually(
        lambda: (m := anonymous_memory(uid)) < held - 56 * MIB and m + 1,
        timeout=15,
        what="the memory freed",
    )
    print(f"\nMemoryStress: pod anon memory {held / MIB:.0f} MiB held, {freed / MIB:.0f} after")
    # The 64 MiB were in the pod's cgroup while applied, and are gone after.
    assert held >= 64 * MIB


def test_network_blackhole_cuts_the_pod_off_and_rollback_restores_it(web: Cluster) -> None:
    run = start(web, [attack("NetworkBlackhole", 10)])
    run.applied()
    ip = run.target()["status"]["podIP"]
    assert not connects(ip)
    assert ping_loss(ip, 20) == 1.0
    run.completed()
    assert connects(ip)
    assert ping_loss(ip, 20) == 0.0


def test_packet_loss_drops_the_configured_share(web: Cluster) -> None:
    run = start(web, [attack("PacketLoss", 15, percent=50, direction="Ingress")])
    run.applied()
    ip = run.target()["status"]["podIP"]
    loss = ping_loss(ip, 200)
    print(f"\nPacketLoss 50 %: {loss:.0%} of 200 pings lost")
    # Binomial(200, 0.5): 0.30-0.70 is more than 5 standard deviations either side.
    assert 0.30 <= loss <= 0.70
    run.completed()
    assert ping_loss(ip, 100) <= 0.02


def test_bandwidth_limit_caps_what_the_pod_sends(web: Cluster) -> None:
    rate_kbit = 2000  # 250 kB/s
    limit = rate_kbit * 1000 / 8
    run = start(web, [attack("BandwidthLimit", 15, rateKbit=rate_kbit, burstKbyte=32)])
    run.applied()
    ip = run.target()["status"]["podIP"]
    capped = throughput(ip, 512 * 1024)
    run.completed()
    free = throughput(ip, 8 * MIB)
    print(f"\nBandwidthLimit {limit / 1e3:.0f} kB/s: {capped / 1e3:.0f} kB/s under it, "
          f"{free / 1e6:.1f} MB/s after")  # fmt: skip
    # The bucket's 32 KiB go at full speed: the rest at the cap.
    assert capped <= 1.5 * limit
    assert free >= 10 * capped


def test_process_kill_kills_the_container_and_the_runtime_restarts_it(web: Cluster) -> None:
    run = start(web, [attack("ProcessKill", 4, signal="KILL", processName="workload")])
    status = run.completed()
    assert status["attacks"][0]["reversible"] is False
    name = status["targets"]["names"][0]
    # containerd saw the container die of SIGKILL (exit code 137) and the kubelet restarted
    # it in the same pod: what the runtime reported through the CRI.
    container = eventually(
        lambda: (s := pod(web, name)["status"]["containerStatuses"][0])["restartCount"] >= 1 and s,
        timeout=30,
        what="the container restarted",
    )
    assert container["lastState"]["terminated"]["exitCode"] == 137, container
    web.kubectl("wait", f"pod/{name}", "-n", NS, "--for=condition=Ready", "--timeout=60s")
    ip = pod(web, name)["status"]["podIP"]
    assert http(f"http://{ip}:8080/") == (200, f"{name}\n".encode())


# -- the agent killed mid-attack ------------------------------------------------------------


def agent_pod(c: Cluster) -> dict[str, Any]:
    (agent,) = get(c, "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=shakeout-agent")["items"]
    return dict(agent)


def agent_pid(uid: str) -> int:
    """The agent's main process on the host (hostPID), from its pod's cgroup."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cgroup") as f:
                cgroups = f.read()
            if uid not in cgroups and uid.replace("-", "_") not in cgroups:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"agent" in argv and not any(b"keeper" in a for a in argv):
                return int(entry)
    raise AssertionError(f"no agent process in pod {uid}")


def test_the_agent_killed_mid_attack_on_the_real_node(web: Cluster) -> None:
    agent = agent_pod(web)
    restarts = agent["status"]["containerStatuses"][0]["restartCount"]
    run = start(web, [attack("NetworkBlackhole", 120)])
    run.applied()
    ip = run.target()["status"]["podIP"]
    assert not connects(ip)
    killed = time.monotonic()
    os.kill(agent_pid(agent["metadata"]["uid"]), signal.SIGKILL)
    eventually(lambda: connects(ip, timeout=0.5), timeout=60, interval=0.05, what="fault gone")
    print(f"\nagent SIGKILL on the real node: fault gone after {time.monotonic() - killed:.2f} s")
    status = run.ended(timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "AgentDisconnected"), status
    # The kubelet restarts the agent, which holds its Lease again.
    eventually(
        lambda: agent_pod(web)["status"]["containerStatuses"][0]["restartCount"] > restarts,
        timeout=60,
        what="the agent restarted",
    )
    web.kubectl("rollout", "status", "daemonset/shakeout-agent", "-n", SYSTEM, "--timeout=60s")
    report = get(web, "nodeattacks", "-n", NS)["items"]
    ours = [r for r in report if r["spec"]["runName"] == run.name]
    assert ours
    assert all(r["status"]["phase"] == "RolledBack" for r in ours), ours


# -- an HttpGet state check against the real pods ------------------------------------------


def test_an_http_check_calls_the_real_pods_through_their_service(web: Cluster) -> None:
    check = {
        "name": "shop-answers",
        "type": "HttpGet",
        "intervalSeconds": 1,
        "httpGet": {"service": {"name": "web", "port": 80, "path": "/"}, "expectedStatus": 200},
    }
    run = start(web, [attack("CpuStress", 5, workers=1)], checks=[check])
    status = run.completed()
    (tally,) = status["stateChecks"]
    assert tally["successes"] >= 3, tally
    assert tally["failures"] == 0, tally
    # Every pod cut off: the same check fails the run at its first probe under the attack,
    # and the faults are rolled back.
    run = start(
        web,
        [attack("NetworkBlackhole", 60, direction="Ingress")],
        checks=[check],
        limit={"percent": 100},
    )
    status = run.ended(timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "StateCheckFailed"), status
    assert "no answer" in status["message"], status["message"]
    (tally,) = status["stateChecks"]
    assert tally["successes"] >= 1, tally  # before the attack: it prepared the run
    assert status["targets"]["selected"] == REPLICAS
    assert status["attacks"][0]["state"] == "RolledBack"
    eventually(lambda: len(answering_names(web)) == REPLICAS, timeout=30, what="all answering")
