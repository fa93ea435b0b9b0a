"""The operator-held client CA: create it, issue role-bearing client certificates, verify them.

A client certificate names its holder in the subject CN and its role in a SAN URI
``urn:edge-agent:role:<role>`` (the OU repeats the role for humans; only the SAN counts).
The box verifies presented certificates itself against the configured CAs, because gRPC
only verifies client certificates when it *requires* them, and here they are optional.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from edge_agent.errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from edge_agent.tls._files import LEAF_KEY_USAGE, write_atomic
from edge_agent.tls._identity import Identity, Role

__all__ = [
    "ROLE_URI_PREFIX",
    "CertificateAuthority",
    "ClientCertVerifier",
    "IssuedCertificate",
    "init_ca",
    "issue_client_certificate",
    "load_ca",
]

ROLE_URI_PREFIX = "urn:edge-agent:role:"
_CLIENT_ROLES: tuple[Role, ...] = ("client", "operator")


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.cert.subject.rfc4514_string()!r})"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "IssuedCertificate(<cert>, <key hidden>)"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(
    directory: Path, *, name: str = "edge-agent operator CA", days: int = 3650
) -> CertificateAuthority:
    """Create ``ca.key`` (0600) and ``ca.pem`` in ``directory``; refuse to overwrite."""
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    if key_path.exists() or cert_path.exists():
        raise InvalidArgument("ca-dir", "already holds a CA; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    write_atomic(key_path, _pem_key(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CertificateAuthority(cert=cert, key=key)


def load_ca(directory: Path) -> CertificateAuthority:
    """Load ``ca.key`` and ``ca.pem`` written by :func:`init_ca`."""
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError as exc:
        raise ConfigError("ca-dir: no CA there (run `edge-agent tls init-ca`)") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError("ca-dir: ca.pem/ca.key are not a PEM certificate and key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError("ca-dir: ca.key does not belong to ca.pem")
    return CertificateAuthority(cert=cert, key=key)


def issue_client_certificate(
    ca: CertificateAuthority, *, name: str, role: Role, days: int = 397
) -> IssuedCertificate:
    """A client certificate for ``name`` with ``role``, signed by ``ca``."""
    if role not in _CLIENT_ROLES:
        raise InvalidArgument("role", "must be client or operator")
    if not name or len(name) > 64:
        raise InvalidArgument("name", "must be 1-64 characters")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem_key(key)
    )


class ClientCertVerifier:
    """Verifies a presented client certificate chain and reads the identity from it.

    Successful verifications are cached per certificate chain until the chain's earliest
    expiry (path validation costs more than a whole call otherwise); the cache lives as
    long as this verifier, so a config reload (new CAs, new revocations) starts afresh.
    """

    _CACHE_SIZE = 1024

    def __init__(self, ca_pems: list[bytes], *, revoked_serials: frozenset[int] = frozenset()):
        roots: list[x509.Certificate] = []
        for pem in ca_pems:
            try:
                roots.extend(x509.load_pem_x509_certificates(pem))
            except ValueError as exc:
                raise ConfigError("tls.client_ca_files: not a PEM certificate file") from exc
        self._store = Store(roots) if roots else None
        self._revoked = revoked_serials
        self._cache: OrderedDict[bytes, tuple[Identity, dt.datetime, dt.datetime]] = OrderedDict()

    @classmethod
    def from_files(
        cls, paths: tuple[Path, ...], *, revoked_serials: frozenset[int] = frozenset()
    ) -> ClientCertVerifier:
        pems: list[bytes] = []
        for path in paths:
            try:
                pems.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(
                    f"tls.client_ca_files: cannot read {path.name} ({exc.strerror})"
                ) from exc
        return cls(pems, revoked_serials=revoked_serials)

    @property
    def trusts_anyone(self) -> bool:
        return self._store is not None

    def identify(
        self, leaf_pem: bytes, chain_pem: bytes = b"", *, now: dt.datetime | None = None
    ) -> Identity:
        """The identity in a verified certificate; Unauthenticated/PermissionDenied otherwise."""
        if self._store is None:
            raise Unauthenticated("client certificates are not accepted by this box")
        at = now or dt.datetime.now(dt.UTC)
        key = hashlib.sha256(leaf_pem + b"\0" + chain_pem).digest()
        hit = self._cache.get(key)
        if hit is not None and hit[1] <= at < hit[2]:
            self._cache.move_to_end(key)
            return hit[0]
        identity, not_before, not_after = self._verify(leaf_pem, chain_pem, at)
        self._cache[key] = (identity, not_before, not_after)
        if len(self._cache) > self._CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    def _verify(
        self, leaf_pem: bytes, chain_pem: bytes, now: dt.datetime
    ) -> tuple[Identity, dt.datetime, dt.datetime]:
        assert self._store is not None
        try:
            leaf = x509.load_pem_x509_certificate(leaf_pem)
            others = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        except ValueError as exc:
            raise Unauthenticated("the client certificate could not be parsed") from exc
        intermediates = [c for c in others if c != leaf]
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise Unauthenticated("the client certificate is not trusted by this box") from exc
        if any(cert.serial_number in self._revoked for cert in verified.chain):
            raise Unauthenticated("the client certificate was revoked")
        roles = [
            g.value[len(ROLE_URI_PREFIX) :]
            for g in verified.subjects or []
            if isinstance(g, x509.UniformResourceIdentifier) and g.value.startswith(ROLE_URI_PREFIX)
        ]
        if len(roles) != 1 or roles[0] not in _CLIENT_ROLES:
            raise PermissionDenied("the client certificate carries no valid edge-agent role")
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = cns[0].value if cns else ""
        name = cn if isinstance(cn, str) and cn else f"serial-{leaf.serial_number:x}"
        role: Role = "operator" if roles[0] == "operator" else "client"
        not_before = max(c.not_valid_before_utc for c in verified.chain)
        not_after = min(c.not_valid_after_utc for c in verified.chain)
        return Identity(name=name, role=role, method="cert"), not_before, not_after
