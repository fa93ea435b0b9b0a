"""The box's trust store: trusted public keys with roles, a threshold, a revocation list.

On disk it is one JSON document with a monotonically increasing ``version``. The local
administrator bootstraps it (``keys trust``) and may always revoke; a fleet-signed update
(key rotation) is accepted only when signed by ``threshold`` distinct current, non-revoked
keys, never lowers the version and never forgets a revocation. The policy and credentials
engineers reuse it with the ``policy`` and ``credentials`` roles.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.bundles._fsutil import atomic_write
from edge_agent.bundles._keys import key_id, load_public_key, public_key_pem, short_id
from edge_agent.errors import InvalidArgument, SignatureError

__all__ = [
    "ROLES",
    "TrustDocument",
    "TrustStore",
    "TrustUpdate",
    "TrustedKey",
    "sign_trust_update",
]

ROLES = frozenset({"bundle", "policy", "credentials"})
# Domain separation: a trust-update signature can never be replayed as anything else.
_UPDATE_CONTEXT = b"edge-agent trust-store update v1\n"
_MAX_DOC_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrustedKey:
    key_id: str
    roles: frozenset[str]
    public_key_pem: bytes
    label: str = ""

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return load_public_key(self.public_key_pem)


@dataclass(frozen=True, slots=True)
class TrustDocument:
    version: int = 0
    threshold: int = 1
    keys: tuple[TrustedKey, ...] = ()
    revoked: frozenset[str] = frozenset()

    def keys_for(self, role: str) -> dict[str, ec.EllipticCurvePublicKey]:
        """Trusted, non-revoked keys holding ``role``."""
        return {
            k.key_id: k.public_key
            for k in self.keys
            if role in k.roles and k.key_id not in self.revoked
        }

    def to_json(self) -> bytes:
        doc = {
            "format": 1,
            "version": self.version,
            "threshold": self.threshold,
            "keys": [
                {
                    "key_id": k.key_id,
                    "roles": sorted(k.roles),
                    "label": k.label,
                    "public_key": k.public_key_pem.decode(),
                }
                for k in sorted(self.keys, key=lambda k: k.key_id)
            ],
            "revoked": sorted(self.revoked),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> TrustDocument:
        if len(data) > _MAX_DOC_BYTES:
            raise InvalidArgument("trust_store", "document too large")
        try:
            raw = json.loads(data)
            if raw.get("format") != 1:
                raise InvalidArgument("trust_store", "unsupported format")
            keys = tuple(_parse_key(k) for k in raw["keys"])
            doc = cls(
                version=_int(raw["version"], "version"),
                threshold=_int(raw["threshold"], "threshold"),
                keys=keys,
                revoked=frozenset(str(r) for r in raw["revoked"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument("trust_store", "malformed document") from exc
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("trust_store", "duplicate key")
        if doc.threshold < 1:
            raise InvalidArgument("trust_store", "threshold must be >= 1")
        return doc


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"trust_store.{name}", "must be a non-negative integer")
    return value


def _parse_key(raw: dict[str, Any]) -> TrustedKey:
    pem = str(raw["public_key"]).encode()
    pub = load_public_key(pem, field="trust_store.keys.public_key")
    kid = key_id(pub)
    if raw["key_id"] != kid:
        raise InvalidArgument("trust_store.keys.key_id", "does not match the public key")
    roles = frozenset(str(r) for r in raw["roles"])
    if not roles or not roles <= ROLES:
        raise InvalidArgument("trust_store.keys.roles", f"must be a subset of {sorted(ROLES)}")
    return TrustedKey(kid, roles, public_key_pem(pub), str(raw.get("label", ""))[:100])


@dataclass(frozen=True, slots=True)
class TrustUpdate:
    """A proposed new trust document plus detached signatures (key id -> DER ECDSA)."""

    document: bytes
    signatures: tuple[tuple[str, bytes], ...] = ()

    def to_json(self) -> bytes:
        doc = {
            "document": base64.b64encode(self.document).decode(),
            "signatures": [
                {"key_id": k, "signature": base64.b64encode(s).decode()} for k, s in self.signatures
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> TrustUpdate:
        try:
            raw = json.loads(data)
            return cls(
                document=base64.b64decode(raw["document"], validate=True),
                signatures=tuple(
                    (str(s["key_id"]), base64.b64decode(s["signature"], validate=True))
                    for s in raw["signatures"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("trust_update", "malformed update file") from exc


def sign_trust_update(update: TrustUpdate, private_key: ec.EllipticCurvePrivateKey) -> TrustUpdate:
    kid = key_id(private_key.public_key())
    sig = private_key.sign(_UPDATE_CONTEXT + update.document, ec.ECDSA(hashes.SHA256()))
    others = tuple(s for s in update.signatures if s[0] != kid)
    return replace(update, signatures=(*others, (kid, sig)))


class TrustStore:
    """The trust document at ``path``; every change is an atomic, durable replace."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> TrustDocument:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return TrustDocument()
        return TrustDocument.from_json(data)

    def _save(self, doc: TrustDocument) -> TrustDocument:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, doc.to_json())
        return doc

    def trust(
        self, pem: bytes, roles: frozenset[str], label: str = "", threshold: int | None = None
    ) -> TrustDocument:
        """Local administration: add (or re-role) a key. Revoked keys stay revoked."""
        pub = load_public_key(pem)
        kid = key_id(pub)
        if not roles or not roles <= ROLES:
            raise InvalidArgument("roles", f"must be a subset of {sorted(ROLES)}")
        doc = self.load()
        if kid in doc.revoked:
            raise InvalidArgument("public_key", f"key {short_id(kid)} is revoked")
        keys = tuple(k for k in doc.keys if k.key_id != kid)
        keys += (TrustedKey(kid, roles, public_key_pem(pub), label),)
        return self._save(
            TrustDocument(doc.version + 1, threshold or doc.threshold, keys, doc.revoked)
        )

    def revoke(self, kid: str) -> TrustDocument:
        """Local administration may always tighten: revocation needs no signature."""
        doc = self.load()
        if len(kid) != 64 or any(c not in "0123456789abcdef" for c in kid):
            raise InvalidArgument("key_id", "must be the full 64-hex key id")
        return self._save(replace(doc, version=doc.version + 1, revoked=doc.revoked | {kid}))

    def apply_update(self, update: TrustUpdate) -> TrustDocument:
        """Rotation: accept a new document only when the CURRENT keys' threshold signed it."""
        current = self.load()
        new = TrustDocument.from_json(update.document)
        if new.version <= current.version:
            raise SignatureError(
                f"trust update version {new.version} is not newer than {current.version}"
            )
        if not current.revoked <= new.revoked:
            raise SignatureError("trust update drops a revocation")
        if any(k.key_id in new.revoked for k in new.keys):
            raise SignatureError("trust update trusts a revoked key")
        if len([k for k in new.keys if k.key_id not in new.revoked]) < new.threshold:
            raise SignatureError("trust update has fewer keys than its own threshold")
        signers = {k.key_id: k.public_key for k in current.keys if k.key_id not in current.revoked}
        good: set[str] = set()
        for kid, sig in update.signatures:
            key = signers.get(kid)
            if key is None:
                continue
            try:
                key.verify(sig, _UPDATE_CONTEXT + update.document, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            good.add(kid)
        if not signers or len(good) < current.threshold:
            raise SignatureError(
                f"trust update signed by {len(good)} current key(s), {current.threshold} required"
            )
        return self._save(new)
