"""Sealed credential envelopes: an HF token encrypted to one device, signed by the fleet.

Sealing (operator side): ephemeral X25519 with the device's public key, HKDF-SHA256 to a
256-bit key, AES-256-GCM. The associated data is the canonical JSON of every metadata field
(device id, recipient key fingerprint, expiry, scope, ephemeral public key), so none of them
can be changed without the decryption failing, on top of the fleet signature over the whole
payload. Opening (box side) refuses, each with its own clear :class:`CredentialError`:
unsigned, unknown signer, tampered, sealed for another device, expired.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent._fleetkeys import FleetKeyring, sign_document, verify_document
from edge_agent.credentials._device import DeviceIdentity, _fingerprint, device_id_for
from edge_agent.credentials._secret import SecretToken
from edge_agent.errors import CredentialError

__all__ = [
    "CREDENTIAL_KIND",
    "CredentialScope",
    "EnvelopeInfo",
    "OpenedCredential",
    "inspect_envelope",
    "open_envelope",
    "seal_credential",
]

CREDENTIAL_KIND = "credential"
_ALG = "X25519-HKDF-SHA256-AES256GCM"
_HKDF_INFO = b"edge-agent credential envelope v1"
_WHAT = "credential envelope"


@dataclass(frozen=True, slots=True)
class CredentialScope:
    """What the fleet allows this credential to be used for (never loosened on the box)."""

    allowed_models: frozenset[str]
    allowed_providers: frozenset[str]  # empty: any provider the policy allows
    spend_cap_usd: float | None  # lifetime cap of this envelope; None: the policy budgets only
    bill_to: str | None


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """The signed, non-secret facts of an envelope (what `credentials inspect` shows)."""

    envelope_id: str
    device_id: str
    issued_at: datetime
    expires_at: datetime
    scope: CredentialScope
    label: str
    signer_key_id: str


@dataclass(frozen=True, slots=True)
class OpenedCredential:
    info: EnvelopeInfo
    token: SecretToken  # masked in every repr

    def expired(self, now: datetime) -> bool:
        return now >= self.info.expires_at


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return t.astimezone(UTC).isoformat(timespec="seconds")


def _derive_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_HKDF_INFO).derive(
        shared
    )


def _raw(public_key: x25519.X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_credential(
    token: SecretToken,
    *,
    device_public_key: x25519.X25519PublicKey,
    fleet_key: ec.EllipticCurvePrivateKey,
    expires_at: datetime,
    allowed_models: Sequence[str],
    allowed_providers: Sequence[str] = (),
    spend_cap_usd: float | None = None,
    bill_to: str | None = None,
    label: str = "",
    now: datetime | None = None,
) -> bytes:
    """The signed envelope bytes that `edge-agent credentials seal` writes."""
    issued = now or datetime.now(UTC)
    if expires_at <= issued:
        raise CredentialError("the envelope would already be expired")
    if spend_cap_usd is not None and not (math.isfinite(spend_cap_usd) and spend_cap_usd >= 0):
        raise CredentialError("spend cap must be a finite, non-negative amount")
    meta: dict[str, Any] = {
        "v": 1,
        "envelope_id": secrets.token_hex(16),
        "device_id": device_id_for(device_public_key),
        "recipient_key_id": _fingerprint(device_public_key),
        "issued_at": _iso(issued),
        "expires_at": _iso(expires_at),
        "allowed_models": sorted(set(allowed_models)),
        "allowed_providers": sorted(set(allowed_providers)),
        "spend_cap_usd": spend_cap_usd,
        "bill_to": bill_to,
        "label": label,
    }
    ephemeral = x25519.X25519PrivateKey.generate()
    epk = _raw(ephemeral.public_key())
    key = _derive_key(ephemeral.exchange(device_public_key), epk, _raw(device_public_key))
    nonce = secrets.token_bytes(12)
    enc: dict[str, Any] = {"alg": _ALG, "epk": base64.b64encode(epk).decode()}
    aad = _canonical({"meta": meta, "enc": enc})
    ciphertext = AESGCM(key).encrypt(nonce, token.reveal().encode(), aad)
    enc["nonce"] = base64.b64encode(nonce).decode()
    enc["ct"] = base64.b64encode(ciphertext).decode()
    payload = _canonical({"meta": meta, "enc": enc})
    return sign_document(CREDENTIAL_KIND, payload, fleet_key)


def _str_list(meta: dict[str, Any], name: str) -> frozenset[str]:
    value = meta.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CredentialError(f"{_WHAT} is malformed: {name}")
    return frozenset(value)


def _time(meta: dict[str, Any], name: str) -> datetime:
    value = meta.get(name)
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise CredentialError(f"{_WHAT} is malformed: {name}")
    return t


def _parse(payload: bytes, signer: str) -> tuple[EnvelopeInfo, dict[str, Any], dict[str, Any]]:
    try:
        body = json.loads(payload)
        meta, enc = body["meta"], body["enc"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialError(f"{_WHAT} is malformed") from exc
    if not isinstance(meta, dict) or not isinstance(enc, dict) or meta.get("v") != 1:
        raise CredentialError(f"{_WHAT} has an unsupported format version")
    cap = meta.get("spend_cap_usd")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float)):
        raise CredentialError(f"{_WHAT} is malformed: spend_cap_usd")
    bill_to = meta.get("bill_to")
    for name in ("envelope_id", "device_id", "recipient_key_id", "label"):
        if not isinstance(meta.get(name), str):
            raise CredentialError(f"{_WHAT} is malformed: {name}")
    info = EnvelopeInfo(
        envelope_id=meta["envelope_id"],
        device_id=meta["device_id"],
        issued_at=_time(meta, "issued_at"),
        expires_at=_time(meta, "expires_at"),
        scope=CredentialScope(
            allowed_models=_str_list(meta, "allowed_models"),
            allowed_providers=_str_list(meta, "allowed_providers"),
            spend_cap_usd=None if cap is None else float(cap),
            bill_to=bill_to if isinstance(bill_to, str) and bill_to else None,
        ),
        label=meta["label"],
        signer_key_id=signer,
    )
    return info, meta, enc


def inspect_envelope(blob: bytes, keyring: FleetKeyring) -> EnvelopeInfo:
    """Verify the fleet signature and return the metadata; decrypts nothing."""
    doc = verify_document(blob, CREDENTIAL_KIND, keyring, error=CredentialError, what=_WHAT)
    return _parse(doc.payload, doc.key_id)[0]


def open_envelope(
    blob: bytes, identity: DeviceIdentity, keyring: FleetKeyring, *, now: datetime
) -> OpenedCredential:
    doc = verify_document(blob, CREDENTIAL_KIND, keyring, error=CredentialError, what=_WHAT)
    info, meta, enc = _parse(doc.payload, doc.key_id)
    if info.device_id != identity.device_id or meta["recipient_key_id"] != identity.key_fingerprint:
        raise CredentialError(f"{_WHAT} was sealed for another device ({info.device_id[:19]})")
    if now >= info.expires_at:
        raise CredentialError(f"{_WHAT} expired at {_iso(info.expires_at)}")
    if enc.get("alg") != _ALG:
        raise CredentialError(f"{_WHAT} uses an unsupported algorithm")
    try:
        epk = base64.b64decode(enc["epk"], validate=True)
        nonce = base64.b64decode(enc["nonce"], validate=True)
        ciphertext = base64.b64decode(enc["ct"], validate=True)
        peer = x25519.X25519PublicKey.from_public_bytes(epk)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise CredentialError(f"{_WHAT} is malformed: enc") from exc
    aad = _canonical({"meta": meta, "enc": {"alg": enc["alg"], "epk": enc["epk"]}})
    key = _derive_key(identity.private_key.exchange(peer), epk, _raw(identity.public_key))
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
        token = SecretToken(plaintext.decode())
    except (InvalidTag, UnicodeDecodeError, ValueError) as exc:
        raise CredentialError(
            f"{_WHAT} is tampered: it does not decrypt with this device's key"
        ) from exc
    return OpenedCredential(info=info, token=token)
