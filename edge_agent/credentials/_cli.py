"""`edge-agent keys device` and `edge-agent credentials seal|inspect|install|status|push`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from edge_agent._fleetkeys import FleetKeyring
from edge_agent._operator_cli import (
    add_signing_key_arguments,
    add_target_arguments,
    parse_duration,
    signing_key_from_args,
    target_from_args,
)
from edge_agent._statefiles import atomic_write_bytes
from edge_agent.credentials._config import CredentialsConfig
from edge_agent.credentials._device import DeviceIdentity, device_id_for, load_device_public_key
from edge_agent.credentials._envelope import EnvelopeInfo, inspect_envelope, seal_credential
from edge_agent.credentials._secret import SecretToken
from edge_agent.credentials._store import CredentialStore
from edge_agent.errors import ConfigError, CredentialError, EdgeAgentError

__all__ = ["add_credentials_commands", "add_device_key_command"]

CredentialsConfigLoader = Callable[[argparse.Namespace], CredentialsConfig]
if TYPE_CHECKING:
    _Sub: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _resolve(args: argparse.Namespace, loader: CredentialsConfigLoader | None) -> CredentialsConfig:
    base = (
        CredentialsConfig.for_state_dir(args.ea_state_dir)
        if args.ea_state_dir is not None
        else loader(args)
        if loader is not None
        else CredentialsConfig()
    )
    extra = tuple(getattr(args, "trusted_key", None) or ())
    if not extra:
        return base
    return CredentialsConfig(
        trusted_keys=base.trusted_keys + extra,
        device_key=base.device_key,
        envelope_path=base.envelope_path,
        systemd_credential=base.systemd_credential,
    )


def _box_options(p: argparse.ArgumentParser, *, trusted: bool) -> None:
    p.add_argument("--state-dir", dest="ea_state_dir", type=Path, default=None)
    if trusted:
        p.add_argument(
            "--trusted-key", type=Path, action="append", help="fleet public key (repeatable)"
        )


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except EdgeAgentError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1

    return command


def _info_json(info: EnvelopeInfo) -> str:
    return json.dumps(
        {
            "envelope_id": info.envelope_id,
            "device_id": info.device_id,
            "issued_at": info.issued_at.isoformat(),
            "expires_at": info.expires_at.isoformat(),
            "allowed_models": sorted(info.scope.allowed_models),
            "allowed_providers": sorted(info.scope.allowed_providers),
            "spend_cap_usd": info.scope.spend_cap_usd,
            "bill_to": info.scope.bill_to,
            "label": info.label,
            "signer_key_id": info.signer_key_id,
        },
        indent=2,
    )


def add_device_key_command(
    keys_subparsers: _Sub, *, config: CredentialsConfigLoader | None = None
) -> argparse.ArgumentParser:
    """Add ``keys device``: print (creating at first use) the box's public key and id."""
    p = keys_subparsers.add_parser("device", help="print this box's device id and public key")
    _box_options(p, trusted=False)
    p.add_argument("-o", "--output", type=Path, default=None, help="also write the PEM here")

    def device(args: argparse.Namespace) -> int:
        identity = DeviceIdentity.load_or_create(_resolve(args, config).device_key)
        pem = identity.public_key_pem()
        print(f"# device id: {identity.device_id}")
        print(pem, end="")
        if args.output is not None:
            args.output.write_text(pem, encoding="ascii")
        return 0

    p.set_defaults(func=_guard(device))
    return p


def _read_token(path: str) -> SecretToken:
    # Never from argv: command lines are visible to every user in ps and shell history.
    if path == "-":
        raw = sys.stdin.readline()
    else:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"token file cannot be read ({exc.strerror})") from exc
    token = raw.strip()
    if not token:
        raise CredentialError("the token file is empty")
    return SecretToken(token)


def add_credentials_commands(
    subparsers: _Sub, *, config: CredentialsConfigLoader | None = None
) -> argparse.ArgumentParser:
    """Add ``credentials`` seal/inspect/install/status/push; each sets ``func(args) -> int``."""
    cred = subparsers.add_parser("credentials", help="sealed cloud credentials")
    sub = cred.add_subparsers(dest="credentials_command", required=True)

    p = sub.add_parser("seal", help="encrypt an HF token to one device, signed by a fleet key")
    p.add_argument("--device-public-key", type=Path, required=True, help="`keys device` PEM")
    add_signing_key_arguments(p)
    p.add_argument("--token-file", required=True, help="file holding the token, or - for stdin")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires-in", type=parse_duration, help="e.g. 90d")
    when.add_argument("--expires-at", type=datetime.fromisoformat, help="ISO 8601 with offset")
    p.add_argument("--model", action="append", required=True, help="allowed model (repeatable)")
    p.add_argument("--provider", action="append", default=[], help="allowed provider (repeatable)")
    p.add_argument("--spend-cap-usd", type=float, default=None)
    p.add_argument("--bill-to", default=None, help="organisation billed (X-HF-Bill-To)")
    p.add_argument("--label", default="")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_guard(_seal))

    p = sub.add_parser("inspect", help="verify an envelope's signature and show its metadata")
    p.add_argument("envelope", type=Path)
    _box_options(p, trusted=True)
    p.set_defaults(func=_guard(lambda a: _inspect(a, config)))

    p = sub.add_parser("install", help="on the box: check an envelope opens, then keep it")
    p.add_argument("envelope", type=Path)
    _box_options(p, trusted=True)
    p.set_defaults(func=_guard(lambda a: _install(a, config)))

    p = sub.add_parser("status", help="on the box: the usable envelope's metadata")
    _box_options(p, trusted=True)
    p.set_defaults(func=_guard(lambda a: _status(a, config)))

    p = sub.add_parser("push", help="send a sealed envelope to a box (Operator.PushCredentials)")
    p.add_argument("envelope", type=Path)
    add_target_arguments(p)
    p.set_defaults(func=_guard(_push))
    return cred


def _seal(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    expires = now + args.expires_in if args.expires_in is not None else args.expires_at
    if expires.tzinfo is None:
        raise ConfigError("--expires-at needs a UTC offset, e.g. 2026-12-31T00:00:00+00:00")
    try:
        device_pem = args.device_public_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"device public key cannot be read ({exc.strerror})") from exc
    blob = seal_credential(
        _read_token(args.token_file),
        device_public_key=load_device_public_key(device_pem),
        fleet_key=signing_key_from_args(args),
        expires_at=expires,
        allowed_models=args.model,
        allowed_providers=args.provider,
        spend_cap_usd=args.spend_cap_usd,
        bill_to=args.bill_to,
        label=args.label,
        now=now,
    )
    atomic_write_bytes(args.output, blob, mode=0o644)  # ciphertext only: safe to copy around
    device_id = device_id_for(load_device_public_key(device_pem))
    print(f"sealed for {device_id}: wrote {args.output} (expires {expires.isoformat()})")
    return 0


def _keyring(config: CredentialsConfig) -> FleetKeyring:
    if not config.trusted_keys:
        raise ConfigError("no trusted fleet keys: pass --trusted-key or configure them")
    return FleetKeyring.from_paths(config.trusted_keys)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path.name} cannot be read ({exc.strerror})") from exc


def _inspect(args: argparse.Namespace, loader: CredentialsConfigLoader | None) -> int:
    info = inspect_envelope(_read(args.envelope), _keyring(_resolve(args, loader)))
    print(_info_json(info))
    return 0


def _install(args: argparse.Namespace, loader: CredentialsConfigLoader | None) -> int:
    config = _resolve(args, loader)
    store = CredentialStore(
        config, DeviceIdentity.load_or_create(config.device_key), _keyring(config)
    )
    print(_info_json(store.install(_read(args.envelope))))
    return 0


def _status(args: argparse.Namespace, loader: CredentialsConfigLoader | None) -> int:
    config = _resolve(args, loader)
    store = CredentialStore(
        config, DeviceIdentity.load_or_create(config.device_key), _keyring(config)
    )
    info = store.load()
    if info is None:
        print("no credential envelope installed")
        return 1
    print(_info_json(info))
    return 0


def _push(args: argparse.Namespace) -> int:
    from edge_agent.client.operator_push import push_credentials  # gRPC stubs only when pushing

    expires_at, signer = push_credentials(target_from_args(args), _read(args.envelope))
    print(f"accepted: expires {expires_at}, signer {signer}")
    return 0
