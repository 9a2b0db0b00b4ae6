"""Start, stop and inspect the sandbox control plane (processes on loopback only).

The components' command lines are in sandbox/components.py, the process supervision in
sandbox/processes.py; this module is the `Sandbox` that puts them together.
"""

from __future__ import annotations

import json
import os
import shutil
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
from shakeout.sandbox import processes, realnode
from shakeout.sandbox import prometheus as prom
from shakeout.sandbox.components import (
    ARGUMENTS,
    COMPONENTS,
    LOOPBACK,
    NODE_COMPONENTS,
    PORTS,
    Site,
)
from shakeout.sandbox.pki import ADMIN, TEST_IDENTITIES, Pki, RealNodeIdentity, create_pki
from shakeout.sandbox.processes import SandboxError

TEAMS = ("team-a", "team-b")


def default_dir() -> Path:
    if env := os.environ.get("SHAKEOUT_SANDBOX_DIR"):
        return Path(env)
    return bins.cache_root() / "sandbox"


@dataclass
class State:
    """What `up` started, so that `status` and `down` can find it again."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    has_nodes: bool = False
    real_node: bool = False
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
        return {name: processes.alive(pid, name) for name, pid in st.pids.items()}

    def is_up(self) -> bool:
        """The control plane runs (Prometheus is an extra: stopped, the sandbox is still up)."""
        running = {n: ok for n, ok in self.running().items() if n != prom.NAME}
        return bool(running) and all(running.values()) and self._ready()

    def _kubeconfig_path(self, user: str) -> Path:
        return self.dir / "kubeconfigs" / f"{user}.kubeconfig"

    def kubeconfig(self, user: str = ADMIN.name) -> Path:
        path = self._kubeconfig_path(user)
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

    def up(
        self, nodes: int = 2, log: Callable[[str], None] = print, real_node: bool = False
    ) -> State:
        """Start the control plane (idempotent: a running sandbox is left as it is).

        real_node: also one real node (root only: see sandbox/realnode.py)."""
        if self.is_up():
            st = self.state()
            assert st is not None
            if real_node and not st.real_node:
                raise SandboxError(
                    "the sandbox is up without the real node: `shakeout sandbox down` first"
                )
            log(f"sandbox already up at {self.server()}")
            return st
        self.down(log=lambda _msg: None)  # clear the remains of a crashed sandbox
        if real_node:
            realnode.check_host()
        try:
            return self._start(nodes, log, real_node)
        except BaseException:
            # A start that failed half-way leaves no process behind (the logs stay).
            self.down(log=lambda _msg: None)
            raise

    def _start(self, nodes: int, log: Callable[[str], None], real_node: bool = False) -> State:
        binaries = bins.find()
        if missing := binaries.missing():
            raise SandboxError(
                "control-plane binaries are missing: "
                + ", ".join(missing)
                + "\nbuild them with `make controlplane` (or tools/controlplane/build.sh), "
                "or point KUBEBUILDER_ASSETS at envtest binaries"
            )
        if real_node:
            lacking = binaries.missing_real_node()
            if not binaries.has_nodes:
                lacking.append("kube-controller-manager, kube-scheduler or kwok")
            if lacking:
                raise SandboxError(
                    f"the real node's binaries are missing ({', '.join(lacking)}): build "
                    "them with `tools/controlplane/build.sh --real-node`"
                )
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        identity = RealNodeIdentity(realnode.NAME, realnode.NODE_IP) if real_node else None
        create_pki(self.pki.dir, identity)
        st = State(
            ports=processes.free_ports(PORTS + (realnode.PORTS if real_node else ()), LOOPBACK),
            kubectl=str(binaries.kubectl),
            has_nodes=binaries.has_nodes,
            real_node=real_node,
        )
        st.save(self.state_file)
        self._write_kubeconfigs(st)
        site = self._site(st)

        log(f"starting etcd on {LOOPBACK}:{st.ports['etcd']}")
        st.pids["etcd"] = self._spawn("etcd", ARGUMENTS["etcd"](binaries, site))
        log(f"starting kube-apiserver on {LOOPBACK}:{st.ports['apiserver']}")
        st.pids["kube-apiserver"] = self._spawn(
            "kube-apiserver", ARGUMENTS["kube-apiserver"](binaries, site)
        )
        st.save(self.state_file)
        self._wait("kube-apiserver ready", self._ready, 60, st)

        if binaries.has_nodes:
            log("starting kube-controller-manager, kube-scheduler and kwok")
            for name in NODE_COMPONENTS:
                st.pids[name] = self._spawn(name, ARGUMENTS[name](binaries, site))
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
            if real_node:
                self.apply(realnode.bootstrap_objects())
                self._node(st, binaries).up(st.pids, log)
                st.nodes.append(realnode.NAME)
        else:
            log(
                "kube-controller-manager, kube-scheduler or kwok not found: running without "
                "nodes (pods will stay Pending)"
            )
            self.apply(_bootstrap_objects([]))
        if binaries.prometheus is not None:
            self._start_prometheus(st, binaries.prometheus, log)
        else:
            log(
                "Prometheus not built (`make prometheus`): metric checks have no server on "
                "this sandbox"
            )
        st.started_seconds = round(time.monotonic() - began, 2)
        st.save(self.state_file)
        log(f"sandbox up in {st.started_seconds}s at {self.server()}")
        return st

    # -- Prometheus ------------------------------------------------------------

    def prometheus_url(self) -> str:
        """http://127.0.0.1:PORT of the sandbox's Prometheus (SandboxError if it has none)."""
        st = self.state()
        if st is None or prom.NAME not in st.ports:
            raise SandboxError(
                "the sandbox runs no Prometheus: build it with `make prometheus`, then "
                "`shakeout sandbox up` (or Sandbox.start_prometheus on a running sandbox)"
            )
        return f"http://{LOOPBACK}:{st.ports[prom.NAME]}"

    def prometheus_layout(self) -> prom.Layout:
        return prom.Layout(self.dir)

    def _start_prometheus(self, st: State, binary: Path, log: Callable[[str], None]) -> None:
        if prom.NAME not in st.ports:
            st.ports.update(processes.free_ports((prom.NAME,), LOOPBACK))
        port = st.ports[prom.NAME]
        layout = self.prometheus_layout()
        layout.write_config(port)
        log(f"starting prometheus on {LOOPBACK}:{port}")
        st.pids[prom.NAME] = self._spawn(prom.NAME, prom.arguments(binary, layout, port))
        st.save(self.state_file)
        url = f"http://{LOOPBACK}:{port}"
        self._wait("prometheus ready", lambda: prom.ready(url), 60, st)

    def start_prometheus(self, log: Callable[[str], None] = print) -> str:
        """Start Prometheus on a running sandbox (again, on the same port, with the same data
        and targets), unless it runs; its URL."""
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up")
        binary = bins.find().prometheus
        if binary is None:
            raise SandboxError("Prometheus is not built: `make prometheus`")
        pid = st.pids.get(prom.NAME)
        if pid is None or not processes.alive(pid, prom.NAME):
            self._start_prometheus(st, binary, log)
        return self.prometheus_url()

    def stop_prometheus(self) -> None:
        """Stop Prometheus alone (the control plane keeps running): an outage of the server
        the metric checks ask."""
        st = self.state()
        pid = st.pids.get(prom.NAME) if st is not None else None
        if pid is not None and processes.alive(pid, prom.NAME):
            processes.stop(pid, prom.NAME)

    def scrape(self, name: str, address: str, labels: dict[str, str] | None = None) -> None:
        """Have the sandbox's Prometheus scrape http://ADDRESS/metrics (labels: job= etc.)."""
        prom.add_target(self.prometheus_layout(), name, address, labels)

    def unscrape(self, name: str) -> None:
        prom.remove_target(self.prometheus_layout(), name)

    def set_alert_rules(self, name: str, rules: dict[str, Any] | None) -> None:
        """Write (None: remove) the rule file NAME.yml and have Prometheus re-read its rules."""
        path = self.prometheus_layout().rules / f"{name}.yml"
        if rules is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(yaml.safe_dump(rules, sort_keys=False))
        st = self.state()
        if st is not None and (pid := st.pids.get(prom.NAME)) is not None:
            prom.reload(pid)

    def _site(self, st: State) -> Site:
        return Site(self.dir, self.pki, st.ports, self._kubeconfig_path(ADMIN.name), st.real_node)

    def _spawn(self, name: str, args: list[str], **kw: Any) -> int:
        return processes.spawn(name, args, self.logs, cwd=self.dir, **kw)

    def _node(self, st: State, binaries: bins.Binaries) -> realnode.Node:
        """The real node, its processes recorded in the state file as they start."""

        def spawn(name: str, args: list[str], **kw: Any) -> int:
            st.pids[name] = self._spawn(name, args, **kw)
            st.save(self.state_file)
            return st.pids[name]

        return realnode.Node(
            site=self._site(st),
            binaries=binaries,
            logs=self.logs,
            spawn=spawn,
            wait=lambda what, check, timeout: self._wait(what, check, timeout, st),
            kubectl=self.kubectl,
        )

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, st: State) -> None:
        processes.wait_for(what, check, timeout, st.pids, self.logs)

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
        if st is not None and st.real_node:
            self._node(st, bins.find()).down(st.pids, self._ready(), log)
        if st is not None:
            for name in COMPONENTS:
                pid = st.pids.get(name)
                if pid is not None and processes.alive(pid, name):
                    log(f"stopping {name} (pid {pid})")
                    processes.stop(pid, name)
        if not keep_data and self.dir.exists():
            for sub in ("etcd", "pki", "kubeconfigs", "apiserver-certs", prom.NAME, "state.json"):
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
        if pid is not None and processes.alive(pid, "kube-apiserver"):
            processes.stop(pid, "kube-apiserver", grace=0.0 if abrupt else 10.0)

    def start_apiserver(self, timeout: float = 60) -> None:
        """Start kube-apiserver again on its port, after stop_apiserver."""
        st = self.state()
        if st is None:
            raise SandboxError("the sandbox is not up")
        st.pids["kube-apiserver"] = self._spawn(
            "kube-apiserver", ARGUMENTS["kube-apiserver"](bins.find(), self._site(st))
        )
        st.save(self.state_file)
        self._wait("kube-apiserver ready", self._ready, timeout, st)

    def status(self) -> dict[str, Any]:
        st = self.state()
        if st is None:
            return {"up": False}
        real: dict[str, Any] = {}
        if st.real_node:
            real = {
                "name": realnode.NAME,
                "ip": realnode.NODE_IP,
                "podCIDR": realnode.POD_RANGE,
                "taint": realnode.TAINT,
                "components": {n: st.pids.get(n) for n in realnode.COMPONENTS},
                "images": str(realnode.images_dir()),
            }
        return {
            "up": self.is_up(),
            "server": self.server(),
            "components": self.running(),
            "nodes": st.nodes,
            "realNode": real or None,
            "prometheus": (
                {
                    "url": f"http://{LOOPBACK}:{st.ports[prom.NAME]}",
                    "targets": str(self.prometheus_layout().targets),
                    "rules": str(self.prometheus_layout().rules),
                }
                if prom.NAME in st.ports
                else None
            ),
            "kubeconfig": str(self._kubeconfig_path(ADMIN.name)),
            "kubectl": st.kubectl,
            "startedSeconds": st.started_seconds,
            "logs": str(self.logs),
        }


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


__all__ = ["Sandbox", "SandboxError", "State", "default_dir", "main_log"]
