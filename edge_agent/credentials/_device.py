"""The box's own key pair: X25519, generated at first start, used to open sealed envelopes.

One key serves as both the encryption key and the identity: the device id is derived from
it, so an envelope sealed to a device id can only be opened with that device's key. TLS
identity is a separate certificate owned by the server; this key never signs anything.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from edge_agent._statefiles import create_exclusive_bytes
from edge_agent.errors import ConfigError, CredentialError

__all__ = ["DeviceIdentity", "device_id_for", "load_device_public_key"]


def _fingerprint(public_key: x25519.X25519PublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def device_id_for(public_key: x25519.X25519PublicKey) -> str:
    """``ea-`` plus 32 hex digits (128 bits) of the public key's fingerprint."""
    return "ea-" + _fingerprint(public_key)[:32]


def load_device_public_key(data: bytes) -> x25519.X25519PublicKey:
    """A device public key as `edge-agent keys device` prints it (PEM)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise CredentialError("device public key is not a PEM public key") from exc
    if not isinstance(key, x25519.X25519PublicKey):
        raise CredentialError("device public key is not an X25519 key")
    return key


@dataclass(frozen=True, slots=True, repr=False)
class DeviceIdentity:
    private_key: x25519.X25519PrivateKey
    public_key: x25519.X25519PublicKey
    device_id: str
    key_fingerprint: str

    def __repr__(self) -> str:
        return f"DeviceIdentity(device_id={self.device_id!r})"

    @classmethod
    def from_private_key(cls, private_key: x25519.X25519PrivateKey) -> DeviceIdentity:
        public = private_key.public_key()
        return cls(private_key, public, device_id_for(public), _fingerprint(public))

    @classmethod
    def load_or_create(cls, path: Path) -> DeviceIdentity:
        """Load the device key at ``path``, generating it (0600, atomically) when absent.

        Two processes starting together both end up with the same key: the first complete
        file wins and the other process loads it.
        """
        if not path.exists():
            fresh = x25519.X25519PrivateKey.generate()
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            create_exclusive_bytes(path, pem, mode=0o600)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> DeviceIdentity:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ConfigError(f"device key {path.name}: cannot be read ({exc.strerror})") from exc
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"device key {path.name}: readable by group or others; chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"device key {path.name}: not a PEM private key") from exc
        if not isinstance(key, x25519.X25519PrivateKey):
            raise ConfigError(f"device key {path.name}: not an X25519 key")
        return cls.from_private_key(key)

    def public_key_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
