"""The webhook server's TLS files: its serving certificate and its client CA.

The operator process does not import the cryptography package: its OpenSSL bindings
would stay resident (about 8 MiB) for the operator's whole life, for work done once at
start. The client CA is checked with the standard library's ssl; a serving certificate
is made by a short-lived child process (`python -m shakeout.certs`).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServingCert:
    certfile: Path
    keyfile: Path
    cafile: Path

    @classmethod
    def in_directory(cls, directory: Path) -> ServingCert:
        return cls(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")

    def complete(self) -> bool:
        return self.certfile.exists() and self.keyfile.exists() and self.cafile.exists()


async def generate_serving_cert(directory: Path, hosts: tuple[str, ...]) -> ServingCert:
    """A fresh CA and a server certificate for `hosts` in `directory`, made by a child
    process (shakeout.certs); RuntimeError with its message when it fails."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shakeout.certs",
        str(directory),
        *hosts,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await child.communicate()
    cert = ServingCert.in_directory(directory)
    if child.returncode or not cert.complete():
        raise RuntimeError(f"making the webhook's certificate in {directory}: {err.decode()}")
    return cert


def check_client_ca(path: Path) -> Path:
    """The CA bundle that signs the webhook's clients: readable, PEM, with a CA in it.

    ValueError otherwise, so that the operator refuses to start rather than serve its
    webhook unauthenticated by mistake.
    """
    try:
        data = path.read_text(encoding="ascii", errors="replace")
    except OSError as err:
        raise ValueError(f"--webhook-client-ca {path}: {err.strerror or err}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data)
    except (ssl.SSLError, ValueError):
        raise ValueError(f"--webhook-client-ca {path}: no PEM certificate in it") from None
    # OpenSSL's X509_check_ca: only certificates that may sign others are listed.
    if not context.get_ca_certs():
        raise ValueError(
            f"--webhook-client-ca {path}: no CA certificate in it (basicConstraints CA)"
        )
    return path
