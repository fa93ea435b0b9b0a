"""Fixtures of the policy/credentials/audit tests: real keys in real files under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import FleetKey, write_fleet_key

from edge_agent._fleetkeys import FleetKeyring
from edge_agent.credentials import CredentialsConfig, DeviceIdentity


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
