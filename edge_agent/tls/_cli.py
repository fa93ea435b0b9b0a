"""``edge-agent tls …``: operator CA, client certificates, tokens, fingerprints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent.errors import EdgeAgentError, InvalidArgument
from edge_agent.tls._ca import init_ca, issue_client_certificate, load_ca
from edge_agent.tls._device import certificate_fingerprint, format_fingerprint
from edge_agent.tls._files import write_atomic
from edge_agent.tls._pinning import fetch_server_certificate
from edge_agent.tls._tokens import new_token

__all__ = ["add_tls_commands"]

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")


def add_tls_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``tls`` with its subcommands; each sets ``func(args) -> int`` as a default."""
    tls = subparsers.add_parser("tls", help="TLS identities, client certificates and tokens")
    sub = tls.add_subparsers(dest="tls_command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-ca", help="create the operator CA that signs client certificates")
    p.add_argument("--ca-dir", type=Path, required=True, help="where ca.key/ca.pem go")
    p.add_argument("--name", default="edge-agent operator CA")
    p.add_argument("--days", type=int, default=3650)
    p.set_defaults(func=cmd_init_ca)

    p = sub.add_parser("issue-client", help="sign a client certificate with the operator CA")
    p.add_argument("--ca-dir", type=Path, required=True)
    p.add_argument("--role", choices=("client", "operator"), required=True)
    p.add_argument("--name", required=True, help="the holder's name (certificate CN)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for NAME.pem/NAME.key")
    p.add_argument("--days", type=int, default=397)
    p.set_defaults(func=cmd_issue_client)

    p = sub.add_parser("add-token", help="mint a bearer token and print its config entry")
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=("client", "operator"), default="client")
    p.set_defaults(func=cmd_add_token)

    p = sub.add_parser("fingerprint", help="print the SHA-256 fingerprint of a certificate")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    src.add_argument("--cert", type=Path, help="a PEM certificate file")
    src.add_argument("--remote", metavar="HOST:PORT", help="fetch it from a running box")
    p.set_defaults(func=cmd_fingerprint)
    return tls


def _fail(exc: EdgeAgentError | OSError) -> int:
    message = exc.message if isinstance(exc, EdgeAgentError) else exc.strerror
    print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_init_ca(args: argparse.Namespace) -> int:
    try:
        ca = init_ca(args.ca_dir, name=args.name, days=args.days)
    except (EdgeAgentError, OSError) as exc:
        return _fail(exc)
    from cryptography.hazmat.primitives import serialization

    pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    print(f"CA created: {args.ca_dir / 'ca.pem'} (key {args.ca_dir / 'ca.key'}, mode 0600)")
    print(f"CA fingerprint (sha256): {format_fingerprint(certificate_fingerprint(pem))}")
    print("Copy ca.pem (never ca.key) to the box and list it in tls.client_ca_files.")
    return 0


def cmd_issue_client(args: argparse.Namespace) -> int:
    try:
        ca = load_ca(args.ca_dir)
        issued = issue_client_certificate(ca, name=args.name, role=args.role, days=args.days)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.name)
        cert_path, key_path = args.out / f"{safe}.pem", args.out / f"{safe}.key"
        if cert_path.exists() or key_path.exists():
            raise InvalidArgument("name", f"{safe}.pem/.key already exist in the output folder")
        write_atomic(key_path, issued.key_pem, 0o600)
        write_atomic(cert_path, issued.cert_pem, 0o644)
    except (EdgeAgentError, OSError) as exc:
        return _fail(exc)
    print(f"issued {args.role} certificate for {args.name!r}: {cert_path} (key {key_path})")
    return 0


def cmd_add_token(args: argparse.Namespace) -> int:
    token = new_token()
    print("Token (shown once; give it to the client, it is not stored anywhere):")
    print(f"  {token.token}")
    print()
    print("Add this to /etc/edge-agent/agent.toml and reload (systemctl reload edge-agent):")
    print(token.config_entry(args.name, args.role), end="")
    if args.role == "operator":
        print("# operator tokens also need: [auth] allow_operator_tokens = true")
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    try:
        if args.remote:
            host, _, port = args.remote.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidArgument("remote", "expected HOST:PORT")
            pem = fetch_server_certificate(host.strip("[]"), int(port))
        else:
            path = args.cert or args.state_dir / "tls" / "device.pem"
            pem = path.read_bytes()
        fp = certificate_fingerprint(pem)
    except (EdgeAgentError, OSError) as exc:
        return _fail(exc)
    except ValueError:
        print("error: not a PEM certificate", file=sys.stderr)
        return 1
    print(format_fingerprint(fp))
    print(fp)
    return 0
