"""The private CA, the server certificate and agent tokens."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from pingmesh.errors import ConfigError
from pingmesh.server.tls import (
    AgentAuthenticator,
    agent_token,
    ensure_server_tls,
    load_secret,
    prepare_quic_security,
)

NOW = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path: Path) -> None:
    files = ensure_server_tls(tmp_path, hosts=["127.0.0.1", "pingmesh.example"], now=NOW)
    ca, server = _cert(files.ca_cert), _cert(files.cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["pingmesh.example"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_good_material_is_kept_and_a_missing_host_renews_only_the_server_cert(
    tmp_path: Path,
) -> None:
    first = ensure_server_tls(tmp_path, hosts=["127.0.0.1"], now=NOW)
    ca_pem, cert_pem = first.ca_cert.read_bytes(), first.cert.read_bytes()
    again = ensure_server_tls(tmp_path, hosts=["127.0.0.1"], now=NOW)
    assert (again.ca_cert.read_bytes(), again.cert.read_bytes()) == (ca_pem, cert_pem)
    more = ensure_server_tls(tmp_path, hosts=["127.0.0.1", "localhost"], now=NOW)
    assert more.ca_cert.read_bytes() == ca_pem  # agents keep trusting the same CA
    assert more.cert.read_bytes() != cert_pem
    _cert(more.cert).verify_directly_issued_by(_cert(more.ca_cert))


def test_an_expiring_server_certificate_is_renewed(tmp_path: Path) -> None:
    first = ensure_server_tls(tmp_path, hosts=["127.0.0.1"], now=NOW)
    old = first.cert.read_bytes()
    later = NOW + dt.timedelta(days=340)  # 25 days before it expires
    renewed = ensure_server_tls(tmp_path, hosts=["127.0.0.1"], now=later)
    assert renewed.cert.read_bytes() != old
    assert _cert(renewed.cert).not_valid_after_utc > later + dt.timedelta(days=300)


def test_tokens_prove_one_agent_only(tmp_path: Path) -> None:
    security = prepare_quic_security(tls_dir=tmp_path, hosts=["127.0.0.1"], now=NOW)
    auth = security.authenticator
    token = auth.token_for("h1")
    assert auth.verify("h1", token)
    assert not auth.verify("h2", token)
    assert not auth.verify("h1", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not auth.verify("", token)
    secret = load_secret(security.agent_secret)
    assert agent_token(secret, "h1") == token
    assert stat.S_IMODE(security.agent_secret.stat().st_mode) == 0o600
    # The secret survives a restart: tokens issued before stay valid.
    again = prepare_quic_security(tls_dir=tmp_path, hosts=["127.0.0.1"], now=NOW)
    assert again.authenticator.verify("h1", token)


def test_bad_tls_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        prepare_quic_security(
            tls_dir=tmp_path, hosts=["h"], now=NOW, certificate=tmp_path / "c.pem"
        )
    bad = tmp_path / "secret"
    bad.write_text("not hex\n")
    with pytest.raises(ConfigError, match="not hex"):
        load_secret(bad)
    bad.write_text("abcd\n")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        load_secret(bad)
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        AgentAuthenticator(b"short")
