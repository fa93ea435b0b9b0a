"""The box's own TLS identity: an EC P-256 key and a self-signed certificate.

Created at first start, reused across restarts, and re-issued (same key) when it nears
expiry or no longer names the box's host name and addresses. Clients trust it by pinning its
SHA-256 fingerprint, which mDNS publishes and ``edge-agent status`` shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.errors import ConfigError
from edge_agent.tls._config import TlsConfig
from edge_agent.tls._files import LEAF_KEY_USAGE, write_atomic

__all__ = [
    "DeviceCertificate",
    "certificate_fingerprint",
    "ensure_device_certificate",
    "format_fingerprint",
    "normalize_fingerprint",
]


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    """The loaded device certificate; ``key_pem`` is kept out of the repr."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str  # lowercase hex, no colons
    not_after: dt.datetime
    names: tuple[str, ...]  # DNS names and IP addresses in the SAN
    created: bool  # True when this start created or re-issued it

    def __repr__(self) -> str:
        return f"DeviceCertificate(fingerprint={self.fingerprint!r}, not_after={self.not_after})"

    @property
    def fingerprint_colons(self) -> str:
        return format_fingerprint(self.fingerprint)

    @property
    def target_name(self) -> str:
        """A DNS name in the certificate, for ``grpc.ssl_target_name_override``."""
        return self.names[0]


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the DER certificate, lowercase hex without colons."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).hexdigest()


def format_fingerprint(fingerprint: str) -> str:
    """``AB:CD:…`` form of a fingerprint, as browsers and openssl show it."""
    fp = normalize_fingerprint(fingerprint)
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()


def normalize_fingerprint(fingerprint: str) -> str:
    """Accept ``AB:CD…``, ``abcd…`` or ``sha256:abcd…``; return 64 lowercase hex digits."""
    fp = fingerprint.strip().lower()
    fp = fp.removeprefix("sha256:").replace(":", "")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits (colons optional)")
    return fp


def _wanted_names(config: TlsConfig) -> tuple[list[str], list[str]]:
    host = (config.hostname or socket.gethostname()).split(".")[0] or "edge-agent"
    dns = [host, f"{host}.local", "localhost"]
    ips = ["127.0.0.1", "::1"]
    for extra in config.addresses:
        try:
            ips.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            dns.append(extra.lower())
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def ensure_device_certificate(
    config: TlsConfig, *, now: dt.datetime | None = None
) -> DeviceCertificate:
    """Load the device certificate, creating or re-issuing it when needed."""
    now = now or dt.datetime.now(dt.UTC)
    dns, ips = _wanted_names(config)
    key = _load_or_create_key(config.key_file)
    cert = _load_cert(config.cert_file)
    created = False
    if cert is None or not _still_good(cert, key, dns, ips, now, config.renew_before_days):
        cert = _issue(key, dns, ips, now, config.validity_days)
        write_atomic(config.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        created = True
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DeviceCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_after=cert.not_valid_after_utc,
        names=(*dns, *ips),
        created=created,
    )


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, 0o600)
        return key
    except OSError as exc:
        raise ConfigError(f"tls.key_file: cannot read the device key ({exc.strerror})") from exc
    if path.stat().st_mode & 0o077:
        raise ConfigError("tls.key_file: the device key is readable by others; chmod 600 it")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("tls.key_file: not an unencrypted PEM private key") from exc
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ConfigError("tls.key_file: the device key must be an EC key")
    return loaded


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        # A torn or foreign file: re-issue from the key rather than refuse to start.
        return None


def _still_good(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    dns: list[str],
    ips: list[str],
    now: dt.datetime,
    renew_before_days: int,
) -> bool:
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - now < dt.timedelta(days=renew_before_days):
        return False
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and {str(ipaddress.ip_address(i)) for i in ips} <= have_ips


def _issue(
    key: ec.EllipticCurvePrivateKey, dns: list[str], ips: list[str], now: dt.datetime, days: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
