"""Pieces shared by the operator-side commands (policy, credentials): where the box is."""

from __future__ import annotations

import argparse
import getpass
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent._fleetkeys import load_private_key
from edge_agent.errors import ConfigError

__all__ = [
    "OperatorTarget",
    "add_signing_key_arguments",
    "add_target_arguments",
    "parse_duration",
    "signing_key_from_args",
    "target_from_args",
]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class OperatorTarget:
    address: str  # host:port
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    operator_token_file: Path | None = None  # sent as "authorization: Bearer <token>"
    insecure: bool = False  # plaintext, for loopback tests and labs only
    timeout_s: float = 30.0


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s``."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d or 12h, got {text!r}")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the box's operator endpoint, host:port")
    p.add_argument("--ca-cert", type=Path, default=None, help="CA that signed the box's cert")
    p.add_argument("--client-cert", type=Path, default=None, help="operator mTLS certificate")
    p.add_argument("--client-key", type=Path, default=None, help="operator mTLS key")
    p.add_argument("--operator-token-file", type=Path, default=None)
    p.add_argument("--insecure", action="store_true", help="plaintext (loopback/lab only)")
    p.add_argument("--timeout", type=float, default=30.0)


def target_from_args(args: argparse.Namespace) -> OperatorTarget:
    return OperatorTarget(
        address=args.target,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        operator_token_file=args.operator_token_file,
        insecure=args.insecure,
        timeout_s=args.timeout,
    )


def add_signing_key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet-key", type=Path, required=True, help="fleet P-256 private key PEM")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--ask-password", action="store_true", help="prompt for the key's password")
    pw.add_argument("--password-file", type=Path, default=None, help="first line: the password")


def signing_key_from_args(args: argparse.Namespace) -> ec.EllipticCurvePrivateKey:
    password: bytes | None = None
    if args.ask_password:
        password = getpass.getpass(f"password for {args.fleet_key.name}: ").encode()
    elif args.password_file is not None:
        try:
            lines = args.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"password file cannot be read ({exc.strerror})") from exc
        password = (lines[0] if lines else "").encode()
    return load_private_key(args.fleet_key, password)
