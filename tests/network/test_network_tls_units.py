"""The TLS pieces on their own: config, device certificate lifecycle, listen plan,
authenticator decisions, rate limiter arithmetic."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from network_helpers import Pki

from edge_agent._tomlreader import TableReader
from edge_agent.errors import ConfigError, PermissionDenied, Unauthenticated
from edge_agent.tls import (
    AuthConfig,
    Authenticator,
    ClientCertVerifier,
    Identity,
    Listener,
    RateLimit,
    RateLimiter,
    TlsConfig,
    bearer_token,
    certificate_fingerprint,
    ensure_device_certificate,
    format_fingerprint,
    init_ca,
    issue_client_certificate,
    listen_plan,
    new_token,
    normalize_fingerprint,
    parse_auth_config,
    parse_tls_config,
    peer_is_loopback,
)


def _reader(table: dict[str, object], section: str) -> TableReader:
    return TableReader(table, source="agent.toml", prefix=f"{section}.")


# -- config -------------------------------------------------------------------------------


def test_empty_sections_give_working_defaults(tmp_path: Path) -> None:
    tls = parse_tls_config(_reader({}, "tls"), state_dir=tmp_path)
    assert tls.cert_file == tmp_path / "tls" / "device.pem"
    assert tls.key_file == tmp_path / "tls" / "device.key"
    assert not tls.allow_plaintext
    assert tls.admin_socket == Path("/run/edge-agent/admin.sock")
    auth = parse_auth_config(_reader({}, "auth"))
    assert auth == AuthConfig()


def test_tls_paths_are_relative_to_the_state_dir(tmp_path: Path) -> None:
    tls = parse_tls_config(
        _reader({"client_ca_files": ["trust/ops.pem", "/etc/x.pem"], "mtls_port": 0}, "tls"),
        state_dir=tmp_path,
    )
    assert tls.client_ca_files == (tmp_path / "trust" / "ops.pem", Path("/etc/x.pem"))
    with pytest.raises(ConfigError, match=r"tls\.renew_before_days"):
        parse_tls_config(
            _reader({"validity_days": 10, "renew_before_days": 10}, "tls"), state_dir=tmp_path
        )
    with pytest.raises(ConfigError, match=r"unknown key 'tls\.allow_plain'"):
        parse_tls_config(_reader({"allow_plain": True}, "tls"), state_dir=tmp_path)


def test_auth_tokens_and_rates_parse_and_validate() -> None:
    tok = new_token()
    auth = parse_auth_config(
        _reader(
            {
                "tokens": [{"name": "kiosk", "role": "client", "sha256": tok.sha256.upper()}],
                "rate_limits": {"client": {"requests_per_s": 2.5, "burst": 5}},
                "revoked_cert_serials": ["0A:FF"],
            },
            "auth",
        )
    )
    assert auth.tokens[0].sha256 == tok.sha256
    assert auth.client_rate == RateLimit(2.5, 5)
    assert auth.operator_rate == AuthConfig().operator_rate
    assert auth.revoked_cert_serials == frozenset({0x0AFF})

    def bad(table: dict[str, object], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            parse_auth_config(_reader(table, "auth"))

    entry = {"name": "ops", "role": "operator", "sha256": tok.sha256}
    bad({"tokens": [entry]}, r"auth\.tokens\[0\]\.role: operator tokens need")
    assert parse_auth_config(_reader({"tokens": [entry], "allow_operator_tokens": True}, "auth"))
    bad({"tokens": [{"name": "k", "sha256": "12"}]}, r"tokens\[0\]\.sha256")
    bad({"tokens": [{"name": "k", "sha256": tok.sha256, "token": "x"}]}, "unknown key")
    bad(
        {"tokens": [{"name": "a", "sha256": tok.sha256}, {"name": "b", "sha256": tok.sha256}]},
        "configured twice",
    )
    bad({"tokens": "x"}, "array of tables")
    bad({"rate_limits": {"client": {"requests_per_s": 1.0, "burst": 0}}}, "burst")
    bad({"rate_limits": {"guest": {}}}, "unknown key 'auth.rate_limits.guest'")
    bad({"revoked_cert_serials": ["zz"]}, "not a hex serial")


# -- device certificate -------------------------------------------------------------------


def _tls(tmp_path: Path, **changes: object) -> TlsConfig:
    base = TlsConfig(
        cert_file=tmp_path / "tls" / "device.pem",
        key_file=tmp_path / "tls" / "device.key",
        hostname="box7",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_device_certificate_is_created_once_and_reused(tmp_path: Path) -> None:
    config = _tls(tmp_path, addresses=("192.0.2.2", "box7.factory.example"))
    first = ensure_device_certificate(config)
    assert first.created
    assert stat.S_IMODE(os.stat(config.key_file).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "box7",
        "box7.local",
        "box7.factory.example",
    }
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} >= {
        "127.0.0.1",
        "::1",
        "192.0.2.2",
    }
    assert first.fingerprint == certificate_fingerprint(first.cert_pem)
    assert first.key_pem.decode() not in repr(first)

    again = ensure_device_certificate(config)
    assert not again.created
    assert again.fingerprint == first.fingerprint
    assert not list(config.cert_file.parent.glob(".*.tmp"))


def test_device_certificate_renews_near_expiry_and_on_new_names(tmp_path: Path) -> None:
    config = _tls(tmp_path)
    first = ensure_device_certificate(config)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=config.validity_days - 10)
    renewed = ensure_device_certificate(config, now=later)
    assert renewed.created
    assert renewed.fingerprint != first.fingerprint
    assert renewed.not_after > first.not_after
    old_key = x509.load_pem_x509_certificate(first.cert_pem).public_key()
    assert x509.load_pem_x509_certificate(renewed.cert_pem).public_key() == old_key

    moved = ensure_device_certificate(dataclasses.replace(config, addresses=("10.1.2.3",)))
    assert moved.created
    assert "10.1.2.3" in moved.names


def test_torn_certificate_is_reissued_and_an_open_key_is_refused(tmp_path: Path) -> None:
    config = _tls(tmp_path)
    ensure_device_certificate(config)
    config.cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage")
    assert ensure_device_certificate(config).created
    os.chmod(config.key_file, 0o644)
    with pytest.raises(ConfigError, match="readable by others") as info:
        ensure_device_certificate(config)
    assert str(tmp_path) not in str(info.value)


def test_fingerprint_matches_openssl(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    device = ensure_device_certificate(_tls(tmp_path))
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            str(_tls(tmp_path).cert_file),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip().split("=", 1)[1] == device.fingerprint_colons
    assert normalize_fingerprint(device.fingerprint_colons) == device.fingerprint
    assert format_fingerprint("sha256:" + device.fingerprint) == device.fingerprint_colons
    with pytest.raises(ValueError, match="64 hex"):
        normalize_fingerprint("abcd")


# -- listen plan -----------------------------------------------------------------------


def test_listen_plan_tls_on_lan_plaintext_on_loopback(tmp_path: Path) -> None:
    tls = _tls(tmp_path, client_ca_files=(tmp_path / "ca.pem",), mtls_port=50052)
    plan = listen_plan(tls, ["127.0.0.1:50051", "[::1]:50051", "0.0.0.0:50051", "[fd00::2]:50051"])
    assert plan == [
        Listener("127.0.0.1:50051", "plaintext"),
        Listener("[::1]:50051", "plaintext"),
        Listener("0.0.0.0:50051", "tls"),
        Listener("0.0.0.0:50052", "mtls"),
        Listener("[fd00::2]:50051", "tls"),
        Listener("[fd00::2]:50052", "mtls"),
        Listener(f"unix:{tls.admin_socket}", "unix"),
    ]
    no_ca = dataclasses.replace(tls, client_ca_files=(), admin_socket_enabled=False)
    assert listen_plan(no_ca, ["0.0.0.0:1"]) == [Listener("0.0.0.0:1", "tls")]
    strict = dataclasses.replace(tls, require_client_cert=True, admin_socket_enabled=False)
    assert listen_plan(strict, ["0.0.0.0:1"]) == [Listener("0.0.0.0:1", "mtls")]
    opened = dataclasses.replace(tls, allow_plaintext=True, admin_socket_enabled=False)
    assert listen_plan(opened, ["0.0.0.0:1"]) == [Listener("0.0.0.0:1", "plaintext")]
    with pytest.raises(ConfigError, match="needs a port"):
        listen_plan(tls, ["0.0.0.0"])


# -- authenticator ----------------------------------------------------------------------


def test_authenticator_verifies_certificates_itself(pki: Pki, tmp_path: Path) -> None:
    authn = Authenticator.from_config(pki.tls, AuthConfig())
    ctx = {"x509_pem_cert": [pki.operator.cert_pem]}
    assert authn.authenticate(peer="ipv4:192.0.2.9:4000", auth_context=ctx, metadata=()) == (
        Identity("fleet-console", "operator", "cert")
    )
    rogue = {"x509_pem_cert": [pki.rogue_operator.cert_pem]}
    with pytest.raises(Unauthenticated, match="not trusted"):
        authn.authenticate(peer="ipv4:192.0.2.9:4000", auth_context=rogue, metadata=())
    # A certificate from the trusted CA without an edge-agent role grants nothing.
    ca = init_ca(tmp_path / "other")
    verifier = ClientCertVerifier([(tmp_path / "other" / "ca.pem").read_bytes()])
    cert = issue_client_certificate(ca, name="x", role="client")
    assert verifier.identify(cert.cert_pem).role == "client"
    expired_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(Unauthenticated):
        verifier.identify(cert.cert_pem, now=expired_at)
    with pytest.raises(Unauthenticated):
        ClientCertVerifier([]).identify(cert.cert_pem)


def test_certificate_without_a_role_is_denied(pki: Pki) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nobody")]))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:other:x")]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca.key.public_key()), False
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PermissionDenied, match="no valid edge-agent role"):
        ClientCertVerifier([pki.ca.cert.public_bytes(serialization.Encoding.PEM)]).identify(pem)


def test_peer_and_header_parsing() -> None:
    assert peer_is_loopback("ipv4:127.0.0.1:5000")
    assert peer_is_loopback("ipv6:[::1]:5000")
    assert peer_is_loopback("ipv6:[::ffff:127.0.0.1]:5000")
    assert not peer_is_loopback("ipv4:192.0.2.2:5000")
    assert not peer_is_loopback("ipv6:[fe80::1%eth0]:5000")
    assert not peer_is_loopback("unix:/run/x.sock")
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("x-other", "1")]) is None
    with pytest.raises(Unauthenticated):
        bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")])


def test_unix_peer_is_admin_and_anonymous_lan_is_nobody(pki: Pki) -> None:
    authn = Authenticator.from_config(pki.tls, AuthConfig())
    admin = authn.authenticate(peer="unix:/run/edge-agent/admin.sock", auth_context={}, metadata=())
    assert admin == Identity("local-admin", "admin", "unix")
    assert authn.authenticate(peer="ipv4:192.0.2.7:1", auth_context={}, metadata=()) is None
    # Loopback is no trust boundary by default: any local user reaches it.
    assert authn.authenticate(peer="ipv4:127.0.0.1:1", auth_context={}, metadata=()) is None
    demo = Authenticator.from_config(pki.tls, AuthConfig(allow_anonymous_loopback=True))
    anon = demo.authenticate(peer="ipv4:127.0.0.1:1", auth_context={}, metadata=())
    assert anon is not None
    assert anon.role == "client"


# -- rate limiter -----------------------------------------------------------------------


def test_rate_limiter_buckets_per_identity() -> None:
    now = [100.0]
    auth = AuthConfig(client_rate=RateLimit(2.0, 3), admin_rate=RateLimit(0.0, 0))
    limiter = RateLimiter(auth, clock=lambda: now[0])
    alice = Identity("alice", "client", "token")
    bob = Identity("bob", "client", "token")
    assert [limiter.check(alice) for _ in range(3)] == [0, 0, 0]
    assert limiter.check(alice) == 500  # one token refills in 1/2 s
    assert limiter.check(bob) == 0
    now[0] += 0.25
    assert limiter.check(alice) == 250
    now[0] += 0.25
    assert limiter.check(alice) == 0
    admin = Identity("local-admin", "admin", "unix")
    assert all(limiter.check(admin) == 0 for _ in range(1000))


def test_rate_limiter_memory_is_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(
        AuthConfig(client_rate=RateLimit(1.0, 1)), clock=lambda: now[0], max_clients=100
    )
    for i in range(1000):
        limiter.check(Identity(f"c{i}", "client", "cert"))
    assert len(limiter._buckets) <= 100


async def test_binding_a_busy_port_is_a_config_error(pki: Pki) -> None:
    import socket

    import grpc

    from edge_agent.tls import add_listeners

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        with pytest.raises(ConfigError, match="cannot listen"):
            add_listeners(server, [Listener(f"127.0.0.1:{port}", "tls")], pki.tls, pki.device)
        await server.stop(None)
