"""The sandbox's certificates and tokens: a CA, the API server's serving cert, client certs."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shakeout.certs import CertificateAuthority, key_pem, write_private


@dataclass(frozen=True)
class Identity:
    """A sandbox user: a name, its groups, and how it authenticates."""

    name: str
    groups: tuple[str, ...]
    description: str


# The admin uses a client certificate (system:masters); the test identities use bearer
# tokens, so that RBAC, not a certificate, decides what they may do.
ADMIN = Identity("admin", ("system:masters",), "cluster admin (client certificate)")
TEST_IDENTITIES = (
    Identity("alice", ("team-a",), "member of team-a"),
    Identity("bob", ("team-b",), "member of team-b"),
    Identity("carol", (), "authenticated user in no team"),
)


@dataclass(frozen=True)
class Pki:
    """Where the sandbox's PKI files are."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "service-account.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "service-account.pub"

    @property
    def tokens(self) -> Path:
        return self.dir / "tokens.csv"

    def token_of(self, user: str) -> str:
        for line in self.tokens.read_text().splitlines():
            token, name, *_ = line.split(",")
            if name == user:
                return token
        raise KeyError(user)


def create_pki(directory: Path) -> Pki:
    """Write a fresh CA, serving and client certificates, SA keys and the token file."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki(directory)
    ca = CertificateAuthority.create("shakeout-sandbox-ca")
    pki.ca_crt.write_bytes(ca.cert_pem())
    write_private(pki.key("ca"), key_pem(ca.key))

    crt, key = ca.issue("kube-apiserver", server=True, hosts=("127.0.0.1", "localhost"))
    pki.crt("apiserver").write_bytes(crt)
    write_private(pki.key("apiserver"), key)

    crt, key = ca.issue(ADMIN.name, ADMIN.groups)
    pki.crt(ADMIN.name).write_bytes(crt)
    write_private(pki.key(ADMIN.name), key)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(pki.sa_key, key_pem(sa))
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # Token file format: token,user,uid,"group1,group2" (kube-apiserver --token-auth-file).
    lines = []
    for i, ident in enumerate(TEST_IDENTITIES):
        groups = ",".join(ident.groups)
        line = f"{secrets.token_hex(16)},{ident.name},uid-{i}"
        lines.append(f'{line},"{groups}"' if groups else line)
    write_private(pki.tokens, ("\n".join(lines) + "\n").encode())
    return pki
