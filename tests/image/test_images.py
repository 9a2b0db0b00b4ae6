"""The images of `make image` are what they claim, checked without a container runtime.

Each OCI archive in $SHAKEOUT_CACHE/images is read as plain files (index, manifest,
config) and its layers unpacked into a directory; then the operator image's `shakeout`
runs from that rootfs under chroot, as the image's user, and the workload binary answers
HTTP and /metrics on loopback. `make test-image` builds the images first and sets
SHAKEOUT_IMAGE_TESTS=required, so that a missing archive fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("SHAKEOUT_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shakeout"
)
ARCHIVES = CACHE / "images"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
USER = "65532:65532"
AGENT_TOOLS = {
    "nft": ["--version"],
    "ip": ["-V"],
    "tc": ["-V"],
    "nsenter": ["--version"],
    "unshare": ["--version"],
}
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot and unpacking need root")


@dataclass
class Image:
    ref: str
    config: dict[str, Any]  # the OCI image config: architecture, os, config, rootfs, history
    rootfs: Path
    layer_bytes: int


def _blob(root: Path, descriptor: dict[str, Any]) -> Path:
    algorithm, digest = descriptor["digest"].split(":", 1)
    return root / "blobs" / algorithm / digest


def unpack(archive: Path, into: Path) -> Image:
    """The archive's only image: its config, and its layers applied in order in rootfs/."""
    oci = into / "oci"
    oci.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(oci, filter="data")
    layout = json.loads((oci / "oci-layout").read_text())
    assert layout["imageLayoutVersion"] == "1.0.0"
    index = json.loads((oci / "index.json").read_text())
    [entry] = index["manifests"]
    manifest = json.loads(_blob(oci, entry).read_text())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config = json.loads(_blob(oci, manifest["config"]).read_text())
    rootfs = into / "rootfs"
    rootfs.mkdir()
    for layer in manifest["layers"]:
        assert layer["mediaType"].startswith("application/vnd.oci.image.layer.v1.tar")
        blob = _blob(oci, layer)
        with tarfile.open(blob) as tar:
            whiteouts = [m.name for m in tar if Path(m.name).name.startswith(".wh.")]
        for name in whiteouts:  # a later layer deleting what an earlier one had
            gone = rootfs / Path(name).parent / Path(name).name.removeprefix(".wh.")
            if gone.is_dir() and not gone.is_symlink():
                shutil.rmtree(gone)
            else:
                gone.unlink(missing_ok=True)
        # GNU tar as root keeps owners, modes and device nodes, as a runtime would.
        subprocess.run(
            ["tar", "-xf", str(blob), "-C", str(rootfs), "--numeric-owner", "--exclude=*.wh.*"],
            check=True,
        )
    size = sum(layer["size"] for layer in manifest["layers"])
    ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
    shutil.rmtree(oci)
    return Image(ref, config, rootfs, size)


def archive(name: str) -> Path:
    path = ARCHIVES / f"{name}.tar"
    if not path.exists():
        if os.environ.get("SHAKEOUT_IMAGE_TESTS") == "required":
            pytest.fail(f"{path} is missing: `make image` did not export it")
        pytest.skip(f"{path} is missing: run `make image` (or `make test-image`)")
    return path


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("unpacking the operator image keeps its owners: root")
    path = archive("operator")
    into = tmp_path_factory.mktemp("operator")
    yield unpack(path, into)
    shutil.rmtree(into)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    path = archive("workload")
    into = tmp_path_factory.mktemp("workload")
    yield unpack(path, into)
    shutil.rmtree(into)


def chroot(image: Image, *argv: str, user: str = USER) -> subprocess.CompletedProcess[str]:
    """argv in the image's rootfs, as `user`, with the image's environment only."""
    env = dict(e.split("=", 1) for e in image.config["config"].get("Env", []))
    return subprocess.run(
        [CHROOT, f"--userspec={user}", str(image.rootfs), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the operator and node-agent image ------------------------------------------------


def test_operator_image_config(operator: Image) -> None:
    assert operator.ref == f"localhost/shakeout/operator:{VERSION}"
    assert (operator.config["os"], operator.config["architecture"]) == ("linux", "amd64")
    config = operator.config["config"]
    assert config["User"] == USER  # deploy/base/operator.yaml: runAsUser 65532
    assert config["Entrypoint"] == ["shakeout"]
    assert config["Cmd"] == ["operator"]
    # Built on the local debootstrap base, not on a pulled image.
    assert config["Labels"].get("dev.shakeout.base-key")
    assert "python:3.11-slim" not in json.dumps(operator.config.get("history", []))


def test_operator_image_is_debian_bookworm_with_our_wheel(operator: Image) -> None:
    os_release = (operator.rootfs / "etc/os-release").read_text()
    assert "VERSION_CODENAME=bookworm" in os_release
    site = list((operator.rootfs / "opt/shakeout/lib").glob("python3.*/site-packages"))
    assert len(site) == 1, site
    assert (site[0] / f"shakeout-{VERSION}.dist-info").is_dir()
    assert not list(site[0].glob("pip-*.dist-info")), "the image must carry no pip"
    assert not (operator.rootfs / "tmp/wheels").exists()
    assert not list((operator.rootfs / "var/lib/apt/lists").glob("*_Packages"))


@needs_root
def test_shakeout_runs_from_the_image_as_its_user(operator: Image) -> None:
    result = chroot(operator, "shakeout", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shakeout {VERSION}"
    # The user exists (a home for libraries that ask), and the import of the operator's
    # and agent's entry points works on a read-only root: nothing is compiled at start.
    who = "import os, pwd; print(f'{os.getuid()}:{os.getgid()}', pwd.getpwuid(os.getuid()).pw_dir)"
    result = chroot(operator, "python3", "-c", who)
    assert result.stdout.split() == [USER, "/tmp"], result
    result = chroot(
        operator,
        "python3",
        "-B",
        "-c",
        "import shakeout.agent.node, shakeout.operator, kopf, kubernetes; print('ok')",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert chroot(operator, "shakeout", "operator", "--help").returncode == 0
    assert chroot(operator, "shakeout", "agent", "--help").returncode == 0


@needs_root
def test_the_agent_tools_are_in_the_image(operator: Image) -> None:
    for tool, version in AGENT_TOOLS.items():
        result = chroot(operator, tool, *version, user="0:0")
        assert result.returncode == 0, (tool, result.stderr)


def test_operator_image_size(operator: Image) -> None:
    # A guard against a base that grows by accident: 77 MB compressed today.
    assert operator.layer_bytes < 150 * 2**20, operator.layer_bytes


# --- the workload image -----------------------------------------------------------------


def test_workload_image_config(workload: Image) -> None:
    assert workload.ref == "localhost/shakeout/workload:1"
    config = workload.config["config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["/workload"]
    assert "8080/tcp" in config.get("ExposedPorts", {})
    # From scratch: the one static binary and nothing else.
    files = [p for p in workload.rootfs.rglob("*") if not p.is_dir()]
    assert [p.relative_to(workload.rootfs).as_posix() for p in files] == ["workload"]
    elf = (workload.rootfs / "workload").read_bytes()
    assert elf[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in elf, "not static: it names a dynamic loader"
    assert workload.layer_bytes < 20 * 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_workload_serves_its_name_and_metrics(workload: Image) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"POD_NAME": "web-7", "WORKLOAD_ERROR_RATE": "0.5"}
    argv = [str(workload.rootfs / "workload"), f"-listen=127.0.0.1:{port}"]
    if os.geteuid() == 0:  # in its rootfs, as the image's user, as a runtime would
        argv = [CHROOT, f"--userspec={USER}", str(workload.rootfs), "/workload", argv[1]]
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if _get(base + "/healthz") == (200, "ok\n"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the workload did not answer in 10 s"
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.05)
        answers = [_get(base + "/") for _ in range(4)]
        assert answers.count((200, "web-7\n")) == 2, answers
        assert [code for code, _ in answers].count(503) == 2, answers
        code, metrics = _get(base + "/metrics")
        assert code == 200
        assert 'workload_http_requests_total{path="/",code="200"} 2' in metrics
        assert 'workload_http_requests_total{path="/",code="503"} 2' in metrics
        assert re.search(
            r'^workload_http_request_duration_seconds_bucket\{path="/",le="\+Inf"\} 4$',
            metrics,
            re.M,
        )
        assert "# TYPE workload_http_request_duration_seconds histogram" in metrics
        assert "workload_injected_error_ratio 0.5" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # stops on SIGTERM, as PID 1 must
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
