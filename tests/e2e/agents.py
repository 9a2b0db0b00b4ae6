"""Node agents for the e2e tier: a real `shakeout agent` for a kwok node, and targets.

kwok pods have no processes or network; a test gives a pod a real one by creating a
network namespace (ip netns, a veth pair to the host) and naming it in the pod's
annotation shakeout.dev/netns, which the agent's netns-annotation locator reads.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import Cluster, eventually

AGENT_NODE = "kwok-node-0"
AGENT_NAMESPACE = "shakeout-system"
LEASE_DURATION = 6.0
RENEW_INTERVAL = 2.0
# A fault rolled back by the keeper's own deadline (the lease duration since its last
# heartbeat) is gone within this long after the agent was frozen or cut off; the goal
# is 1 s, and a loaded 2-core machine (the control plane included) needs a little more.
OWN_ROLLBACK_SLACK = 2.0
SO_RCVBUFFORCE = 33  # Linux; not exported by Python's socket module


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


# 10.215.X.0/30, X in a random order: e2e runs of other checkouts on this machine take
# theirs from the same range (and each skips those an interface already holds).
_subnets = iter(random.sample(range(1, 250), 249))


def _free_subnet() -> int:
    held = ip("-br", "addr").stdout
    for subnet in _subnets:
        if f" 10.215.{subnet}." not in held:
            return subnet
    raise RuntimeError("every 10.215.X.0/30 subnet is taken")


@dataclass
class Netns:
    """A network namespace with a veth pair to the host: a pod's network for the agent."""

    name: str
    host_ip: str
    ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls) -> Netns:
        name = f"shakeout-e2e-{uuid.uuid4().hex[:6]}"
        subnet = _free_subnet()
        host_if, ns_if = f"se{name[-6:]}h", f"se{name[-6:]}n"
        ns = cls(name, f"10.215.{subnet}.1", f"10.215.{subnet}.2")
        ip("netns", "add", name)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", name)
        ip("addr", "add", f"{ns.host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", name, "addr", "add", f"{ns.ip}/30", "dev", ns_if)
        ip("-n", name, "link", "set", ns_if, "up")
        ip("-n", name, "link", "set", "lo", "up")
        return ns

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        return proc

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pids(self) -> list[int]:
        """Every process in this network namespace, found as a node's /proc shows them."""
        target = os.stat(f"/run/netns/{self.name}")
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/ns/net")
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    found.append(int(entry))
        return found

    def delete(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ip("netns", "delete", self.name, check=False)


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class UdpEcho:
    """A UDP echo server inside the netns, and a prober on the host."""

    def __init__(self, ns: Netns, port: int = 7007) -> None:
        self.ns, self.port = ns, port
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{ns.ip}', {port}))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(2048)\n"
            "    try:\n"
            "        s.sendto(data, peer)\n"
            # A reply that nftables drops on output fails with EPERM: keep serving.
            "    except OSError:\n"
            "        pass\n"
        )
        ns.start(sys.executable, "-c", code)
        eventually(lambda: self.ratio(5, wait=0.2) > 0, timeout=10, what="the echo server")

    def ratio(self, count: int = 200, wait: float = 0.5) -> float:
        """The share of datagrams that came back."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            # Every answer fits while the prober still sends: no loss is the kernel's own.
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
            except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
            sock.bind((self.ns.host_ip, 0))
            for i in range(count):
                sock.sendto(str(i).encode(), (self.ns.ip, self.port))
                time.sleep(0.001)
            sock.settimeout(wait)
            back = set()
            with contextlib.suppress(TimeoutError):
                while len(back) < count:
                    back.add(sock.recv(2048))
        return len(back) / count


class TcpProxy:
    """A loopback TCP forwarder to the API server, so that one client's traffic can be
    dropped (by nftables, on the proxy's port) without touching anyone else's."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def dropped(port: int) -> Iterator[None]:
    """Drop every packet to a loopback TCP port (nftables in the host's namespace)."""
    table = f"shakeout_e2e_cut_{port}"
    ruleset = (
        f"table inet {table} {{\n"
        "  chain out { type filter hook output priority -300; policy accept;\n"
        f"    tcp dport {port} drop\n    tcp sport {port} drop\n  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)


@dataclass
class NodeAgent:
    """`shakeout agent` for a kwok node, as a real process."""

    cluster: Cluster
    workdir: Path
    node: str = AGENT_NODE
    kubeconfig: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        env = dict(self.cluster.env)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        args = [
            str(Path(sys.executable).parent / "shakeout"),
            "agent",
            f"--node={self.node}",
            f"--namespace={AGENT_NAMESPACE}",
            f"--lease-duration={LEASE_DURATION}",
            f"--renew-interval={RENEW_INTERVAL}",
            "--locator=netns-annotation",
            f"--journal={self.workdir / 'journal.json'}",
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        started = time.time()

        def holding() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the agent exited:\n{self.output()[-3000:]}")
            lease = self.lease()
            return bool(
                lease
                and lease["spec"].get("holderIdentity", "").startswith(self.node)
                and self.renewed_after(lease, started)
            )

        eventually(holding, timeout=30, what="the agent's lease")

    @staticmethod
    def renewed_after(lease: dict[str, Any], moment: float) -> bool:
        from datetime import datetime

        renew = lease["spec"].get("renewTime", "").replace("Z", "+00:00")
        return bool(renew) and datetime.fromisoformat(renew).timestamp() >= moment - 1

    def lease(self) -> dict[str, Any] | None:
        result = self.cluster.kubectl(
            "get",
            "lease",
            f"shakeout-agent-{self.node}",
            "-n",
            AGENT_NAMESPACE,
            "-o",
            "yaml",
            check=False,
        )
        return yaml.safe_load(result.stdout) if result.returncode == 0 else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_agent(cluster: Cluster, workdir: Path, show_log: bool = False) -> Iterator[NodeAgent]:
    """A real `shakeout agent` for AGENT_NODE, in the agents' namespace (created if
    missing), stopped at the end; `show_log` prints the end of its output then."""
    if cluster.kubectl("get", "namespace", AGENT_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", AGENT_NAMESPACE)
    node_agent = NodeAgent(cluster, workdir)
    node_agent.start()
    try:
        yield node_agent
    finally:
        node_agent.stop()
        if show_log:
            print(node_agent.output()[-5000:])
