"""EC P-256 signing keys: generation to PEM files, loading, and key ids."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import InvalidArgument

__all__ = [
    "KeyPair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
    "short_id",
]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where a generated key pair was written; the private key itself is never held here."""

    private_key_path: Path
    public_key_path: Path
    key_id: str


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex sha256 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def short_id(kid: str) -> str:
    return kid[:16]


def public_key_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes, *, field: str = "public_key") -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM; anything else is refused."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(field, "not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidArgument(field, "only EC P-256 keys are accepted")
    return key


def load_private_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password)
    except (ValueError, TypeError) as exc:
        # cryptography's message may mention the password; keep ours generic.
        raise InvalidArgument("private_key", "cannot load the key (wrong password?)") from exc
    except OSError as exc:
        raise InvalidArgument("private_key", "cannot read the key file") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidArgument("private_key", "only EC P-256 keys are accepted")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # umask must not widen nor narrow it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(out_dir: Path, name: str, *, password: bytes | None = None) -> KeyPair:
    """Write ``<name>.key`` (0600, PKCS#8, encrypted with a password) and ``<name>.pub``."""
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument("name", "must be a plain file name")
    out_dir.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    priv_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise InvalidArgument("name", f"{p.name} already exists; refusing to overwrite a key")
    _write_new(
        priv_path,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ),
        0o600,
    )
    _write_new(pub_path, public_key_pem(private.public_key()), 0o644)
    return KeyPair(priv_path, pub_path, key_id(private.public_key()))
