"""The e2e tier: a real kube-apiserver, etcd, controller manager, scheduler and kwok.

The sandbox is brought up once per test session and taken down at the end. Set
SHAKEOUT_E2E_KUBECONFIG to run against an existing cluster instead (identities are then
impersonated with --as/--as-group, which needs an admin kubeconfig).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shakeout.sandbox.binaries import cache_root
from shakeout.sandbox.cluster import Sandbox, SandboxError

REPO = Path(__file__).resolve().parents[2]
IDENTITIES = {"alice": ["team-a"], "bob": ["team-b"], "carol": []}


@dataclass
class Cluster:
    kubectl_bin: str
    admin_kubeconfig: Path
    sandbox: Sandbox | None

    def kubectl(
        self,
        *args: str,
        user: str | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl_bin]
        if user is None:
            cmd.append(f"--kubeconfig={self.admin_kubeconfig}")
        elif self.sandbox is not None:
            cmd.append(f"--kubeconfig={self.sandbox.kubeconfig(user)}")
        else:
            cmd += [f"--kubeconfig={self.admin_kubeconfig}", f"--as={user}"]
            cmd += [f"--as-group={g}" for g in IDENTITIES[user]]
            cmd.append("--as-group=system:authenticated")
        cmd += args
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def plugin(
        self, *args: str, user: str = "admin", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl shakeout ...`: kubectl finds kubectl-shakeout on PATH, as users run it."""
        if self.sandbox is None:
            pytest.fail("plugin tests need the sandbox's per-user kubeconfigs")
        env = {**self.env, "KUBECONFIG": str(self.sandbox.kubeconfig(user))}
        result = subprocess.run(
            [self.kubectl_bin, "shakeout", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl shakeout {' '.join(args)}: {result.stderr}")
        return result

    def apply(self, obj: dict[str, Any] | str, **kw: Any) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self.kubectl("apply", "-f", "-", stdin=text, **kw)

    def create(
        self, obj: dict[str, Any] | str, extra: list[str] | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self.kubectl("create", "-f", "-", *(extra or []), stdin=text, **kw)

    def merge_patch(
        self,
        kind: str,
        name: str,
        body: dict[str, Any] | str,
        namespace: str | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl patch KIND NAME --type=merge -p BODY`, as a user types it."""
        text = body if isinstance(body, str) else json.dumps(body)
        where = ["-n", namespace] if namespace else []
        return self.kubectl("patch", kind, name, *where, "--type=merge", "-p", text, **kw)

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))

    @contextlib.contextmanager
    def without(self, kind: str, name: str = "shakeout.dev") -> Iterator[None]:
        """Delete a cluster-scoped object (a webhook configuration) for the block, then
        put it back as it was."""
        saved = json.loads(self.kubectl("get", kind, name, "-o", "json").stdout)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            saved["metadata"].pop(key, None)
        self.kubectl("delete", kind, name)
        try:
            yield
        finally:
            self.apply(json.dumps(saved))

    @property
    def env(self) -> dict[str, str]:
        """Environment for a child process (the operator) that talks to this cluster."""
        path = f"{Path(sys.executable).parent}:{Path(self.kubectl_bin).parent}:{os.environ['PATH']}"
        return {**os.environ, "KUBECONFIG": str(self.admin_kubeconfig), "PATH": path}


def eventually(
    check: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until check() returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: {last!r}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("SHAKEOUT_E2E_KUBECONFIG")
    if external:
        yield Cluster(os.environ.get("KUBECTL", "kubectl"), Path(external), None)
        return
    # One sandbox per checkout, so that two clones can test side by side.
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    box = Sandbox(cache_root() / f"sandbox-e2e-{checkout}")
    try:
        state = box.up(log=lambda msg: print(f"[sandbox] {msg}"))
    except SandboxError as err:
        # Never skip: CI must fail when the real control plane cannot be had.
        pytest.fail(f"the sandbox did not come up: {err}")
    try:
        yield Cluster(state.kubectl, box.kubeconfig(), box)
    finally:
        box.down(log=lambda msg: print(f"[sandbox] {msg}"))


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The CRDs from crds/, applied with kubectl and Established."""
    cluster.kubectl("apply", "-k", str(REPO / "deploy" / "crds"))
    cluster.kubectl("apply", "-k", str(REPO / "deploy" / "rbac"))
    # The operator's namespace (its rollback records; deploy/base creates it in a cluster).
    cluster.kubectl("create", "namespace", "shakeout-system", check=False)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(
            f"crd/{p}.shakeout.dev"
            for p in ("experiments", "experimentruns", "chaosswitches", "nodeattacks")
        ),
    )
    # The OpenAPI document that `kubectl explain` reads is published a moment later.
    for kind in ("experiment", "experimentrun", "chaosswitch"):
        eventually(
            lambda kind=kind: cluster.kubectl("explain", kind, check=False).returncode == 0,
            what=f"the OpenAPI schema of {kind}",
        )
    return cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Operator:
    """`shakeout operator` as a real process against the cluster, as a user runs it."""

    cluster: Cluster
    log: Path
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    metrics_url: str = ""
    webhook_port: int = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client_ca(self) -> list[str]:
        """The sandbox's API server presents a client certificate to webhooks: the
        operator accepts no other client, as in a cluster configured for it."""
        box = self.cluster.sandbox
        if box is None or any(a.startswith("--webhook-client-ca") for a in self.extra):
            return []
        ca = box.pki.webhook_client_ca
        return [f"--webhook-client-ca={ca}"] if ca.exists() else []

    def start(self) -> None:
        health = f"http://127.0.0.1:{_free_port()}/healthz"
        metrics = f"127.0.0.1:{_free_port()}"
        self.metrics_url = f"http://{metrics}/metrics"
        self.webhook_port = _free_port()
        args = [
            str(Path(sys.executable).parent / "shakeout"),
            "operator",
            f"--liveness={health}",
            f"--webhook-port={self.webhook_port}",
            f"--metrics={metrics}",
            *self.client_ca(),
            *self.extra,
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args,
                env=self.cluster.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = self.process

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(health, timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        eventually(healthy, timeout=30, what="the operator's liveness endpoint")
        if "--no-webhook" not in self.extra:
            eventually(
                lambda: (
                    self.cluster.kubectl(
                        "get", "validatingwebhookconfiguration", "shakeout.dev", check=False
                    ).returncode
                    == 0
                ),
                what="the webhook configuration",
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics(self) -> dict[str, float]:
        """The /metrics page as {'name{labels}': value}."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a node crash or an OOM kill."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def operator(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    # The tests serve HTTP for HttpGet checks from this process, on loopback: the sandbox's
    # admin allows that host, as a cluster admin allows a host with --allow-check-host.
    op = Operator(
        crds,
        tmp_path_factory.mktemp("operator") / "operator.log",
        extra=("--allow-check-host=127.0.0.1",),
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(op.output()[-5000:])


@pytest.fixture
def live_operator(operator: Operator) -> Operator:
    """The session's operator, restarted if an earlier test killed it."""
    if not operator.running():
        operator.start()
    return operator


# The `ready` fixture lives beside the run helpers it uses; registered here for all tests.
from tests.e2e.runs import ready  # noqa: E402, F401
