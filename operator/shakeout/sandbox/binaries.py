"""Where the control-plane binaries are: envtest assets, or the project's build cache."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tools" / "controlplane" / "build.sh"


def cache_root() -> Path:
    """The cache outside the checkout: binaries keyed by version, sandbox state."""
    if env := os.environ.get("SHAKEOUT_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "shakeout"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    kube_controller_manager: Path | None
    kube_scheduler: Path | None
    kwok: Path | None
    kwok_stages: Path | None
    # The real node's (`sandbox up --real-node`): built only with `build.sh --real-node`.
    kubelet: Path | None = None
    kube_proxy: Path | None = None
    netpol: Path | None = None
    pause: Path | None = None
    # Prometheus for the metric checks: built only with `build.sh --prometheus`; the
    # sandbox runs it whenever it is built (docs/sandbox.md, "Prometheus").
    prometheus: Path | None = None

    @property
    def has_nodes(self) -> bool:
        """Whether pods can be scheduled and run: needs KCM, scheduler and kwok."""
        return None not in (self.kube_controller_manager, self.kube_scheduler, self.kwok)

    def missing(self) -> list[str]:
        return [str(p) for p in (self.etcd, self.kube_apiserver, self.kubectl) if not p.exists()]

    def missing_real_node(self) -> list[str]:
        named = {
            "kubelet": self.kubelet,
            "kube-proxy": self.kube_proxy,
            "kube-network-policies": self.netpol,
            "pause": self.pause,
        }
        return [name for name, path in named.items() if path is None]


def _built_dirs() -> dict[str, Path]:
    """Ask the build script where it puts the binaries (it owns the version pins)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SHAKEOUT_CACHE": str(cache_root())},
    ).stdout
    return {k: Path(v) for k, v in (line.split("=", 1) for line in out.split())}


def build(real_node: bool = False) -> None:
    """Build whatever is missing (prints progress; a cold build takes a long time);
    real_node: also kubelet, kube-proxy, the policy engine and the pause program."""
    if not BUILD_SCRIPT.exists():
        raise FileNotFoundError(f"{BUILD_SCRIPT} not found: run from a shakeout checkout")
    subprocess.run(
        ["bash", str(BUILD_SCRIPT), *(["--real-node"] if real_node else [])],
        check=True,
        env={**os.environ, "SHAKEOUT_CACHE": str(cache_root())},
        stdout=subprocess.DEVNULL,
    )


def kstatus() -> Path:
    """The kstatus checker (tools/controlplane/kstatus) in the build cache.

    It prints kstatus's verdict (sigs.k8s.io/cli-utils, as Flux and kpt compute it) for
    objects given as JSON on stdin. The path may not exist yet: `make controlplane`
    builds it. envtest assets never ship it, so only the build cache is consulted.
    """
    if not BUILD_SCRIPT.exists():
        raise FileNotFoundError(f"{BUILD_SCRIPT} not found: run from a shakeout checkout")
    return _built_dirs()["KSTATUS_BIN"] / "kstatus"


def find() -> Binaries:
    """envtest binaries (KUBEBUILDER_ASSETS) first when set, else the build cache.

    envtest ships etcd, kube-apiserver and kubectl only; the controller manager,
    scheduler and kwok then come from the build cache when they are there, and the
    sandbox runs without nodes when they are not.
    """
    dirs = _built_dirs() if BUILD_SCRIPT.exists() else {}
    k8s, etcd, kwok = dirs.get("K8S_BIN"), dirs.get("ETCD_BIN"), dirs.get("KWOK_BIN")

    def pick(name: str, built: Path | None) -> Path | None:
        assets = os.environ.get("KUBEBUILDER_ASSETS")
        if assets and (Path(assets) / name).exists():
            return Path(assets) / name
        if built and (built / name).exists():
            return built / name
        return None

    def required(name: str, built: Path | None) -> Path:
        found = pick(name, built)
        if found is None:
            where = os.environ.get("KUBEBUILDER_ASSETS") or built or "the build cache"
            return Path(where) / name
        return found

    stages = kwok / "stages" if kwok and (kwok / "stages").is_dir() else None
    kwok_bin = pick("kwok", kwok)

    def built(key: str, name: str) -> Path | None:
        where = dirs.get(key)
        return where / name if where and (where / name).exists() else None

    return Binaries(
        etcd=required("etcd", etcd),
        kube_apiserver=required("kube-apiserver", k8s),
        kubectl=required("kubectl", k8s),
        kube_controller_manager=pick("kube-controller-manager", k8s),
        kube_scheduler=pick("kube-scheduler", k8s),
        kwok=kwok_bin if stages else None,
        kwok_stages=stages,
        kubelet=built("NODE_BIN", "kubelet"),
        kube_proxy=built("NODE_BIN", "kube-proxy"),
        netpol=built("NETPOL_BIN", "kube-network-policies"),
        pause=built("PAUSE_BIN", "pause"),
        prometheus=built("PROMETHEUS_BIN", "prometheus"),
    )
