"""The token never leaks: a full seal → push → open → use run, every output grepped.

Everything this run produces is collected: every log record (DEBUG and up, with
tracebacks), stdout/stderr of every CLI command, the text and repr of every refusal, the
status/describe output, the audit log file and its export, and every file in the state dir.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from grpc import aio
from policy_helpers import FleetKey
from policy_support import CLINIC, PolicyOperator

from edge_agent._fleetkeys import FleetKeyring
from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc
from edge_agent.audit import AuditEntry, AuditLog
from edge_agent.credentials import (
    CredentialsConfig,
    CredentialStore,
    DeviceIdentity,
    add_credentials_commands,
    add_device_key_command,
)
from edge_agent.errors import EdgeAgentError
from edge_agent.policy import (
    BudgetLedger,
    LocalPolicyOverrides,
    PolicyStore,
    PressureView,
    RouteRequest,
    add_policy_commands,
    decide,
    describe_policy,
    merge_policy,
)
from edge_agent.rpc.interceptors import ErrorInterceptor
from edge_agent.rpc.policy_api import PolicyApi

TOKEN = "hf_LeakCanary_7f3a9c1e5b2d4f6a8c0e"


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys").add_subparsers(dest="keys_command", required=True)
    add_device_key_command(keys)
    add_credentials_commands(sub)
    add_policy_commands(sub)
    return parser


def _files_at_rest(state_dir: Path, *extra: Path) -> tuple[set[str], list[bytes]]:
    files = [p for p in state_dir.rglob("*") if p.is_file()] + list(extra)
    return {p.name for p in files}, [p.read_bytes() for p in files]


async def _run(parser: argparse.ArgumentParser, *argv: str) -> int:
    args = parser.parse_args(list(argv))
    # CLI commands block (file I/O, a sync gRPC call): run them beside the server's loop.
    code: int = await asyncio.to_thread(args.func, args)
    return code


async def test_token_never_appears_in_any_output(
    tmp_path: Path,
    fleet: FleetKey,
    rogue: FleetKey,
    cred_config: CredentialsConfig,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    cli = _cli()
    s = str(state_dir)
    trust = ["--trusted-key", str(fleet.public_path)]

    # operator: fetch the device key, seal the token, inspect the envelope
    assert await _run(cli, "keys", "device", "--state-dir", s, "-o", str(tmp_path / "dev.pem")) == 0
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    sealed = tmp_path / "box.sealed"
    seal_args = [
        "credentials", "seal", "--device-public-key", str(tmp_path / "dev.pem"),
        "--fleet-key", str(fleet.private_path), "--token-file", str(token_file),
        "--expires-in", "30d", "--model", "meta-llama/Llama-3.3-70B-Instruct",
        "--spend-cap-usd", "10", "--label", "leak-test",
    ]  # fmt: skip
    assert await _run(cli, *seal_args, "-o", str(sealed)) == 0
    assert await _run(cli, "credentials", "inspect", str(sealed), *trust) == 0
    rogue_sealed = tmp_path / "rogue.sealed"
    rogue_args = [a if a != str(fleet.private_path) else str(rogue.private_path) for a in seal_args]
    assert await _run(cli, *rogue_args, "-o", str(rogue_sealed)) == 0
    signed_policy = tmp_path / "policy.signed"
    (tmp_path / "policy.toml").write_text(CLINIC)
    assert await _run(
        cli, "policy", "sign", str(tmp_path / "policy.toml"), "--fleet-key",
        str(fleet.private_path), "-o", str(signed_policy),
    ) == 0  # fmt: skip

    # the box: a real gRPC server with the Operator service
    identity = DeviceIdentity.load_or_create(cred_config.device_key)
    keyring = FleetKeyring.from_paths(cred_config.trusted_keys)
    store = CredentialStore.from_config(cred_config)
    policies = PolicyStore(state_dir / "policy" / "policy.signed", keyring)
    server = aio.server(interceptors=[ErrorInterceptor()])
    servicer = PolicyOperator(PolicyApi(policies, store))  # type: ignore[abstract]
    operator_pb2_grpc.add_OperatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = ["--target", f"127.0.0.1:{port}", "--insecure", "--timeout", "10"]
    try:
        assert await _run(cli, "credentials", "push", str(sealed), *target) == 0
        assert await _run(cli, "credentials", "push", str(rogue_sealed), *target) == 1
        assert await _run(cli, "policy", "push", str(signed_policy), *target) == 0
    finally:
        await server.stop(None)
    assert await _run(cli, "credentials", "status", "--state-dir", s, *trust) == 0
    assert await _run(cli, "policy", "show", "--state-dir", s, *trust) == 0

    # refusals raised on the box side, kept as text the way a log or a client would see them
    later = CredentialStore(
        cred_config, identity, keyring, clock=lambda: datetime.now(UTC) + timedelta(days=31)
    )
    for attempt in (
        lambda: later.install(sealed.read_bytes()),
        lambda: later.secret_provider()(),
        lambda: store.install(rogue_sealed.read_bytes()),
        lambda: store.install(sealed.read_bytes().replace(b'"payload": "', b'"payload": "AAAA')),
    ):
        try:
            attempt()
        except EdgeAgentError as exc:
            outputs += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            logging.getLogger("edge_agent.test").exception("refused")
        else:
            pytest.fail("the attempt should have been refused")

    # use: the cloud client asks the provider for the token when it builds its request
    fresh = CredentialStore.from_config(cred_config)
    info = fresh.load()
    assert info is not None
    seen_auth: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_auth.append(request.headers["authorization"])
        return httpx.Response(200, json={"ok": True})

    provider = fresh.token_provider()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        r = await client.post(
            "https://router.invalid/v1/chat/completions",
            headers={"Authorization": f"Bearer {provider()}"},
            json={"model": "m", "messages": []},
        )
    assert r.status_code == 200
    assert seen_auth == [f"Bearer {TOKEN}"]  # the token really was opened and used

    # decision, budget and audit of that cloud call
    current = policies.current()
    assert current is not None
    effective = merge_policy(current.policy, LocalPolicyOverrides(), fresh.scope())
    ledger = BudgetLedger(state_dir / "budget" / "ledger.sqlite3")
    now = datetime(2026, 6, 3, 10, 0, tzinfo=UTC)
    request = RouteRequest("faq-kiosk", "public", "auto", 100, 100, None, 4096, 0.0)
    d = decide(
        request,
        PressureView("critical", True),
        "online",
        effective,
        ledger.view(now, "faq-kiosk"),
        now,
    )
    assert d.destination == "cloud"
    res = ledger.reserve(
        effective, client_id="faq-kiosk", tokens=d.estimated_tokens, usd=d.estimated_usd, now=now
    )
    ledger.settle(res, tokens=150, usd=0.0001)
    ledger.close()
    audit = AuditLog(state_dir / "audit" / "audit.sqlite3")
    audit.append(
        AuditEntry(
            "r1",
            "faq-kiosk",
            d.data_class,
            d.destination,
            d.reason,
            100,
            50,
            0.0001,
            d.cloud_model or "",
            d.cloud_provider or "",
        )
    )
    export = io.StringIO()
    audit.export(export)
    audit.close()
    outputs += [
        export.getvalue(),
        repr(info),
        repr(fresh.info()),
        str(describe_policy(effective)),
        repr(d),
    ]
    outputs += [repr(fresh), repr(store), repr(identity)]

    # collect everything and grep
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    outputs += [formatter.format(rec) for rec in caplog.records]
    assert any("refused" in o for o in outputs)  # the collection did see the refusals
    names, blobs = _files_at_rest(state_dir, sealed, rogue_sealed)
    assert "envelope.sealed" in names
    for fragment in (TOKEN, TOKEN[3:], TOKEN[-12:]):
        assert not [o for o in outputs if fragment in o], f"token fragment {fragment!r} leaked"
        assert not [b for b in blobs if fragment.encode() in b], "token in a file at rest"
