"""`policy` CLI commands on real files, and the [policy] / [credentials] config sections."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from policy_helpers import FleetKey
from policy_support import CLINIC, with_version

from edge_agent._tomlreader import TableReader
from edge_agent.credentials import CredentialsConfig, parse_credentials_config
from edge_agent.errors import ConfigError
from edge_agent.policy import (
    LocalPolicyOverrides,
    PolicyConfig,
    add_policy_commands,
    merge_policy,
    parse_policy,
    parse_policy_config,
)


def _reader(table: dict[str, object], prefix: str) -> TableReader:
    return TableReader(table, source="/etc/edge-agent/edge-agent.toml", prefix=prefix)


def test_empty_sections_have_safe_defaults(tmp_path: Path) -> None:
    pc = parse_policy_config(_reader({}, "policy."), state_dir=tmp_path)
    assert pc == PolicyConfig.for_state_dir(tmp_path)
    assert pc.overrides == LocalPolicyOverrides()
    cc = parse_credentials_config(_reader({}, "credentials."), state_dir=tmp_path)
    assert cc == CredentialsConfig.for_state_dir(tmp_path)
    assert cc.systemd_credential == "edge-agent-hf-token.sealed"


def test_policy_section_parses_tightening(tmp_path: Path) -> None:
    pc = parse_policy_config(
        _reader(
            {
                "trusted_keys": ["keys/fleet.pub.pem"],
                "air_gapped": True,
                "max_cloud_data_class": "none",
                "default_data_class": "confidential",
                "daily_usd": 1,
                "allowed_models": ["a/b"],
                "deny_clients": ["kiosk"],
                "timezone": "Europe/Paris",
                "escalation_windows": [{"days": ["mon"], "start": "08:00", "end": "12:00"}],
            },
            "policy.",
        ),
        base=tmp_path,
    )
    o = pc.overrides
    assert pc.trusted_keys == (tmp_path / "keys/fleet.pub.pem",)
    assert o.air_gapped
    assert o.max_cloud_data_class is None
    assert o.default_data_class == "confidential"
    assert o.daily_usd == 1.0
    assert o.daily_tokens is None
    assert o.allowed_models == frozenset({"a/b"})
    assert o.deny_clients == frozenset({"kiosk"})
    assert o.window_set is not None
    assert len(o.window_set.windows) == 1


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"air_gaped": True}, r"unknown key 'policy\.air_gaped'"),
        ({"max_cloud_data_class": "secret"}, r"policy\.max_cloud_data_class"),
        ({"daily_usd": -1}, r"policy\.daily_usd"),
        ({"escalation_windows": [{"days": ["someday"]}]}, "unknown day"),
        ({"timezone": "Nowhere/Land", "escalation_windows": []}, "time zone"),
    ],
)
def test_policy_section_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy_config(_reader(table, "policy."))


def test_credentials_section_errors() -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        parse_credentials_config(_reader({"systemd_credential": "../x"}, "credentials."))
    with pytest.raises(ConfigError, match="unknown key"):
        parse_credentials_config(_reader({"token": "hf_x"}, "credentials."))


def test_local_overrides_tighten_the_clinic_policy() -> None:
    signed = parse_policy(CLINIC).policy
    local = LocalPolicyOverrides(
        air_gapped=False, daily_usd=0.5, deny_clients=frozenset({"faq-kiosk"})
    )
    merged = merge_policy(signed, local, None)
    assert merged.budgets.daily_usd == 0.5
    assert merged.budgets.monthly_usd == 30.0
    rule = merged.client_rule("faq-kiosk")
    assert rule is not None
    assert not rule.escalation
    # a local "loosening" attempt has no effect
    loosen = LocalPolicyOverrides(daily_usd=1000.0, max_cloud_data_class="restricted")
    merged = merge_policy(signed, loosen, None)
    assert merged.budgets.daily_usd == 2.0
    assert merged.max_cloud_class == "public"


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_policy_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _call(parser: argparse.ArgumentParser, *argv: str) -> int:
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_policy_cli_sign_verify_install_show(
    tmp_path: Path, fleet: FleetKey, rogue: FleetKey, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli()
    src = tmp_path / "clinic.toml"
    src.write_text(with_version(CLINIC, 7))
    out = tmp_path / "clinic.signed"
    assert (
        _call(
            cli, "policy", "sign", str(src), "--fleet-key", str(fleet.private_path), "-o", str(out)
        )
        == 0
    )
    trust = ["--trusted-key", str(fleet.public_path)]
    state = ["--state-dir", str(tmp_path / "state")]
    assert _call(cli, "policy", "verify", str(out), *trust) == 0
    assert "version 7" in capsys.readouterr().out
    # the wrong trust: refused, exit 1 with the reason on stderr
    assert _call(cli, "policy", "verify", str(out), "--trusted-key", str(rogue.public_path)) == 1
    assert "unknown key" in capsys.readouterr().err
    assert _call(cli, "policy", "show", *state, *trust) == 0
    assert json.loads(capsys.readouterr().out)["policy"] is None
    assert _call(cli, "policy", "install", str(out), *state, *trust) == 0
    capsys.readouterr()
    assert _call(cli, "policy", "show", *state, *trust) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signed_version"] == 7
    assert shown["effective"]["max_cloud_data_class"] == "public"
    assert _call(cli, "policy", "show", str(out), *trust) == 0
    assert "[data_classes]" in capsys.readouterr().out
    # an invalid policy is never signed
    src.write_text(CLINIC.replace('"restricted"\ntimezone', '"top"\ntimezone'))
    assert (
        _call(
            cli,
            "policy",
            "sign",
            str(src),
            "--fleet-key",
            str(fleet.private_path),
            "-o",
            str(tmp_path / "bad"),
        )
        == 1
    )
    assert not (tmp_path / "bad").exists()


def test_policy_cli_uses_the_config_loader(tmp_path: Path, fleet: FleetKey) -> None:
    signed_path = tmp_path / "elsewhere" / "p.signed"
    config = PolicyConfig(trusted_keys=(fleet.public_path,), signed_policy_path=signed_path)
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_policy_commands(parser.add_subparsers(dest="command"), config=lambda _args: config)
    src = tmp_path / "p.toml"
    src.write_text(CLINIC)
    out = tmp_path / "p.signed"
    assert (
        _call(
            parser,
            "policy",
            "sign",
            str(src),
            "--fleet-key",
            str(fleet.private_path),
            "-o",
            str(out),
        )
        == 0
    )
    assert _call(parser, "policy", "install", str(out)) == 0
    assert signed_path.exists()


def test_sign_with_an_encrypted_fleet_key(
    tmp_path: Path, fleet: FleetKey, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization

    encrypted = tmp_path / "alice.key"
    encrypted.write_bytes(
        fleet.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    (tmp_path / "pw").write_text("correct horse\n")
    (tmp_path / "bad-pw").write_text("hunter2-bad\n")
    src = tmp_path / "p.toml"
    src.write_text(CLINIC)
    out = tmp_path / "p.signed"
    cli = _cli()
    sign = ["policy", "sign", str(src), "--fleet-key", str(encrypted), "-o", str(out)]
    assert _call(cli, *sign) == 1
    assert "encrypted; give its password" in capsys.readouterr().err
    assert _call(cli, *sign, "--password-file", str(tmp_path / "bad-pw")) == 1
    err = capsys.readouterr().err
    assert "password is wrong" in err
    assert "hunter2" not in err
    assert _call(cli, *sign, "--password-file", str(tmp_path / "pw")) == 0
    assert _call(cli, "policy", "verify", str(out), "--trusted-key", str(fleet.public_path)) == 0
