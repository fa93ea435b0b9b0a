"""Fixtures of the policy/credentials/audit tests: real keys in real files under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent._fleetkeys import FleetKeyring
from edge_agent.credentials import CredentialsConfig, DeviceIdentity


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


@pytest.fixture
def fleet(tmp_path: Path) -> FleetKey:
    return write_fleet_key(tmp_path / "fleet", "ops")


@pytest.fixture
def rogue(tmp_path: Path) -> FleetKey:
    return write_fleet_key(tmp_path / "rogue", "rogue")


@pytest.fixture
def keyring(fleet: FleetKey) -> FleetKeyring:
    return FleetKeyring.from_paths([fleet.public_path])


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def cred_config(state_dir: Path, fleet: FleetKey) -> CredentialsConfig:
    base = CredentialsConfig.for_state_dir(state_dir)
    return CredentialsConfig(
        trusted_keys=(fleet.public_path,),
        device_key=base.device_key,
        envelope_path=base.envelope_path,
    )


@pytest.fixture
def device(cred_config: CredentialsConfig) -> DeviceIdentity:
    return DeviceIdentity.load_or_create(cred_config.device_key)


MakeDevice = Callable[[str], DeviceIdentity]
