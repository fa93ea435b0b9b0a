"""Fleet signing keys: EC P-256 / ECDSA-SHA256 signed documents, shared by policy and credentials.

A key id is the hex SHA-256 of the public key's DER SubjectPublicKeyInfo (the same convention
as the bundle trust store), so one key file means one id everywhere.

A signed document is a small JSON object::

    {"format": "edge-agent-signed/v1", "kind": "policy", "key_id": "<hex>",
     "payload": "<base64>", "signature": "<base64 DER ECDSA>"}

The signature covers the format, the kind and the payload, so a credential envelope can
never be replayed as a policy (or the reverse) even when one fleet key signs both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import ConfigError, EdgeAgentError

__all__ = [
    "SIGNED_FORMAT",
    "FleetKeyring",
    "VerifiedDocument",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_document",
    "verify_document",
]

SIGNED_FORMAT = "edge-agent-signed/v1"
_MAX_DOCUMENT = 1 << 20  # policies and envelopes are a few KiB; refuse anything absurd


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _require_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, what: str) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{what}: fleet keys must be EC P-256 (secp256r1)")


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A fleet public key (PEM SubjectPublicKeyInfo); a PEM private key is also accepted."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"fleet key {path.name}: cannot be read ({exc.strerror})") from exc
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"fleet key {path.name}: not a PEM EC key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"fleet key {path.name}: not an EC key")
    _require_p256(key, f"fleet key {path.name}")
    return key


def load_private_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """A fleet private signing key (PEM, PKCS#8 or SEC1; encrypted ones need ``password``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"signing key {path.name}: cannot be read ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        # Never echo key material or the password: the message names the file only.
        if password is None:
            raise ConfigError(
                f"signing key {path.name}: it is encrypted; give its password"
            ) from exc
        raise ConfigError(
            f"signing key {path.name}: it is not encrypted; drop the password"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"signing key {path.name}: not a PEM private key, or the password is wrong"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"signing key {path.name}: not an EC private key")
    _require_p256(key, f"signing key {path.name}")
    return key


class FleetKeyring:
    """The fleet public keys this box trusts, by key id."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[ec.EllipticCurvePublicKey] = ()) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {key_id(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> FleetKeyring:
        return cls(load_public_key(p) for p in paths)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._keys.get(kid)


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    kind: str
    payload: bytes
    key_id: str


def _signed_message(kind: str, payload: bytes) -> bytes:
    return SIGNED_FORMAT.encode() + b"\x00" + kind.encode() + b"\x00" + payload


def sign_document(kind: str, payload: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    signature = private_key.sign(_signed_message(kind, payload), ec.ECDSA(hashes.SHA256()))
    doc = {
        "format": SIGNED_FORMAT,
        "kind": kind,
        "key_id": key_id(private_key.public_key()),
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _field(doc: Mapping[str, object], name: str, what: str, error: type[EdgeAgentError]) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise error(f"{what} is unsigned or malformed: missing {name}")
    return value


def _b64(value: str, name: str, what: str, error: type[EdgeAgentError]) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is malformed: {name} is not base64") from exc


def verify_document(
    blob: bytes,
    kind: str,
    keyring: FleetKeyring,
    *,
    error: type[EdgeAgentError],
    what: str,
) -> VerifiedDocument:
    """Check ``blob`` is a ``kind`` document signed by a key of ``keyring``.

    Every refusal raises ``error`` with a message naming ``what`` and the reason: unsigned,
    signed by an unknown key, signed for another kind, or tampered.
    """
    if len(blob) > _MAX_DOCUMENT:
        raise error(f"{what} is too large")
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} is unsigned: not a signed document") from exc
    if not isinstance(doc, dict) or doc.get("format") != SIGNED_FORMAT:
        raise error(f"{what} is unsigned: not a signed document")
    if "signature" not in doc or "key_id" not in doc:
        raise error(f"{what} is unsigned")
    if doc.get("kind") != kind:
        raise error(f"{what} was signed as a {str(doc.get('kind'))[:32]!r} document, not {kind}")
    kid = _field(doc, "key_id", what, error)
    payload = _b64(_field(doc, "payload", what, error), "payload", what, error)
    signature = _b64(_field(doc, "signature", what, error), "signature", what, error)
    public_key = keyring.get(kid)
    if public_key is None:
        raise error(f"{what} is signed by an unknown key {kid[:16]}")
    try:
        public_key.verify(signature, _signed_message(kind, payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise error(f"{what} is tampered: the signature does not verify") from exc
    return VerifiedDocument(kind=kind, payload=payload, key_id=kid)
