"""SEC-08: the webhook's client certificate check, and the sandbox's API server that
presents one (the live handshake is tests/e2e/test_webhook_auth.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from shakeout.certs import CertificateAuthority
from shakeout.cli.main import main
from shakeout.handlers.webhook_server import client_auth, unauthenticated_warning
from shakeout.sandbox.binaries import Binaries
from shakeout.sandbox.components import Site, kube_apiserver
from shakeout.sandbox.pki import WEBHOOK_CLIENT, Pki, admission_configuration, create_pki
from shakeout.webhook_tls import check_client_ca, generate_serving_cert


def test_a_client_ca_makes_the_server_require_a_certificate_of_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    assert client_auth(ca) == {"verify_cafile": str(ca), "verify_mode": ssl.CERT_REQUIRED}
    # Without one: kopf's defaults, no client certificate asked for (and a warning).
    assert client_auth(None) == {}
    warning = unauthenticated_warning(9443)
    assert "port 9443 is unauthenticated" in warning
    assert "--webhook-client-ca" in warning


def test_the_client_ca_must_be_a_readable_pem_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("clients")
    good = tmp_path / "ca.crt"
    good.write_bytes(ca.cert_pem())
    assert check_client_ca(good) == good
    leaf, _key = ca.issue("not-a-ca")
    only_leaf = tmp_path / "leaf.crt"
    only_leaf.write_bytes(leaf)
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("hello")
    for path, problem in (
        (tmp_path / "missing.crt", "No such file"),
        (garbage, "no PEM certificate"),
        (only_leaf, "no CA certificate"),
    ):
        with pytest.raises(ValueError, match=problem):
            check_client_ca(path)


def test_the_operator_refuses_to_start_with_a_bad_client_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before kopf starts: a typo never leaves the webhook unauthenticated."""
    missing = tmp_path / "nope.crt"
    assert main(["operator", f"--webhook-client-ca={missing}"]) == 2
    assert f"--webhook-client-ca {missing}" in capsys.readouterr().err


def test_the_sandbox_api_server_presents_its_own_client_certificate(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    config = yaml.safe_load(pki.admission_config.read_text())
    assert config["kind"] == "AdmissionConfiguration"
    assert {p["name"] for p in config["plugins"]} == {
        "ValidatingAdmissionWebhook",
        "MutatingAdmissionWebhook",
    }
    for plugin in config["plugins"]:
        assert plugin["configuration"]["kubeConfigFile"] == str(pki.admission_kubeconfig)
    kubeconfig = yaml.safe_load(pki.admission_kubeconfig.read_text())
    assert [u["name"] for u in kubeconfig["users"]] == ["*"]
    user = kubeconfig["users"][0]["user"]
    assert user == {
        "client-certificate": str(pki.crt(WEBHOOK_CLIENT)),
        "client-key": str(pki.key(WEBHOOK_CLIENT)),
    }
    assert pki.key(WEBHOOK_CLIENT).stat().st_mode & 0o077 == 0
    assert pki.admission_kubeconfig.stat().st_mode & 0o077 == 0
    # Signed by the webhook client CA and by nothing the sandbox's other clients hold:
    # the admin's certificate (the sandbox CA) does not pass the operator's check.
    ctx = ssl.create_default_context(cafile=str(pki.webhook_client_ca))
    store = {c["serialNumber"] for c in ctx.get_ca_certs()}
    assert len(store) == 1
    assert pki.webhook_client_ca.read_bytes() != pki.ca_crt.read_bytes()
    assert check_client_ca(pki.webhook_client_ca) == pki.webhook_client_ca
    assert admission_configuration(pki) == (config, kubeconfig)


def test_the_api_server_is_started_with_the_admission_configuration(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    binary = Path("/bin/true")
    binaries = Binaries(binary, binary, binary, binary, binary, binary, tmp_path)
    site = Site(tmp_path, pki, {"etcd": 1, "apiserver": 2}, tmp_path / "admin.kubeconfig")
    args = kube_apiserver(binaries, site)
    assert f"--admission-control-config-file={pki.admission_config}" in args


@pytest.mark.parametrize("with_ca", [True, False])
def test_the_operators_webhook_server_is_built_with_the_client_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ca: bool
) -> None:
    """handlers/settings.py's start-up: the server kopf runs gets the CA and CERT_REQUIRED,
    or, without the option, none and a warning that the port is unauthenticated."""
    from shakeout.handlers import settings as wiring
    from shakeout.options import OPTIONS

    ca = tmp_path / "clients.crt"
    ca.write_bytes(CertificateAuthority.create("clients").cert_pem())
    for name, value in {
        "webhook": True,
        "webhook_port": 9443,
        "cert_dir": tmp_path / "serving",
        "webhook_service": None,
        "metrics": None,
        "webhook_client_ca": ca if with_ca else None,
    }.items():
        monkeypatch.setattr(OPTIONS, name, value)
    settings = wiring.kopf.OperatorSettings()
    logger = logging.getLogger("test-webhook-client-auth")
    with caplog_of(logger) as records:
        asyncio.run(wiring.configure(settings=settings, logger=logger))  # type: ignore[arg-type]
    server = settings.admission.server
    assert isinstance(server, wiring.kopf.WebhookServer)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    if with_ca:
        assert server.verify_cafile == str(ca)
        assert server.verify_mode == ssl.CERT_REQUIRED
        assert not any("unauthenticated" in w for w in warnings)
    else:
        assert server.verify_cafile is None
        assert server.verify_mode is None
        assert any("port 9443 is unauthenticated" in w for w in warnings)


@contextlib.contextmanager
def caplog_of(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def test_the_serving_cert_is_made_by_a_child_process(tmp_path: Path) -> None:
    cert = await generate_serving_cert(tmp_path / "certs", ("shakeout.example", "127.0.0.1"))

    leaf = x509.load_pem_x509_certificates(cert.certfile.read_bytes())[0]
    ca = x509.load_pem_x509_certificate(cert.cafile.read_bytes())
    leaf.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["shakeout.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The key matches the certificate (load_cert_chain checks) and only its owner reads it.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        str(cert.certfile), str(cert.keyfile)
    )
    assert (cert.keyfile.stat().st_mode & 0o777) == 0o600


async def test_a_failed_child_is_a_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")

    with pytest.raises(RuntimeError, match="making the webhook's certificate in"):
        await generate_serving_cert(blocked, ("localhost",))
