"""Policy format, signatures, anti-rollback and last-good persistence."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from policy_helpers import FleetKey
from policy_support import CLINIC, with_version

from edge_agent._fleetkeys import FleetKeyring, sign_document
from edge_agent.errors import PolicyError
from edge_agent.policy import PolicyStore, parse_policy, sign_policy, verify_policy


def test_clinic_policy_parses() -> None:
    doc = parse_policy(CLINIC)
    p = doc.policy
    assert doc.version == 3
    assert p.max_cloud_class == "public"
    assert p.default_data_class == "restricted"
    assert p.budgets.daily_usd == 2.0
    assert p.budgets.monthly_tokens == 3_000_000
    assert p.cloud_target(None) == ("meta-llama/Llama-3.3-70B-Instruct", "together")
    assert p.client_rule("faq-kiosk") is not None
    rule = p.client_rule("reception-pc")
    assert rule is not None
    assert not rule.escalation
    # Berlin, Wednesday 2026-06-03 06:30 local is outside 07:00-20:00; 07:30 inside
    assert not p.in_window(datetime(2026, 6, 3, 4, 30, tzinfo=UTC))
    assert p.in_window(datetime(2026, 6, 3, 5, 30, tzinfo=UTC))
    assert not p.in_window(datetime(2026, 6, 7, 10, 0, tzinfo=UTC))  # Sunday


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("version = 3\n", ""), "version: is required"),
        (lambda t: t.replace("version = 3", "version = 0"), "version"),
        (lambda t: "surprise = 1\n" + t, "unknown key 'surprise'"),
        (lambda t: t.replace('restricted = "local"', 'restricted = "cloud"'), "more sensitive"),
        (lambda t: t.replace("daily_usd = 2.0", "daily_usd = -1"), "budget.daily_usd"),
        (lambda t: t.replace('start = "07:00"', 'start = "7am"'), "HH:MM"),
        (lambda t: t.replace('"Europe/Berlin"', '"Mars/Olympus"'), "time zone"),
        (lambda t: t.replace('default_model = "meta', 'default_model = "x/meta'), "default_model"),
        (lambda t: t.replace("input_usd_per_mtok = 0.88\n", ""), "input_usd_per_mtok"),
        (lambda t: t.replace('"public"\nbudget', '"secret"\nbudget'), "max_cloud_data_class"),
        (lambda t: t.replace("escalation = false", 'escalation = "no"'), "true or false"),
        (lambda t: t + "\n[broken", "not valid TOML"),
    ],
)
def test_invalid_policies_refused(edit: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(edit(CLINIC))  # type: ignore[operator]


def test_sign_refuses_invalid_policy(fleet: FleetKey) -> None:
    with pytest.raises(PolicyError):
        sign_policy(CLINIC.replace("version = 3", "version = -2"), fleet.private)


def test_sign_verify_roundtrip(fleet: FleetKey, keyring: FleetKeyring) -> None:
    doc = verify_policy(sign_policy(CLINIC, fleet.private), keyring)
    assert doc.version == 3
    assert doc.text == CLINIC
    assert doc.signer_key_id == keyring.key_ids[0]


def test_unsigned_unknown_and_tampered_refused(
    fleet: FleetKey, rogue: FleetKey, keyring: FleetKeyring
) -> None:
    with pytest.raises(PolicyError, match="unsigned"):
        verify_policy(CLINIC.encode(), keyring)
    with pytest.raises(PolicyError, match="unknown key"):
        verify_policy(sign_policy(CLINIC, rogue.private), keyring)
    doc = json.loads(sign_policy(CLINIC, fleet.private))
    text = base64.b64decode(doc["payload"]).replace(b'public = "cloud"', b'internal_x = "zz"')
    doc["payload"] = base64.b64encode(text.replace(b"daily_usd = 2.0", b"daily_usd = 9.0")).decode()
    with pytest.raises(PolicyError, match="tampered"):
        verify_policy(json.dumps(doc).encode(), keyring)
    as_credential = sign_document("credential", CLINIC.encode(), fleet.private)
    with pytest.raises(PolicyError, match="not policy"):
        verify_policy(as_credential, keyring)


def test_store_monotonic_versions_and_last_good(
    tmp_path: Path, fleet: FleetKey, rogue: FleetKey, keyring: FleetKeyring
) -> None:
    path = tmp_path / "state" / "policy" / "policy.signed"
    store = PolicyStore(path, keyring)
    assert store.load() is None
    assert store.current() is None
    v5 = sign_policy(with_version(CLINIC, 5), fleet.private)
    store.install(v5)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.install(v5)  # the same document again is idempotent
    with pytest.raises(PolicyError, match="older"):
        store.install(sign_policy(with_version(CLINIC, 4), fleet.private))
    changed = with_version(CLINIC, 5).replace("daily_usd = 2.0", "daily_usd = 3.0")
    with pytest.raises(PolicyError, match="raise the version"):
        store.install(sign_policy(changed, fleet.private))
    with pytest.raises(PolicyError, match="unknown key"):
        store.install(sign_policy(with_version(CLINIC, 9), rogue.private))
    with pytest.raises(PolicyError, match="unsigned"):
        store.install(b"garbage")
    current = store.current()
    assert current is not None
    assert current.version == 5
    assert path.read_bytes() == v5  # the refused pushes never touched the file
    store.install(sign_policy(with_version(CLINIC, 6), fleet.private))
    # a restart loads the last good one, and still refuses rollback below it
    restarted = PolicyStore(path, keyring)
    loaded = restarted.load()
    assert loaded is not None
    assert loaded.version == 6
    with pytest.raises(PolicyError, match="older"):
        restarted.install(v5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.signed"]
