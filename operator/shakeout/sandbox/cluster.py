"""Start, stop and inspect the sandbox control plane (processes on loopback only)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shakeout.sandbox import binaries as bins
from shakeout.sandbox.pki import ADMIN, TEST_IDENTITIES, Pki, create_pki

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
TEAMS = ("team-a", "team-b")
# Stop order: dependants first, etcd last.
COMPONENTS = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class SandboxError(RuntimeError):
    """The sandbox could not be started or used; the message says what to do."""


def default_dir() -> Path:
    if env := os.environ.get("SHAKEOUT_SANDBOX_DIR"):
        return Path(env)
    return bins.cache_root() / "sandbox"


def _free_ports(names: list[str]) -> dict[str, int]:
    """Distinct free loopback ports: all sockets stay open until every port is picked,
    or the kernel could hand the same just-closed port out twice."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return {name: int(sock.getsockname()[1]) for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def _alive(pid: int, name: str) -> bool:
    """The pid runs and is still our binary (pids are reused after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}:
        return False
    if not cmdline:
        # Seen right after spawn, while the kernel is still setting up the new image.
        return True
    return name.encode() in cmdline.split(b"\0", 1)[0]


@dataclass
class State:
    """What `up` started, so that `status` and `down` can find it again."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    has_nodes: bool = False
    kubectl: str = ""
    started_seconds: float | None = None

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


class Sandbox:
    """The local control plane rooted at one directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or default_dir()
        self.pki = Pki(self.dir / "pki")
        self.state_file = self.dir / "state.json"
        self.logs = self.dir / "logs"

    # -- queries ---------------------------------------------------------------

    def state(self) -> State | None:
        return State.load(self.state_file)

    def running(self) -> dict[str, bool]:
        st = self.state()
        if st is None:
            return {}
        return {name: _alive(pid, name) for name, pid in st.pids.items()}

    def is_up(self) -> bool:
        running = self.running()
        return bool(running) and all(running.values()) and self._ready()

    def kubeconfig(self, user: str = ADMIN.name) -> Path:
        path = self.dir / "kubeconfigs" / f"{user}.kubeconfig"
        if not path.exists():
            known = ", ".join([ADMIN.name, *(i.name for i in TEST_IDENTITIES)])
            raise SandboxError(f"no kubeconfig for user {user!r} (known: {known}); is it up?")
        return path

    def server(self) -> str:
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up: run `shakeout sandbox up`")
        return f"https://{LOOPBACK}:{st.ports['apiserver']}"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.crt(ADMIN.name)), str(self.pki.key(ADMIN.name)))
        return ctx

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310  (our own https URL on loopback)
                f"{self.server()}/readyz", context=self._ssl(), timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError, SandboxError, ssl.SSLError):
            return False

    # -- up --------------------------------------------------------------------

    def up(self, nodes: int = 2, log: Callable[[str], None] = print) -> State:
        """Start the control plane (idempotent: a running sandbox is left as it is)."""
        if self.is_up():
            st = self.state()
            assert st is not None
            log(f"sandbox already up at {self.server()}")
            return st
        self.down(log=lambda _msg: None)  # clear the remains of a crashed sandbox
        try:
            return self._start(nodes, log)
        except BaseException:
            # A start that failed half-way leaves no process behind (the logs stay).
            self.down(log=lambda _msg: None)
            raise

    def _start(self, nodes: int, log: Callable[[str], None]) -> State:
        binaries = bins.find()
        if missing := binaries.missing():
            raise SandboxError(
                "control-plane binaries are missing: "
                + ", ".join(missing)
                + "\nbuild them with `make controlplane` (or tools/controlplane/build.sh), "
                "or point KUBEBUILDER_ASSETS at envtest binaries"
            )
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        create_pki(self.pki.dir)
        st = State(
            ports=_free_ports(["etcd", "etcd-peer", "apiserver", "kcm", "scheduler"]),
            kubectl=str(binaries.kubectl),
            has_nodes=binaries.has_nodes,
        )
        st.save(self.state_file)
        self._write_kubeconfigs(st)

        log(f"starting etcd on {LOOPBACK}:{st.ports['etcd']}")
        st.pids["etcd"] = self._spawn("etcd", self._etcd_args(binaries.etcd, st))
        log(f"starting kube-apiserver on {LOOPBACK}:{st.ports['apiserver']}")
        st.pids["kube-apiserver"] = self._spawn(
            "kube-apiserver", self._apiserver_args(binaries, st)
        )
        st.save(self.state_file)
        self._wait("kube-apiserver ready", self._ready, 60, st)

        admin = str(self.kubeconfig())
        allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        if binaries.has_nodes:
            assert binaries.kube_controller_manager is not None
            assert binaries.kube_scheduler is not None
            assert binaries.kwok is not None
            assert binaries.kwok_stages is not None
            log("starting kube-controller-manager, kube-scheduler and kwok")
            st.pids["kube-controller-manager"] = self._spawn(
                "kube-controller-manager",
                [
                    str(binaries.kube_controller_manager),
                    f"--kubeconfig={admin}",
                    f"--authentication-kubeconfig={admin}",
                    f"--authorization-kubeconfig={admin}",
                    f"--bind-address={LOOPBACK}",
                    f"--secure-port={st.ports['kcm']}",
                    "--leader-elect=false",
                    allow,
                    f"--service-account-private-key-file={self.pki.sa_key}",
                    f"--root-ca-file={self.pki.ca_crt}",
                    "--use-service-account-credentials=false",
                    # kwok renews node leases; a short grace period lets a dead fake node
                    # be noticed quickly, as kwokctl does.
                    "--node-monitor-grace-period=40s",
                ],
            )
            st.pids["kube-scheduler"] = self._spawn(
                "kube-scheduler",
                [
                    str(binaries.kube_scheduler),
                    f"--kubeconfig={admin}",
                    f"--authentication-kubeconfig={admin}",
                    f"--authorization-kubeconfig={admin}",
                    f"--bind-address={LOOPBACK}",
                    f"--secure-port={st.ports['scheduler']}",
                    "--leader-elect=false",
                    allow,
                ],
            )
            kwok_args = [
                str(binaries.kwok),
                f"--kubeconfig={admin}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=10.0.0.1",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
            ]
            for stage in sorted(binaries.kwok_stages.glob("*.yaml")):
                kwok_args += ["--config", str(stage)]
            st.pids["kwok"] = self._spawn("kwok", kwok_args)
            st.save(self.state_file)
            st.nodes = [f"kwok-node-{i}" for i in range(nodes)]
            self.apply(_bootstrap_objects(st.nodes))
            self._wait("fake nodes Ready", lambda: self._nodes_ready(st.nodes), 60, st)
            self._wait(
                "default service account",
                lambda: self._kubectl_ok("get", "serviceaccount", "default", "-n", "default"),
                60,
                st,
            )
        else:
            log(
                "kube-controller-manager, kube-scheduler or kwok not found: running without "
                "nodes (pods will stay Pending)"
            )
            self.apply(_bootstrap_objects([]))
        st.started_seconds = round(time.monotonic() - began, 2)
        st.save(self.state_file)
        log(f"sandbox up in {st.started_seconds}s at {self.server()}")
        return st

    def _etcd_args(self, etcd: Path, st: State) -> list[str]:
        client = f"http://{LOOPBACK}:{st.ports['etcd']}"
        peer = f"http://{LOOPBACK}:{st.ports['etcd-peer']}"
        return [
            str(etcd),
            "--name=sandbox",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=sandbox={peer}",
            "--unsafe-no-fsync",
            "--auto-compaction-retention=1",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_args(self, binaries: bins.Binaries, st: State) -> list[str]:
        p = self.pki
        args = [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://{LOOPBACK}:{st.ports['etcd']}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={st.ports['apiserver']}",
            f"--tls-cert-file={p.crt('apiserver')}",
            f"--tls-private-key-file={p.key('apiserver')}",
            f"--client-ca-file={p.ca_crt}",
            f"--token-auth-file={p.tokens}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
        ]
        if not binaries.has_nodes:
            # No controller manager makes no default ServiceAccount; envtest does the same.
            args.append("--disable-admission-plugins=ServiceAccount")
        return args

    def _spawn(self, name: str, args: list[str]) -> int:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `shakeout sandbox up`; `down` stops it
                cwd=self.dir,
            )
        return proc.pid

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, st: State) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            dead = [n for n, pid in st.pids.items() if not _alive(pid, n)]
            if dead:
                tail = self._log_tail(dead[0])
                raise SandboxError(f"{dead[0]} exited while waiting for {what}:\n{tail}")
            time.sleep(0.2)
        raise SandboxError(f"timed out after {timeout}s waiting for {what}; logs in {self.logs}")

    def _log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _write_kubeconfigs(self, st: State) -> None:
        out = self.dir / "kubeconfigs"
        out.mkdir(exist_ok=True)
        out.chmod(0o700)
        server = f"https://{LOOPBACK}:{st.ports['apiserver']}"
        users: dict[str, dict[str, str]] = {
            ADMIN.name: {
                "client-certificate": str(self.pki.crt(ADMIN.name)),
                "client-key": str(self.pki.key(ADMIN.name)),
            }
        }
        for ident in TEST_IDENTITIES:
            users[ident.name] = {"token": self.pki.token_of(ident.name)}
        for name, creds in users.items():
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "shakeout-sandbox",
                        "cluster": {
                            "server": server,
                            "certificate-authority": str(self.pki.ca_crt),
                        },
                    }
                ],
                "users": [{"name": name, "user": creds}],
                "contexts": [
                    {
                        "name": f"{name}@shakeout-sandbox",
                        "context": {"cluster": "shakeout-sandbox", "user": name},
                    }
                ],
                "current-context": f"{name}@shakeout-sandbox",
            }
            path = out / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            path.chmod(0o600)

    # -- kubectl ---------------------------------------------------------------

    def kubectl(
        self, *args: str, user: str = ADMIN.name, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up: run `shakeout sandbox up`")
        return subprocess.run(
            [st.kubectl, f"--kubeconfig={self.kubeconfig(user)}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def _kubectl_ok(self, *args: str) -> bool:
        return self.kubectl(*args, check=False).returncode == 0

    def apply(self, objects: list[dict[str, Any]]) -> None:
        manifest = yaml.safe_dump_all(objects)
        for _ in range(50):  # RBAC bootstrap may still be settling right after readyz
            result = self.kubectl("apply", "-f", "-", stdin=manifest, check=False)
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise SandboxError(f"kubectl apply failed: {result.stderr}")

    def _nodes_ready(self, nodes: list[str]) -> bool:
        result = self.kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}="
            '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            check=False,
        )
        ready = {line.split("=")[0] for line in result.stdout.split() if line.endswith("=True")}
        return set(nodes) <= ready

    # -- down ------------------------------------------------------------------

    def down(self, log: Callable[[str], None] = print, keep_data: bool = False) -> None:
        """Stop every component and remove the sandbox's state (unless keep_data)."""
        st = self.state()
        if st is not None:
            for name in COMPONENTS:
                pid = st.pids.get(name)
                if pid is not None and _alive(pid, name):
                    log(f"stopping {name} (pid {pid})")
                    _stop(pid, name)
        if not keep_data and self.dir.exists():
            for sub in ("etcd", "pki", "kubeconfigs", "apiserver-certs", "state.json"):
                path = self.dir / sub
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        log("sandbox down")

    def stop_apiserver(self, abrupt: bool = True) -> None:
        """Stop kube-apiserver alone (an outage: everything else keeps running).

        abrupt: SIGKILL, as a crash or a lost machine; otherwise its graceful shutdown.
        """
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up")
        pid = st.pids.get("kube-apiserver")
        if pid is not None and _alive(pid, "kube-apiserver"):
            _stop(pid, "kube-apiserver", grace=0.0 if abrupt else 10.0)

    def start_apiserver(self, timeout: float = 60) -> None:
        """Start kube-apiserver again on its port, after stop_apiserver."""
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up")
        st.pids["kube-apiserver"] = self._spawn(
            "kube-apiserver", self._apiserver_args(bins.find(), st)
        )
        st.save(self.state_file)
        self._wait("kube-apiserver ready", self._ready, timeout, st)

    def status(self) -> dict[str, Any]:
        st = self.state()
        if st is None:
            return {"up": False}
        return {
            "up": self.is_up(),
            "server": self.server(),
            "components": self.running(),
            "nodes": st.nodes,
            "kubeconfig": str(self.dir / "kubeconfigs" / f"{ADMIN.name}.kubeconfig"),
            "kubectl": st.kubectl,
            "startedSeconds": st.started_seconds,
            "logs": str(self.logs),
        }


def _stop(pid: int, name: str, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.1)
    if _alive(pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # Reap it if it is our own child (tests start the sandbox in-process), so that no
    # zombie is left behind by a process that ran `up` and `down` several times.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def _bootstrap_objects(nodes: list[str]) -> list[dict[str, Any]]:
    """Fake nodes for kwok, and one namespace per team with edit rights for its group."""
    objs: list[dict[str, Any]] = []
    for name in nodes:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
            }
        )
    for team in TEAMS:
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team}})
        objs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{team}-members", "namespace": team},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "edit",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": team}
                ],
            }
        )
    return objs


def main_log(msg: str) -> None:
    print(f"[sandbox] {msg}", file=sys.stderr, flush=True)
