"""Device identity and sealed envelopes: every refusal of the brief, with real keys and files."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from policy_helpers import FleetKey

from edge_agent._fleetkeys import FleetKeyring, key_id, sign_document
from edge_agent.credentials import (
    CredentialsConfig,
    CredentialStore,
    DeviceIdentity,
    SecretToken,
    inspect_envelope,
    open_envelope,
    seal_credential,
)
from edge_agent.errors import ConfigError, CredentialError

TOKEN = "hf_SealedTestTokenAbCdEf0123456789xyz"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _seal(device: DeviceIdentity, fleet: FleetKey, **kw: object) -> bytes:
    args: dict[str, object] = {
        "device_public_key": device.public_key,
        "fleet_key": fleet.private,
        "expires_at": NOW + timedelta(days=30),
        "allowed_models": ["meta-llama/Llama-3.3-70B-Instruct"],
        "allowed_providers": ["together"],
        "spend_cap_usd": 25.0,
        "bill_to": "clinic-org",
        "label": "clinic-a",
        "now": NOW,
    }
    args.update(kw)
    return seal_credential(SecretToken(TOKEN), **args)  # type: ignore[arg-type]


def test_device_key_created_0600_and_stable(state_dir: Path) -> None:
    path = state_dir / "device" / "device_key.pem"
    first = DeviceIdentity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = DeviceIdentity.load_or_create(path)
    assert again.device_id == first.device_id
    assert first.device_id.startswith("ea-")
    assert len(first.device_id) == 35
    assert "BEGIN PUBLIC KEY" in first.public_key_pem()
    assert "PRIVATE" not in repr(first)
    # no temp files are left beside the key
    assert sorted(p.name for p in path.parent.iterdir()) == ["device_key.pem"]


def test_device_key_concurrent_first_start_agrees(state_dir: Path) -> None:
    path = state_dir / "device" / "device_key.pem"
    code = (
        "import sys; from pathlib import Path; "
        "from edge_agent.credentials import DeviceIdentity; "
        "print(DeviceIdentity.load_or_create(Path(sys.argv[1])).device_id)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1
    assert DeviceIdentity.load(path).device_id in ids


def test_device_key_readable_by_others_is_refused(state_dir: Path) -> None:
    path = state_dir / "device" / "device_key.pem"
    DeviceIdentity.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        DeviceIdentity.load(path)


def test_seal_then_open_roundtrip(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    blob = _seal(device, fleet)
    assert TOKEN.encode() not in blob
    opened = open_envelope(blob, device, keyring, now=NOW)
    assert opened.token.reveal() == TOKEN
    info = opened.info
    assert info.device_id == device.device_id
    assert info.signer_key_id == key_id(fleet.private.public_key())
    assert info.scope.allowed_models == {"meta-llama/Llama-3.3-70B-Instruct"}
    assert info.scope.allowed_providers == {"together"}
    assert info.scope.spend_cap_usd == 25.0
    assert info.scope.bill_to == "clinic-org"
    assert TOKEN not in repr(opened)
    assert TOKEN not in str(opened)
    assert inspect_envelope(blob, keyring) == info


def test_unsigned_envelope_refused(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    doc = json.loads(_seal(device, fleet))
    del doc["signature"]
    with pytest.raises(CredentialError, match="unsigned"):
        open_envelope(json.dumps(doc).encode(), device, keyring, now=NOW)
    # the bare payload (no signed wrapper at all)
    with pytest.raises(CredentialError, match="unsigned"):
        open_envelope(base64.b64decode(doc["payload"]), device, keyring, now=NOW)


def test_unknown_signer_refused(
    device: DeviceIdentity, rogue: FleetKey, keyring: FleetKeyring
) -> None:
    with pytest.raises(CredentialError, match="unknown key"):
        open_envelope(_seal(device, rogue), device, keyring, now=NOW)


def test_forged_key_id_refused(
    device: DeviceIdentity, fleet: FleetKey, rogue: FleetKey, keyring: FleetKeyring
) -> None:
    doc = json.loads(_seal(device, rogue))
    doc["key_id"] = key_id(fleet.private.public_key())  # claim the trusted key
    with pytest.raises(CredentialError, match="tampered"):
        open_envelope(json.dumps(doc).encode(), device, keyring, now=NOW)


def test_tampered_payload_refused(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    doc = json.loads(_seal(device, fleet))
    body = json.loads(base64.b64decode(doc["payload"]))
    body["meta"]["spend_cap_usd"] = 1e9
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(CredentialError, match="tampered"):
        open_envelope(json.dumps(doc).encode(), device, keyring, now=NOW)


def test_metadata_bound_to_ciphertext_even_if_resigned(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    """A fleet signature over edited metadata still fails: the metadata is the AEAD's AAD."""
    doc = json.loads(_seal(device, fleet))
    body = json.loads(base64.b64decode(doc["payload"]))
    body["meta"]["allowed_models"] = ["some/other-model"]
    resigned = sign_document("credential", json.dumps(body).encode(), fleet.private)
    with pytest.raises(CredentialError, match="does not decrypt"):
        open_envelope(resigned, device, keyring, now=NOW)


def test_expired_refused(device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring) -> None:
    blob = _seal(device, fleet, expires_at=NOW + timedelta(hours=1))
    open_envelope(blob, device, keyring, now=NOW + timedelta(minutes=59))
    with pytest.raises(CredentialError, match="expired"):
        open_envelope(blob, device, keyring, now=NOW + timedelta(hours=1))


def test_other_device_refused(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring, tmp_path: Path
) -> None:
    other = DeviceIdentity.load_or_create(tmp_path / "other" / "device_key.pem")
    blob = _seal(other, fleet)
    with pytest.raises(CredentialError, match="another device"):
        open_envelope(blob, device, keyring, now=NOW)


def test_policy_document_not_accepted_as_envelope(
    device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    doc = json.loads(_seal(device, fleet))
    as_policy = sign_document("policy", base64.b64decode(doc["payload"]), fleet.private)
    with pytest.raises(CredentialError, match="not credential"):
        open_envelope(as_policy, device, keyring, now=NOW)


def test_store_install_persists_and_provides_token(
    cred_config: CredentialsConfig, device: DeviceIdentity, fleet: FleetKey, keyring: FleetKeyring
) -> None:
    clock = [NOW]
    store = CredentialStore(cred_config, device, keyring, clock=lambda: clock[0])
    provider = store.token_provider()
    assert provider() is None
    with pytest.raises(CredentialError):
        store.secret_provider()()
    store.install(_seal(device, fleet, expires_at=NOW + timedelta(days=1)))
    assert stat.S_IMODE(cred_config.envelope_path.stat().st_mode) == 0o600
    assert provider() == TOKEN
    assert store.secret_provider()() == SecretToken(TOKEN)
    # a restart finds it in the state dir
    fresh = CredentialStore(cred_config, device, keyring, clock=lambda: clock[0])
    info = fresh.load()
    assert info is not None
    assert fresh.token_provider()() == TOKEN
    # past expiry the same provider stops handing it out
    clock[0] = NOW + timedelta(days=2)
    assert provider() is None
    assert store.scope() is None


def test_store_refused_push_keeps_previous(
    cred_config: CredentialsConfig,
    device: DeviceIdentity,
    rogue: FleetKey,
    fleet: FleetKey,
    keyring: FleetKeyring,
) -> None:
    store = CredentialStore(cred_config, device, keyring, clock=lambda: NOW)
    good = _seal(device, fleet)
    store.install(good)
    with pytest.raises(CredentialError):
        store.install(_seal(device, rogue))
    assert cred_config.envelope_path.read_bytes() == good
    assert store.token_provider()() == TOKEN


def test_systemd_credential_source(
    cred_config: CredentialsConfig,
    device: DeviceIdentity,
    fleet: FleetKey,
    keyring: FleetKeyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds_dir = tmp_path / "run-credentials"
    creds_dir.mkdir()
    (creds_dir / cred_config.systemd_credential).write_bytes(_seal(device, fleet, label="systemd"))
    store = CredentialStore(cred_config, device, keyring, clock=lambda: NOW)
    assert store.load() is None  # env var is read at call time: not set yet
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds_dir))
    info = store.load()
    assert info is not None
    assert info.label == "systemd"
    assert store.token_provider()() == TOKEN


def test_load_reports_refused_source(
    cred_config: CredentialsConfig, device: DeviceIdentity, rogue: FleetKey, keyring: FleetKeyring
) -> None:
    cred_config.envelope_path.parent.mkdir(parents=True)
    cred_config.envelope_path.write_bytes(_seal(device, rogue))
    store = CredentialStore(cred_config, device, keyring, clock=lambda: NOW)
    with pytest.raises(CredentialError, match="unknown key"):
        store.load()
    assert store.token_provider()() is None


def test_secret_token_never_renders() -> None:
    s = SecretToken(TOKEN)
    rendered = [
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        f"{s}",
        f"{s}",
        repr([s]),
        repr({"t": s}),
    ]
    assert all(TOKEN not in r for r in rendered)
    with pytest.raises(TypeError):
        pickle.dumps(s)
