"""One real node beside the kwok nodes: containerd, kubelet, kube-proxy, CNI bridge
networking and a NetworkPolicy engine, on this host, as root (`sandbox up --real-node`).

Everything the node changes on the host is recorded before it starts (sandbox/hoststate.py)
and undone by `down`, which then compares the host with the record. The design and every
choice (why containerd's `restrict_oom_score_adj`, why the policy engine's packets are
steered with the xtables NFQUEUE target, which sysctls kubelet rewrites) are in
docs/sandbox.md, "A real node".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shakeout.sandbox import hoststate, processes
from shakeout.sandbox.binaries import Binaries, cache_root
from shakeout.sandbox.components import LOOPBACK, POD_CIDR, REAL_NODE_IP, Site
from shakeout.sandbox.hoststate import HostState
from shakeout.sandbox.pki import KUBE_PROXY, NETPOL_USER, Pki
from shakeout.sandbox.processes import SandboxError

NAME = "realnode-0"
# The node's address: on a port-less bridge of its own, so that kubelet is not on eth0
# (kubelet refuses a loopback node IP, and this kind of kernel has no dummy driver).
NODE_BRIDGE = "sko-node0"
NODE_IP = REAL_NODE_IP
# The pods' bridge and addresses: inside the sandbox's POD_CIDR, far from the addresses
# kwok hands out from its start (10.244.0.1, ...).
CNI_BRIDGE = "sko-cni0"
POD_RANGE = "10.244.128.0/24"
KUBELET_PORT = 10250
NFQUEUE = 100
# The mangle chain that steers pods' new connections to the policy engine's queue.
STEER_CHAIN = "SHAKEOUT-NETPOL"
# With a real node the API server listens on every address of the host (its pods reach it
# through the `kubernetes` Service at NODE_IP): this chain keeps its port to the host
# itself and the node's bridges.
APISERVER_CHAIN = "SHAKEOUT-APISERVER"
LABEL = "shakeout.dev/real-node"
TAINT = f"{LABEL}=true:NoSchedule"
PAUSE_IMAGE = "localhost/shakeout/pause:3.10"
HTTPD_IMAGE = "localhost/shakeout/busybox-httpd:1"
# The real node's processes, in stop order.
COMPONENTS = ("kube-network-policies", "kube-proxy", "kubelet", "containerd")
# Their loopback ports (kubelet's API is on NODE_IP:KUBELET_PORT).
PORTS = ("kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics", "netpol-metrics")
# Kernel settings kubelet rewrites at start-up; put back as soon as the node is Ready.
# ip_forward stays on while the node runs (pods need it).
KUBELET_SYSCTLS = hoststate.KUBELET_SYSCTLS
# Debian packages the node needs, by the command that shows they are there.
HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "nft": "nftables",
    "ip": "iproute2",
    "buildah": "buildah",
    "busybox": "busybox-static",
    "mount": "mount",
}
CNI_PLUGINS = Path("/usr/lib/cni")
TOOLS_SCRIPT = "tools/real-node-tools.sh"


def images_dir() -> Path:
    """OCI archives imported into the node's containerd at each `up` (every *.tar)."""
    return cache_root() / "images"


@dataclass(frozen=True)
class Paths:
    """The node's private files, all under <sandbox>/realnode."""

    root: Path

    @property
    def before(self) -> Path:
        return self.root / "host-before.json"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def engine_run(self) -> Path:
        """Mounted on /run in the policy engine's own mount namespace only."""
        return self.root / "engine-run"


def check_host() -> None:
    """Root, the Debian packages, and no other real node on this machine."""
    if os.geteuid() != 0:
        raise SandboxError(
            "--real-node needs root: it runs containerd and kubelet, and creates network "
            "interfaces, nftables and iptables rules, mounts and cgroups on this host "
            "(`sudo make test-real-node`, or `sudo .venv/bin/shakeout sandbox up --real-node`)"
        )
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_PLUGINS / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        raise SandboxError(
            f"the real node needs the Debian packages {' '.join(missing)}: run {TOOLS_SCRIPT} "
            "(as root) or `make real-node-tools`"
        )
    if Path(f"/sys/class/net/{NODE_BRIDGE}").exists():
        raise SandboxError(
            f"another real node runs on this machine (interface {NODE_BRIDGE} exists): "
            "only one fits (port 10250, the kube-proxy tables); stop it with its "
            "`shakeout sandbox down`"
        )


def is_ours(item: str) -> bool:
    """Whether an interface, mount, cgroup or path is of the kind the node makes: on a
    shared machine, other programs add and remove their own while it runs."""
    name = item.rsplit("/", 1)[-1]
    return (
        item in (NODE_BRIDGE, CNI_BRIDGE)
        or item.startswith("veth")
        or name in ("kubepods", "k8s.io")
        or item in hoststate.REMOVABLE
        or "/realnode/" in item
        or "/containerd" in item
        or "/kubelet" in item
        or item.startswith("/run/netns/cni-")
    )


# -- host commands ------------------------------------------------------------------------


def _sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise SandboxError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def _ctr(paths: Paths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _sh("ctr", f"--address={paths.socket}", "--namespace=k8s.io", *args, check=check)


# -- images -------------------------------------------------------------------------------

BUSYBOX_APPLETS = (
    "sh", "httpd", "nc", "sleep", "cat", "echo", "ls", "ps", "id", "env", "hostname",
    "true", "false", "kill", "ip", "ifconfig", "mkdir", "rm", "uname", "date", "printf",
)  # fmt: skip
INDEX_HTML = "hello from a real container\n"


def build_images(pause: Path, log: Callable[[str], None]) -> None:
    """The pause and busybox-httpd images, built with buildah from scratch into OCI
    archives under images_dir() (once: an existing archive is kept)."""
    out = images_dir()
    out.mkdir(parents=True, exist_ok=True)
    wanted = {"pause.tar": PAUSE_IMAGE, "busybox-httpd.tar": HTTPD_IMAGE}
    if all((out / name).exists() for name in wanted):
        return
    work = out / ".buildah"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    policy = work / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    buildah = [
        "buildah",
        f"--root={work / 'root'}",
        f"--runroot={work / 'run'}",
        "--storage-driver=vfs",
    ]
    sig = f"--signature-policy={policy}"

    def image(archive: str, ref: str, source: Path, dest: str, config: list[str]) -> None:
        if (out / archive).exists():
            return
        log(f"building image {ref} with buildah")
        ctr = _sh(*buildah, "from", sig, "scratch").stdout.strip()
        _sh(*buildah, "copy", ctr, str(source), dest)
        _sh(*buildah, "config", *config, ctr)
        _sh(*buildah, "commit", sig, "--format=oci", ctr, ref)
        tmp = out / f".{archive}.tmp"
        tmp.unlink(missing_ok=True)
        _sh(*buildah, "push", sig, ref, f"oci-archive:{tmp}:{ref}")
        tmp.rename(out / archive)
        _sh(*buildah, "rm", ctr, check=False)

    try:
        image(
            "pause.tar",
            PAUSE_IMAGE,
            pause,
            "/pause",
            ['--entrypoint=["/pause"]', "--user=65535:65535"],
        )
        rootfs = work / "busybox-root"
        (rootfs / "bin").mkdir(parents=True)
        busybox = Path(shutil.which("busybox") or "/bin/busybox").resolve()
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "www").mkdir()
        (rootfs / "www" / "index.html").write_text(INDEX_HTML)
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "passwd").write_text(
            "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        image(
            "busybox-httpd.tar",
            HTTPD_IMAGE,
            rootfs,
            "/",
            [
                "--entrypoint=[]",
                '--cmd=["/bin/httpd","-f","-p","8080","-h","/www"]',
                "--env=PATH=/bin",
                "--port=8080",
            ],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- configuration files --------------------------------------------------------------------


def containerd_config(paths: Paths, runc: str) -> str:
    """containerd 1.6 (Debian bookworm), all state private to the sandbox."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.root / "containerd" / "root"}"
state = "{paths.root / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.root / "containerd" / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM's bounding set lacks CAP_SYS_RESOURCE: nobody may lower oom_score_adj, and
  # runc fails every pod sandbox (kubelet asks for -998) unless containerd clamps it.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{paths.root / "containerd" / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_PLUGINS}"
    conf_dir = "{paths.cni_conf}"
    max_conf_num = 1
"""


def cni_config(paths: Paths) -> dict[str, Any]:
    """A bridge with the pods' gateway on it, host-local addresses in a private dir, no
    masquerade and no portmap (pods talk to each other and to the host only)."""
    return {
        "cniVersion": "1.0.0",
        "name": "shakeout-realnode",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_RANGE}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.root / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(paths: Paths, pki: Pki, ports: Mapping[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": LOOPBACK,
        "healthzPort": ports["kubelet-healthz"],
        "tlsCertFile": str(pki.crt("kubelet-serving")),
        "tlsPrivateKeyFile": str(pki.key("kubelet-serving")),
        # Webhook authentication and authorization: the API server presents its kubelet
        # client certificate, and every request is checked with a SubjectAccessReview.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_crt)},
        },
        "authorization": {"mode": "Webhook"},
        # The host's v1 controllers are held by its init: cgroup v1 and cgroupfs only.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "failSwapOn": False,
        "podLogsDir": str(paths.root / "pod-logs"),
        # Imported images can never be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        "maxPods": 50,
    }


def kube_proxy_config(site: Site) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "hostnameOverride": NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{LOOPBACK}:{site.ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"{LOOPBACK}:{site.ports['kube-proxy-metrics']}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Zeros: leave the host's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "clientConnection": {"kubeconfig": str(site.dir / "realnode" / "kube-proxy.kubeconfig")},
    }


def kubeconfig(site: Site, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sandbox",
                "cluster": {
                    "server": f"https://{LOOPBACK}:{site.ports['apiserver']}",
                    "certificate-authority": str(site.pki.ca_crt),
                },
            }
        ],
        "users": [
            {"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "node", "context": {"cluster": "sandbox", "user": "node"}}],
        "current-context": "node",
    }


def bootstrap_objects() -> list[dict[str, Any]]:
    """What the apiserver's kubelet client and the policy engine may do."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "shakeout:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "kube-apiserver-kubelet-client",
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "shakeout:kube-network-policies"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "nodes"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "shakeout:kube-network-policies"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "shakeout:kube-network-policies",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": NETPOL_USER}
            ],
        },
    ]


# -- the policy engine's mount namespace ----------------------------------------------------

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 0x1000


def _engine_namespace(run_dir: Path) -> Callable[[], None]:
    """A preexec hook: kube-network-policies reads only the in-cluster configuration, so
    it runs in a mount namespace of its own where `run_dir` (holding
    secrets/kubernetes.io/serviceaccount/{token,ca.crt}) is mounted on /run."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    target = os.path.realpath("/var/run").encode()
    source = str(run_dir).encode()

    def enter() -> None:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        if libc.mount(source, target, None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --bind")

    return enter


def _remove_chain(ipt: tuple[str, ...], hook: str, chain: str) -> None:
    """Unhook, empty and delete one of our chains (each step idempotent)."""
    _sh(*ipt, "-D", hook, "-j", chain, check=False)
    _sh(*ipt, "-F", chain, check=False)
    _sh(*ipt, "-X", chain, check=False)


def _steer(add: bool) -> None:
    """Pods' new connections through the engine's NFQUEUE: the xtables NFQUEUE target
    stands in for kube-network-policies' nft `queue` rule (CONFIG_NFT_QUEUE is not set
    on this kernel; xt_NFQUEUE is). The same exemptions as its own rules: established
    flows, and root's own traffic on the host (kubelet's probes)."""
    ipt = ("iptables", "-w", "-t", "mangle")
    if not add:
        _remove_chain(ipt, "POSTROUTING", STEER_CHAIN)
        return
    _sh(*ipt, "-N", STEER_CHAIN)
    rules = [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
        ["-d", POD_RANGE, "-j", "NFQUEUE", "--queue-num", str(NFQUEUE)],
        ["-s", POD_RANGE, "-j", "NFQUEUE", "--queue-num", str(NFQUEUE)],
    ]
    for rule in rules:
        _sh(*ipt, "-A", STEER_CHAIN, *rule)
    _sh(*ipt, "-A", "POSTROUTING", "-j", STEER_CHAIN)


def _guard_apiserver(port: int | None, add: bool) -> None:
    """Only the host (lo) and the real node's bridges may reach the API server's port: it
    listens on every address so that pods reach it at NODE_IP, not so that the network
    does."""
    ipt = ("iptables", "-w", "-t", "filter")
    if not add:
        _remove_chain(ipt, "INPUT", APISERVER_CHAIN)
        return
    assert port is not None
    _sh(*ipt, "-N", APISERVER_CHAIN)
    for interface in ("lo", NODE_BRIDGE, CNI_BRIDGE):
        _sh(*ipt, "-A", APISERVER_CHAIN, "-i", interface, "-j", "RETURN")
    _sh(*ipt, "-A", APISERVER_CHAIN, "-p", "tcp", "--dport", str(port), "-j", "DROP")
    _sh(*ipt, "-I", "INPUT", "-j", APISERVER_CHAIN)


# -- up -----------------------------------------------------------------------------------


@dataclass
class Node:
    """The real node of one sandbox."""

    site: Site
    binaries: Binaries
    logs: Path
    spawn: Callable[..., int]
    wait: Callable[[str, Callable[[], bool], float], None]
    kubectl: Callable[..., subprocess.CompletedProcess[str]]

    @property
    def paths(self) -> Paths:
        return Paths(self.site.dir / "realnode")

    def up(self, pids: dict[str, int], log: Callable[[str], None]) -> None:
        b = self.binaries
        assert b.kubelet is not None
        assert b.kube_proxy is not None
        assert b.netpol is not None
        assert b.pause is not None
        paths = self.paths
        if paths.root.exists():
            shutil.rmtree(paths.root)
        paths.root.mkdir(mode=0o700, parents=True)
        if len(str(paths.socket)) > 100:
            raise SandboxError(f"the sandbox's path is too long for a unix socket: {paths.socket}")
        log("recording the host's state (interfaces, nftables, mounts, cgroups, sysctls)")
        before = HostState.capture()
        before.save(paths.before)

        build_images(b.pause, log)
        self._write_files(paths)

        log(f"node address {NODE_IP} on bridge {NODE_BRIDGE}")
        _sh("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
        _sh("ip", "link", "set", NODE_BRIDGE, "up")

        log("starting containerd")
        pids["containerd"] = self.spawn(
            "containerd",
            [shutil.which("containerd") or "containerd", "--config", str(paths.containerd_config)],
        )
        self.wait("containerd", lambda: _ctr(paths, "version", check=False).returncode == 0, 30)
        archives = sorted(images_dir().glob("*.tar"))
        for archive in archives:
            # Unpacked on first use by the CRI plugin: an image no pod runs costs nothing.
            _ctr(paths, "images", "import", "--no-unpack", str(archive))
        log(f"imported {len(archives)} image(s) from {images_dir()}")

        log(f"starting kubelet ({NAME})")
        pids["kubelet"] = self.spawn(
            "kubelet",
            [
                str(b.kubelet),
                f"--config={paths.root / 'kubelet.yaml'}",
                f"--kubeconfig={paths.root / 'node.kubeconfig'}",
                f"--root-dir={paths.kubelet_root}",
                f"--hostname-override={NAME}",
                f"--node-ip={NODE_IP}",
                f"--node-labels=type=real,{LABEL}=true",
                f"--register-with-taints={TAINT}",
            ],
        )
        log("starting kube-proxy (nftables)")
        pids["kube-proxy"] = self.spawn(
            "kube-proxy", [str(b.kube_proxy), f"--config={paths.root / 'kube-proxy.yaml'}"]
        )
        self.wait(f"node {NAME} Ready", self._ready, 90)
        # kubelet rewrote these at start-up, once: put the host's values back.
        for name in KUBELET_SYSCTLS:
            value = before.sysctls.get(name)
            if value is not None and hoststate.read_sysctl(name) != value:
                hoststate.write_sysctl(name, value)

        self._start_engine(pids, paths, b.netpol, log)

    def _write_files(self, paths: Paths) -> None:
        for sub in ("containerd", "cni/ipam", "kubelet", "pod-logs"):
            (paths.root / sub).mkdir(parents=True, exist_ok=True)
        paths.cni_conf.mkdir(parents=True)
        (paths.cni_conf / "10-shakeout.conflist").write_text(
            json.dumps(cni_config(paths), indent=2)
        )
        runc = shutil.which("runc") or "/usr/sbin/runc"
        paths.containerd_config.write_text(containerd_config(paths, runc))
        pki = self.site.pki
        for name, (cert, key) in {
            "node": (pki.crt(f"system:node:{NAME}"), pki.key(f"system:node:{NAME}")),
            "kube-proxy": (pki.crt(KUBE_PROXY), pki.key(KUBE_PROXY)),
        }.items():
            path = paths.root / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(kubeconfig(self.site, cert, key), sort_keys=False))
            path.chmod(0o600)
        (paths.root / "kubelet.yaml").write_text(
            yaml.safe_dump(kubelet_config(paths, pki, self.site.ports), sort_keys=False)
        )
        (paths.root / "kube-proxy.yaml").write_text(
            yaml.safe_dump(kube_proxy_config(self.site), sort_keys=False)
        )

    def _start_engine(
        self, pids: dict[str, int], paths: Paths, netpol: Path, log: Callable[[str], None]
    ) -> None:
        log("starting kube-network-policies (NFQUEUE through xtables)")
        secrets = paths.engine_run / "secrets" / "kubernetes.io" / "serviceaccount"
        secrets.mkdir(parents=True)
        paths.engine_run.chmod(0o700)
        (secrets / "token").write_text(self.site.pki.token_of(NETPOL_USER))
        (secrets / "token").chmod(0o600)
        shutil.copy(self.site.pki.ca_crt, secrets / "ca.crt")
        _guard_apiserver(self.site.ports["apiserver"], add=True)
        _steer(add=True)
        pids["kube-network-policies"] = self.spawn(
            "kube-network-policies",
            [
                str(netpol),
                f"--hostname-override={NAME}",
                "--disable-nri",
                f"--nfqueue-id={NFQUEUE}",
                f"--metrics-bind-address={LOOPBACK}:{self.site.ports['netpol-metrics']}",
                # kernels from 6.12 have the conntrack fix; its DNS rules need nft queue.
                "--netfilter-bug-1766-fix=false",
            ],
            env={
                **os.environ,
                "KUBERNETES_SERVICE_HOST": LOOPBACK,
                "KUBERNETES_SERVICE_PORT": str(self.site.ports["apiserver"]),
            },
            preexec=_engine_namespace(paths.engine_run),
        )
        self.wait("the policy engine's queue", _queue_bound, 30)

    def _ready(self) -> bool:
        result = self.kubectl(
            "get",
            "node",
            NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return result.stdout.strip() == "True"

    # -- down -------------------------------------------------------------------------------

    def down(
        self, pids: Mapping[str, int], apiserver_up: bool, log: Callable[[str], None]
    ) -> list[str]:
        """Stop the node and restore the host; the differences that remain."""
        paths = self.paths
        if apiserver_up and processes.alive(pids.get("kubelet", 0), "kubelet"):
            # Let kubelet tear its pods down (CNI DEL, unmounts) while it still can.
            self.kubectl("cordon", NAME, check=False)
            self.kubectl(
                "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NAME}",
                "--grace-period=1", "--wait=true", "--timeout=30s", check=False,
            )  # fmt: skip
        _steer(add=False)
        _guard_apiserver(None, add=False)
        for name in COMPONENTS:
            pid = pids.get(name)
            if name == "containerd":
                _remove_containers(paths)
            if pid is not None and processes.alive(pid, name):
                log(f"stopping {name} (pid {pid})")
                processes.stop(pid, name)
        _kill_shims(paths)
        before = HostState.load(paths.before)
        if before is None:
            return []
        restore(before, log)
        after = HostState.capture()
        diff = before.differences(after, relevant=is_ours)
        report = self.logs / "real-node-host-diff.txt"
        report.write_text("\n".join(diff) + "\n" if diff else "")
        if diff:
            log("the host differs from before `up`: " + "; ".join(diff))
        inside = [m for m in hoststate.mounts() if m.startswith(f"{paths.root}/")]
        if inside:  # never delete through a mount point
            log(f"kept {paths.root}: still mounted: {', '.join(inside)}")
        else:
            shutil.rmtree(paths.root, ignore_errors=True)
        return diff


def _queue_bound() -> bool:
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[0] == str(NFQUEUE) for line in lines if line.split())


def _remove_containers(paths: Paths) -> None:
    """Whatever kubelet left running: kill and delete every task and container."""
    if not paths.socket.exists():
        return
    for task in _ctr(paths, "tasks", "list", "-q", check=False).stdout.split():
        _ctr(paths, "tasks", "kill", "-s", "SIGKILL", task, check=False)
    time.sleep(0.5)
    for task in _ctr(paths, "tasks", "list", "-q", check=False).stdout.split():
        _ctr(paths, "tasks", "delete", "-f", task, check=False)
    for container in _ctr(paths, "containers", "list", "-q", check=False).stdout.split():
        _ctr(paths, "containers", "delete", container, check=False)


def _kill_shims(paths: Paths) -> None:
    """The runc shims of our containerd (they outlive it), found by its socket."""
    marker = str(paths.socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline.split(b"\0", 1)[0] and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def restore(before: HostState, log: Callable[[str], None]) -> None:
    """Undo, in order: mounts, cgroups, interfaces, nftables tables, sysctls, host paths."""
    _unmount(before)
    _remove_cgroups(before)
    for iface in hoststate.interfaces():
        if iface not in before.interfaces and is_ours(iface):
            _sh("ip", "link", "del", iface, check=False)
    # nftables: the tables made since (kube-proxy's, iptables-nft's filter/nat/mangle with
    # kubelet's canary chains) go as a whole.
    for table in hoststate.nft_tables():
        if table not in before.nft_tables:
            _sh("nft", "delete", "table", *table.split(), check=False)
    for name, value in before.sysctls.items():
        if value is not None and hoststate.read_sysctl(name) not in (None, value):
            hoststate.write_sysctl(name, value)
    had = set(before.entries)
    for path in hoststate.REMOVABLE:
        if path not in had and os.path.lexists(path):
            log(f"removing {path}")
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _unmount(before: HostState) -> None:
    """Mounts made since (pod volumes, netns files, kubelet's root-dir): last first."""
    known = set(before.mounts)
    for point in reversed(hoststate.mounts()):
        if point in known or not is_ours(point):
            continue
        if _sh("umount", point, check=False).returncode != 0:
            _sh("umount", "-l", point, check=False)


def _remove_cgroups(before: HostState) -> None:
    """Depth first; a cgroup goes once its last process has exited."""
    for _ in range(50):
        left = [c for c in hoststate.cgroups() if c not in before.cgroups and is_ours(c)]
        if not left:
            return
        for cgroup in left:
            top = hoststate.CGROUP_ROOT / cgroup
            subs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for sub in [*subs, top]:
                with contextlib.suppress(OSError):
                    sub.rmdir()
        time.sleep(0.1)
