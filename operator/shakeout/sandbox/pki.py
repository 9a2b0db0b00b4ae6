"""The sandbox's certificates and tokens: a CA, the API server's serving cert, client certs.

Made with the `cryptography` package, as the design notes advise: kopf's own dev
certificate path needs oscrypto, which cannot find OpenSSL 3.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)


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


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        hosts: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """A leaf certificate and key, PEM encoded: a server's (with hosts) or a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


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
    _write_private(pki.key("ca"), _key_pem(ca.key))

    crt, key = ca.issue("kube-apiserver", server=True, hosts=("127.0.0.1", "localhost"))
    pki.crt("apiserver").write_bytes(crt)
    _write_private(pki.key("apiserver"), key)

    crt, key = ca.issue(ADMIN.name, ADMIN.groups)
    pki.crt(ADMIN.name).write_bytes(crt)
    _write_private(pki.key(ADMIN.name), key)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(pki.sa_key, _key_pem(sa))
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
    _write_private(pki.tokens, ("\n".join(lines) + "\n").encode())
    return pki
