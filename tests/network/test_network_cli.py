"""The ``tls`` and ``discover`` CLI commands, run through real argparse parsers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from network_helpers import Pki

from edge_agent._tomlreader import TableReader
from edge_agent.discovery import Advertiser, BoxAnnouncement, DiscoveryConfig, add_discover_command
from edge_agent.tls import (
    ClientCertVerifier,
    TokenStore,
    add_tls_commands,
    format_fingerprint,
    parse_auth_config,
)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_tls_commands(sub)
    add_discover_command(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_init_ca_issue_client_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    assert _run(["tls", "init-ca", "--ca-dir", str(ca_dir)]) == 0
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert _run(["tls", "init-ca", "--ca-dir", str(ca_dir)]) == 1  # never overwrites
    assert "already holds a CA" in capsys.readouterr().err

    out = tmp_path / "issued"
    argv = ["tls", "issue-client", "--ca-dir", str(ca_dir), "--role", "operator"]
    assert _run([*argv, "--name", "fleet console", "--out", str(out)]) == 0
    key = out / "fleet_console.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    verifier = ClientCertVerifier([(ca_dir / "ca.pem").read_bytes()])
    identity = verifier.identify((out / "fleet_console.pem").read_bytes())
    assert (identity.name, identity.role) == ("fleet console", "operator")
    assert _run([*argv, "--name", "fleet console", "--out", str(out)]) == 1
    missing = ["tls", "issue-client", "--ca-dir", str(tmp_path / "none"), "--role", "client"]
    assert _run([*missing, "--name", "x"]) == 1
    err = capsys.readouterr().err
    assert "no CA there" in err
    assert str(tmp_path) not in err


def test_add_token_prints_a_token_and_a_config_entry_that_accepts_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(["tls", "add-token", "--name", "kiosk-4"]) == 0
    out = capsys.readouterr().out
    token = next(line.strip() for line in out.splitlines() if line.strip().startswith("eat_"))
    toml_part = out[out.index("[[auth.tokens]]") :]
    auth = parse_auth_config(
        TableReader(tomllib.loads(toml_part)["auth"], source="agent.toml", prefix="auth.")
    )
    identity = TokenStore(auth.tokens).identify(token)
    assert (identity.name, identity.role, identity.method) == ("kiosk-4", "client", "token")
    assert token not in toml_part


async def test_fingerprint_of_file_state_dir_and_remote(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from network_helpers import serve, strict_auth

    from edge_agent.tls import Listener

    state_dir = pki.tls.cert_file.parent.parent
    assert _run(["tls", "fingerprint", "--state-dir", str(state_dir)]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [format_fingerprint(pki.device.fingerprint), pki.device.fingerprint]
    async with serve(pki, strict_auth(), [Listener("127.0.0.1:0", "tls")]) as running:
        remote = f"127.0.0.1:{running.port('tls')}"
        code = await asyncio.to_thread(_run, ["tls", "fingerprint", "--remote", remote])
    assert code == 0
    assert capsys.readouterr().out.split()[1] == pki.device.fingerprint
    assert _run(["tls", "fingerprint", "--cert", str(state_dir / "nope.pem")]) == 1


async def test_discover_command_lists_the_box_as_json(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    advertiser = Advertiser(
        DiscoveryConfig(interfaces=("127.0.0.1",), instance_name="cli-box"),
        port=50051,
        announcement=BoxAnnouncement(
            fingerprint=pki.device.fingerprint, device_id="dev-cli", http_port=8080
        ),
        hostname="testbox",
    )
    await advertiser.start()
    try:
        argv = ["discover", "--timeout", "1.5", "--interface", "127.0.0.1"]
        code = await asyncio.to_thread(_run, [*argv, "--json"])
        out = capsys.readouterr().out
        assert await asyncio.to_thread(_run, argv) == 0
        text = capsys.readouterr().out
    finally:
        await advertiser.stop()
    assert code == 0
    assert "openai api  http://127.0.0.1:8080/v1" in text
    boxes = json.loads(out)
    ours = [b for b in boxes if b["device_id"] == "dev-cli"]
    assert len(ours) == 1
    assert ours[0]["fingerprint_sha256"] == pki.device.fingerprint
    assert ours[0]["port"] == 50051
    assert (ours[0]["http_port"], ours[0]["http_tls"]) == (8080, False)
    assert ours[0]["openai_base_url"] == "http://127.0.0.1:8080/v1"
