"""TLS material for the QUIC listener, and the agents' credentials.

*Certificates.* QUIC always runs TLS 1.3, and agents verify the server's certificate by default
(the original turned verification off and made a new self-signed RSA-1024 certificate at every
start, so no client could have verified it). A deployment gives the server a certificate from
its own PKI (``tls_cert``/``tls_key``) and gives agents the CA to trust (``transport.ca_file``).
Without one, :func:`ensure_server_tls` makes a private CA once and keeps it in the data
directory: a CA certificate (10 years) and a server certificate it signed (1 year, renewed when
it has less than 30 days left or lacks a name it must carry), both ECDSA P-256. Agents trust
exactly that CA, explicitly: nothing is added to any system trust store.

*Agent identity.* aioquic does not verify client certificates, so an agent proves who it is with
a token: ``HMAC-SHA256(secret, "pingmesh-agent:" + agent)``, hex. The server keeps one random
secret (``agent-secret`` in the same directory, mode 0600) and can check any agent's token
without a list; an operator issues a token per agent with :func:`agent_token`, and a token
names one agent only, so an agent cannot report as another (the original accepted any
``client_id`` from anyone).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pingmesh.errors import ConfigError

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE_DAYS = 30
SECRET_BYTES = 32
_TOKEN_CONTEXT = b"pingmesh-agent:"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """Where the server's TLS material lives."""

    ca_cert: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pingmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(
    *, now: dt.datetime, common_name: str = "pingmesh private CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    hosts: Sequence[str],
    now: dt.datetime,
    days: int = SERVER_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``hosts`` (DNS names or IP addresses), signed by the CA."""
    if not hosts:
        raise ConfigError("tls: a server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _needs_new_server_cert(path: Path, hosts: Sequence[str], now: dt.datetime) -> bool:
    if not path.exists():
        return True
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )
    return not set(hosts) <= have


def ensure_server_tls(directory: Path, *, hosts: Sequence[str], now: dt.datetime) -> TlsFiles:
    """The private CA and a server certificate for ``hosts`` in ``directory``.

    Whatever exists and is still good is kept (so agents that trust the CA keep trusting it);
    what is missing, expiring or lacks a host is made.
    """
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
    )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key_path = directory / "ca.key"
        if files.ca_cert.exists() and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
            loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{ca_key_path}: not an EC private key")
            ca_key = loaded
        else:
            ca_cert, ca_key = make_ca(now=now)
            _write_private(ca_key_path, _key_pem(ca_key))
            files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
            files.cert.unlink(missing_ok=True)  # signed by a CA that no longer exists
        if _needs_new_server_cert(files.cert, hosts, now):
            cert, key = issue_server_certificate(ca_cert, ca_key, hosts=hosts, now=now)
            _write_private(files.key, _key_pem(key))
            files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot prepare TLS files: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{directory}: unusable TLS files: {exc}") from exc
    return files


def load_or_create_secret(path: Path) -> bytes:
    """The agent-token secret stored (hex) in ``path``; made if the file does not exist."""
    if not path.exists():
        _write_private(path, secrets.token_hex(SECRET_BYTES).encode() + b"\n")
    return load_secret(path)


def load_secret(path: Path) -> bytes:
    """The agent-token secret stored (hex) in ``path``."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent secret: {exc.strerror}") from exc
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: the agent secret is not hex") from exc
    if len(secret) < 16:
        raise ConfigError(f"{path}: the agent secret is shorter than 16 bytes")
    return secret


def agent_token(secret: bytes, agent: str) -> str:
    """The token that proves ``agent``'s identity to a server holding ``secret``."""
    return hmac.new(secret, _TOKEN_CONTEXT + agent.encode(), hashlib.sha256).hexdigest()


class AgentAuthenticator:
    """Checks agent tokens against the server's secret (constant-time)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("agent secret: shorter than 16 bytes")
        self._secret = secret

    def token_for(self, agent: str) -> str:
        """The token of ``agent`` (for issuing it)."""
        return agent_token(self._secret, agent)

    def verify(self, agent: str, token: str) -> bool:
        """True when ``token`` is ``agent``'s."""
        return bool(agent) and hmac.compare_digest(self.token_for(agent), token)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicSecurity:
    """What the QUIC listener needs: its certificate and key, and how to check agents."""

    certificate: Path
    private_key: Path
    ca_certificate: Path | None  # the private CA that agents must trust; None: the operator's
    agent_secret: Path
    authenticator: AgentAuthenticator


def prepare_quic_security(
    *,
    tls_dir: Path,
    hosts: Sequence[str],
    now: dt.datetime,
    certificate: Path | None = None,
    private_key: Path | None = None,
    agent_secret: Path | None = None,
) -> QuicSecurity:
    """The operator's certificate and key if given (both), else the private CA's in ``tls_dir``.

    The agent secret is ``agent_secret`` if given, else ``tls_dir/agent-secret`` (made once).
    """
    if (certificate is None) != (private_key is None):
        raise ConfigError("fields tls_cert and tls_key: give both or neither")
    ca: Path | None = None
    if certificate is None or private_key is None:
        files = ensure_server_tls(tls_dir, hosts=hosts, now=now)
        certificate, private_key, ca = files.cert, files.key, files.ca_cert
    secret_path = agent_secret if agent_secret is not None else tls_dir / "agent-secret"
    if agent_secret is None:
        try:
            tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"{tls_dir}: cannot create: {exc.strerror}") from exc
        secret = load_or_create_secret(secret_path)
    else:
        secret = load_secret(secret_path)
    return QuicSecurity(
        certificate=certificate,
        private_key=private_key,
        ca_certificate=ca,
        agent_secret=secret_path,
        authenticator=AgentAuthenticator(secret),
    )
