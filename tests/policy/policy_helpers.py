"""Shared helpers of the policy tests (a module of its own: every test folder has a conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class FleetKey:
    private: ec.EllipticCurvePrivateKey
    private_path: Path
    public_path: Path


def write_fleet_key(folder: Path, name: str) -> FleetKey:
    key = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    priv = folder / f"{name}.key.pem"
    pub = folder / f"{name}.pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return FleetKey(key, priv, pub)
