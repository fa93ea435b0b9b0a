"""`edge-agent policy sign|verify|show|install|push`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent._fleetkeys import FleetKeyring
from edge_agent._operator_cli import (
    add_signing_key_arguments,
    add_target_arguments,
    signing_key_from_args,
    target_from_args,
)
from edge_agent._statefiles import atomic_write_bytes
from edge_agent.credentials import CredentialScope
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.policy._budget import BudgetLedger
from edge_agent.policy._local import PolicyConfig, merge_policy
from edge_agent.policy._model import EffectivePolicy
from edge_agent.policy._policystore import PolicyStore, sign_policy, verify_policy

__all__ = ["add_policy_commands", "describe_policy"]

PolicyConfigLoader = Callable[[argparse.Namespace], PolicyConfig]


def describe_policy(policy: EffectivePolicy) -> dict[str, Any]:
    """A JSON-ready view of an effective policy (status pages, `policy show`)."""
    return {
        "version": policy.version,
        "air_gapped": policy.air_gapped,
        "escalation": policy.escalation,
        "max_cloud_data_class": policy.max_cloud_class,
        "default_data_class": policy.default_data_class,
        "budgets": {
            "daily_tokens": policy.budgets.daily_tokens,
            "monthly_tokens": policy.budgets.monthly_tokens,
            "daily_usd": policy.budgets.daily_usd,
            "monthly_usd": policy.budgets.monthly_usd,
        },
        "models": sorted(policy.models),
        "default_model": policy.default_model,
        "provider": policy.provider,
        "allowed_providers": (
            None if policy.allowed_providers is None else sorted(policy.allowed_providers)
        ),
        "clients": {
            cid: {
                "escalation": r.escalation,
                "max_cloud_data_class": r.max_cloud_data_class,
                "budget_share": r.budget_share,
            }
            for cid, r in sorted(policy.clients.items())
        },
        "escalation_window_sets": len(policy.window_sets),
        "credential_cap_usd": policy.credential_cap_usd,
    }


def _resolve(args: argparse.Namespace, loader: PolicyConfigLoader | None) -> PolicyConfig:
    if args.ea_state_dir is not None:
        base = PolicyConfig.for_state_dir(args.ea_state_dir)
    else:
        base = loader(args) if loader is not None else PolicyConfig()
    extra = tuple(args.trusted_key or ())
    if not extra:
        return base
    return PolicyConfig(
        trusted_keys=base.trusted_keys + extra,
        signed_policy_path=base.signed_policy_path,
        budget_db=base.budget_db,
        overrides=base.overrides,
    )


def _keyring(config: PolicyConfig) -> FleetKeyring:
    if not config.trusted_keys:
        raise ConfigError("no trusted fleet keys: pass --trusted-key or configure them")
    return FleetKeyring.from_paths(config.trusted_keys)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path.name} cannot be read ({exc.strerror})") from exc


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except EdgeAgentError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1

    return command


def add_policy_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    config: PolicyConfigLoader | None = None,
) -> argparse.ArgumentParser:
    """Add ``policy`` with sign/verify/show/install/push; each sets ``func(args) -> int``."""
    pol = subparsers.add_parser("policy", help="the fleet-signed escalation policy")
    sub = pol.add_subparsers(dest="policy_command", required=True)

    def box(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", dest="ea_state_dir", type=Path, default=None)
        p.add_argument("--trusted-key", type=Path, action="append", help="fleet public key")

    p = sub.add_parser("sign", help="validate a policy TOML and sign it with a fleet key")
    p.add_argument("policy", type=Path, help="policy TOML")
    add_signing_key_arguments(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_guard(_sign))

    p = sub.add_parser("verify", help="check a signed policy against trusted fleet keys")
    p.add_argument("signed", type=Path)
    box(p)
    p.set_defaults(func=_guard(lambda a: _verify(a, config)))

    p = sub.add_parser("show", help="a signed file, or the box's policy, effective rules, budget")
    p.add_argument("signed", type=Path, nargs="?", default=None)
    box(p)
    p.set_defaults(func=_guard(lambda a: _show(a, config)))

    p = sub.add_parser("install", help="on the box: verify and install a signed policy")
    p.add_argument("signed", type=Path)
    box(p)
    p.set_defaults(func=_guard(lambda a: _install(a, config)))

    p = sub.add_parser("push", help="send a signed policy to a box (Operator.PushPolicy)")
    p.add_argument("signed", type=Path)
    add_target_arguments(p)
    p.set_defaults(func=_guard(_push))
    return pol


def _sign(args: argparse.Namespace) -> int:
    try:
        text = args.policy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{args.policy.name} cannot be read as UTF-8 text") from exc
    blob = sign_policy(text, signing_key_from_args(args))
    atomic_write_bytes(args.output, blob, mode=0o644)
    print(f"wrote {args.output}")
    return 0


def _verify(args: argparse.Namespace, loader: PolicyConfigLoader | None) -> int:
    doc = verify_policy(_read(args.signed), _keyring(_resolve(args, loader)))
    print(f"policy OK: version {doc.version}, signer {doc.signer_key_id}")
    return 0


def _show(args: argparse.Namespace, loader: PolicyConfigLoader | None) -> int:
    config = _resolve(args, loader)
    keyring = _keyring(config)
    if args.signed is not None:
        doc = verify_policy(_read(args.signed), keyring)
        print(f"# version {doc.version}, signer {doc.signer_key_id}")
        print(doc.text, end="" if doc.text.endswith("\n") else "\n")
        return 0
    current = PolicyStore(config.signed_policy_path, keyring).load()
    if current is None:
        print(json.dumps({"policy": None, "note": "no signed policy: nothing leaves the box"}))
        return 0
    # Effective rules assuming a credential that allows every signed model: the real
    # credential can only narrow them further.
    scope = CredentialScope(frozenset(current.policy.models), frozenset(), None, None)
    effective = merge_policy(current.policy, config.overrides, scope)
    out: dict[str, Any] = {
        "signed_version": current.version,
        "signer_key_id": current.signer_key_id,
        "effective": describe_policy(effective),
    }
    if config.budget_db.exists():
        ledger = BudgetLedger(config.budget_db)
        try:
            usage = ledger.usage(datetime.now(UTC))
        finally:
            ledger.close()
        out["usage"] = {
            "day_tokens": usage.day_tokens,
            "day_usd": round(usage.day_usd, 6),
            "month_tokens": usage.month_tokens,
            "month_usd": round(usage.month_usd, 6),
            "open_reservations": usage.reserved,
        }
    print(json.dumps(out, indent=2))
    return 0


def _install(args: argparse.Namespace, loader: PolicyConfigLoader | None) -> int:
    config = _resolve(args, loader)
    store = PolicyStore(config.signed_policy_path, _keyring(config))
    store.load()
    doc = store.install(_read(args.signed))
    print(f"installed policy version {doc.version}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from edge_agent.client.operator_push import push_policy  # gRPC stubs only when pushing

    version, signer = push_policy(target_from_args(args), _read(args.signed))
    print(f"accepted: policy version {version}, signer {signer}")
    return 0
