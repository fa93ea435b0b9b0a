"""`edge-agent audit list|verify|export`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge_agent.audit._config import AuditConfig
from edge_agent.audit._log import AuditLog
from edge_agent.errors import EdgeAgentError, NotFound

__all__ = ["add_audit_commands"]

AuditConfigLoader = Callable[[argparse.Namespace], AuditConfig]


def _resolve(args: argparse.Namespace, loader: AuditConfigLoader | None) -> AuditConfig:
    if args.audit_db is not None:
        return AuditConfig(path=args.audit_db)
    if args.ea_state_dir is not None:
        return AuditConfig.for_state_dir(args.ea_state_dir)
    return loader(args) if loader is not None else AuditConfig()


def _open(config: AuditConfig) -> AuditLog:
    if not config.path.exists():
        raise NotFound("no audit log on this box yet")
    return AuditLog(config.path, include_prompts=config.include_prompts)


def add_audit_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    config: AuditConfigLoader | None = None,
) -> argparse.ArgumentParser:
    """Add ``audit`` with list/verify/export; each sets ``func(args) -> int``."""
    audit = subparsers.add_parser("audit", help="list, verify and export the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", dest="ea_state_dir", type=Path, default=None)
        p.add_argument("--audit-db", type=Path, default=None, help="the audit SQLite file")

    def run(
        fn: Callable[[argparse.Namespace, AuditLog], int],
    ) -> Callable[[argparse.Namespace], int]:
        def command(args: argparse.Namespace) -> int:
            try:
                log = _open(_resolve(args, config))
            except EdgeAgentError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            try:
                return fn(args, log)
            finally:
                log.close()

        return command

    p = sub.add_parser("list", help="show the newest records")
    common(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--client", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run(_list))

    p = sub.add_parser("verify", help="recompute the hash chain; exit 1 at the first break")
    common(p)
    p.set_defaults(func=run(_verify))

    p = sub.add_parser("export", help="write records as JSON lines")
    common(p)
    p.add_argument("--after-seq", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, default=None, help="file (default stdout)")
    p.set_defaults(func=run(_export))
    return audit


def _list(args: argparse.Namespace, log: AuditLog) -> int:
    if args.client is not None:
        rows = log.records(client_id=args.client)[-args.limit :]
    else:
        rows = log.tail(args.limit)
    for r in rows:
        if args.json:
            print(r.to_json())
        else:
            where = f"{r.model}@{r.provider}" if r.model else "-"
            legs = " → ".join(
                f"{a.get('destination')}:{a.get('outcome')}" for a in r.attempt_list()
            )
            print(
                f"{r.seq:>7} {r.time} {r.client_id:<16} {r.data_class:<12} {r.destination:<6} "
                f"{r.reason:<48} in={r.tokens_in} out={r.tokens_out} ${r.cost_usd:.6f} {where}"
                + (f" then {r.fallback_reason}" if r.fallback_reason else "")
                + (f" [{legs}]" if legs else "")
            )
    return 0


def _verify(args: argparse.Namespace, log: AuditLog) -> int:
    result = log.verify()
    if result.ok:
        print(f"audit chain OK: {result.records} records, head {result.head_hash}")
        return 0
    print(
        f"audit chain BROKEN at record {result.first_broken_seq}: {result.problem} "
        f"({result.records} records before it verify)"
    )
    return 1


def _export(args: argparse.Namespace, log: AuditLog) -> int:
    if args.output is None:
        n = log.export(sys.stdout, after_seq=args.after_seq)
    else:
        with args.output.open("w", encoding="utf-8") as f:
            n = log.export(f, after_seq=args.after_seq)
    print(f"exported {n} records", file=sys.stderr)
    return 0
