"""``edge-agent discover``: list the boxes on the LAN."""

from __future__ import annotations

import argparse
import json
import sys

from edge_agent.discovery._browser import discover_sync
from edge_agent.errors import EdgeAgentError

__all__ = ["add_discover_command"]


def add_discover_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``discover``; it sets ``func(args) -> int`` as a default."""
    p = subparsers.add_parser("discover", help="list edge-agent boxes on the local network")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="browse only on the interface with this address (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="one JSON array on stdout")
    p.set_defaults(func=cmd_discover)
    return p


def cmd_discover(args: argparse.Namespace) -> int:
    try:
        boxes = discover_sync(args.timeout, interfaces=args.interface)
    except EdgeAgentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([b.to_json() for b in boxes], indent=2))
        return 0
    if not boxes:
        print("no edge-agent boxes found", file=sys.stderr)
        return 0
    for box in boxes:
        a = box.announcement
        where = ", ".join(f"[{x}]" if ":" in x else x for x in box.addresses)
        print(f"{box.name.removesuffix('._edge-agent._tcp.local.')}")
        print(
            f"  address     {where} port {box.port}"
            + (f" (mTLS {a.mtls_port})" if a.mtls_port else "")
        )
        if box.openai_base_url:
            print(f"  openai api  {box.openai_base_url}")
        print(f"  model       {a.model} {a.model_version} on {a.execution_provider or '?'}")
        print(f"  pressure    {a.pressure}")
        print(f"  device id   {a.device_id}")
        print(f"  fingerprint {box.fingerprint or '(none or invalid)'}")
    return 0
