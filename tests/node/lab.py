"""A network lab for the node tests: a namespace with a veth to the host, and traffic."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shakeout.agent.node.locate import ANNOTATION_NETNS, PodRef

SO_RCVBUFFORCE = 33  # Linux; not exported by Python's socket module


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Netns:
    """A target "pod": a network namespace, veth'd to the host, 10.213.X.0/30."""

    name: str
    host_if: str
    host_ip: str
    inner_ip: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def inner_if(self) -> str:
        return "eth0"

    def pod(self) -> PodRef:
        uid = f"00000000-0000-4000-8000-{secrets.token_hex(6)}"
        return PodRef("team-a", f"web-{self.name}", uid, {ANNOTATION_NETNS: self.name})

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv, check=check)

    def popen_python(self, script: str, *args: str) -> subprocess.Popen[str]:
        argv = ["ip", "netns", "exec", self.name, sys.executable, "-c", script, *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def tables(self) -> list[str]:
        """Names of the shakeout nftables tables in the namespace."""
        if not self.exists():
            return []
        listed = json.loads(self.run("nft", "-j", "list", "tables").stdout)
        return [
            item["table"]["name"]
            for item in listed["nftables"]
            if "table" in item and item["table"]["name"].startswith("shakeout_")
        ]

    def root_qdisc(self) -> dict[str, object]:
        qdiscs = json.loads(self.run("tc", "-j", "qdisc", "show", "dev", self.inner_if).stdout)
        return next(qdisc for qdisc in qdiscs if qdisc.get("root"))

    def identity(self) -> tuple[int, int]:
        status = os.stat(self.path)
        return status.st_dev, status.st_ino

    def pids(self) -> list[int]:
        """The processes in the namespace, found independently of the agent's code."""
        return pids_in(self.identity())


def pids_in(identity: tuple[int, int]) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = os.stat(f"/proc/{name}/ns/net")
        except OSError:
            continue
        if (status.st_dev, status.st_ino) == identity:
            found.append(int(name))
    return found


def create_netns() -> Netns:
    tag = secrets.token_hex(3)
    subnet = int(tag[:2], 16)  # 10.213.<subnet>.0/30
    netns = Netns(f"shakeout-t-{tag}", f"sk{tag}h", f"10.213.{subnet}.1", f"10.213.{subnet}.2")
    sh("ip", "netns", "add", netns.name)
    try:
        sh("ip", "link", "add", netns.host_if, "type", "veth", "peer", "name", f"sk{tag}n")
        sh("ip", "link", "set", f"sk{tag}n", "netns", netns.name)
        netns.run("ip", "link", "set", f"sk{tag}n", "name", netns.inner_if)
        sh("ip", "addr", "add", f"{netns.host_ip}/30", "dev", netns.host_if)
        sh("ip", "link", "set", netns.host_if, "up")
        netns.run("ip", "addr", "add", f"{netns.inner_ip}/30", "dev", netns.inner_if)
        netns.run("ip", "link", "set", netns.inner_if, "up")
        netns.run("ip", "link", "set", "lo", "up")
    except BaseException:
        delete_netns(netns)
        raise
    return netns


def delete_netns(netns: Netns) -> None:
    sh("ip", "link", "del", netns.host_if, check=False)
    sh("ip", "netns", "del", netns.name, check=False)


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> float:
    """Seconds until predicate() held; AssertionError after timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


# --- traffic -------------------------------------------------------------------------

# Inside the netns: TCP accept-and-close and UDP echo on one port.
SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port)); tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", port))
def echo():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(data, peer)
threading.Thread(target=echo, daemon=True).start()
print("ready", flush=True)
while True:
    tcp.accept()[0].close()
"""

# Inside the netns: N datagrams to the host, paced so that no buffer overflows.
UDP_SENDER = """
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for i in range(count):
    try:
        udp.sendto(i.to_bytes(4, "big") * 16, (host, port))
    except OSError:  # EPERM: an egress drop in the netns' own output hook
        refused += 1
    if i % 50 == 49:
        time.sleep(0.001)
print(refused, flush=True)
"""

# Inside the netns: TCP to the host as fast as it goes, until the host hangs up.
TCP_BLASTER = """
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
chunk = b"x" * 65536
deadline = time.monotonic() + float(sys.argv[3])
try:
    while time.monotonic() < deadline:
        conn.sendall(chunk)
except OSError:
    pass
"""


def free_port() -> int:
    return 20000 + secrets.randbelow(20000)


def start_server(netns: Netns, port: int) -> subprocess.Popen[str]:
    server = netns.popen_python(SERVER, str(port))
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


# A probe waits this long for an answer: a yes comes at once, and a no is believed only
# after a server that a loaded machine schedules late has had time to answer.
PROBE_TIMEOUT = 1.0


def tcp_connects(address: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def udp_echoes(address: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout)
        try:
            udp.sendto(b"ping", (address, port))
            return udp.recvfrom(64)[0] == b"ping"
        except OSError:
            return False


def udp_round_trip(address: str, port: int, timeout: float = PROBE_TIMEOUT) -> float | None:
    """Seconds for one UDP echo, or None without an answer."""
    started = time.monotonic()
    return time.monotonic() - started if udp_echoes(address, port, timeout) else None


def udp_received_share(netns: Netns, count: int) -> float:
    """Share of `count` datagrams sent from inside the netns that reach the host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        # Root may exceed rmem_max: the whole burst fits, so no loss is the kernel's own.
        listener.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
        listener.bind((netns.host_ip, 0))
        port = listener.getsockname()[1]
        netns.run(sys.executable, "-c", UDP_SENDER, netns.host_ip, str(port), str(count))
        listener.settimeout(0.3)
        received = set()
        try:
            while True:
                received.add(listener.recv(2048)[:4])
        except TimeoutError:
            pass
    return len(received) / count


def tcp_throughput_kbit(netns: Netns, skip: float, window: float) -> float:
    """kbit/s of TCP from inside the netns to the host, measured after `skip` seconds."""
    with socket.socket() as listener:
        listener.bind((netns.host_ip, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sender = netns.popen_python(TCP_BLASTER, netns.host_ip, str(port), str(skip + window + 5))
        try:
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                received = 0
                started = time.monotonic()
                measuring_from = started + skip
                counted = 0
                while (now := time.monotonic()) < measuring_from + window:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        raise AssertionError("the sender stopped early")
                    received += len(chunk)
                    if now >= measuring_from:
                        counted += len(chunk)
                elapsed = time.monotonic() - measuring_from
        finally:
            sender.kill()
            sender.wait()
    return counted * 8 / 1000 / elapsed


class CpuMeter:
    """CPU seconds per wall second that a set of processes burns."""

    TICKS = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def ticks(pids: list[int]) -> int:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total

    @classmethod
    def rate(cls, pids: list[int], seconds: float) -> float:
        before, started = cls.ticks(pids), time.monotonic()
        time.sleep(seconds)
        after, ended = cls.ticks(pids), time.monotonic()
        return (after - before) / cls.TICKS / (ended - started)

    @classmethod
    def against_reference(
        cls, pids: list[int], enough: float = 0.5, shortest: float = 1.0, longest: float = 20.0
    ) -> tuple[float, float]:
        """CPU seconds per second of `pids` and of one reference busy loop, over one window.

        The reference is a process of the stress's own kind (a Python busy loop at the
        default priority) started alongside: what one busy process could get from this
        machine meanwhile. The window lasts until the reference burned `enough` CPU
        seconds (at least `shortest`, at most `longest` seconds), so that a loaded machine
        makes it longer, not the comparison weaker.
        """
        with reference_burner() as reference:
            eventually(lambda: cls.ticks([reference]) > 0, timeout=10)  # it runs
            before, base, started = cls.ticks(pids), cls.ticks([reference]), time.monotonic()
            while True:
                time.sleep(0.1)
                after, top, ended = cls.ticks(pids), cls.ticks([reference]), time.monotonic()
                spent, burned = ended - started, (top - base) / cls.TICKS
                if spent >= longest or (spent >= shortest and burned >= enough):
                    break
        return (after - before) / cls.TICKS / spent, burned / spent


BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def reference_burner() -> Iterator[int]:
    """A Python busy loop at the default priority, for as long as the block runs; its pid."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as file:
            return file.read().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
