"""The audit log: chain verification, tamper detection in the file, kill -9 durability, CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent._tomlreader import TableReader
from edge_agent.audit import (
    GENESIS_HASH,
    AuditConfig,
    AuditEntry,
    AuditLog,
    AuditRecord,
    add_audit_commands,
    parse_audit_config,
    record_hash,
)
from edge_agent.errors import ConfigError


def _entry(i: int, prompt: str | None = None) -> AuditEntry:
    return AuditEntry(
        request_id=f"req-{i:04d}",
        client_id=f"client-{i % 3}",
        data_class="public" if i % 2 else "restricted",
        destination="cloud" if i % 4 == 1 else "local",
        reason="cloud.pressure_critical" if i % 4 == 1 else "local.default",
        tokens_in=100 + i,
        tokens_out=20 + i,
        cost_usd=0.000123 * i,
        model="meta-llama/Llama-3.3-70B-Instruct" if i % 4 == 1 else "mistral-small@3",
        provider="together" if i % 4 == 1 else "cpu",
        prompt=prompt,
        time=datetime(2026, 6, 1, 12, 0, i % 60, tzinfo=UTC),
    )


def _fill(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.append(_entry(i))
    return log


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    log = _fill(tmp_path / "a.sqlite3", 10)
    rows = log.records()
    assert [r.seq for r in rows] == list(range(1, 11))
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    from dataclasses import asdict

    assert all(record_hash(asdict(r)) == r.hash for r in rows)
    result = log.verify()
    assert result.ok
    assert result.records == 10
    assert result.head_hash == rows[-1].hash
    assert log.head() == (10, rows[-1].hash)
    log.close()


def test_prompts_only_when_configured(tmp_path: Path) -> None:
    off = AuditLog(tmp_path / "off.sqlite3")
    off.append(_entry(1, prompt="patient John Doe, DOB 1970-01-01"))
    assert off.records()[0].prompt is None
    assert b"John Doe" not in (tmp_path / "off.sqlite3").read_bytes()
    on = AuditLog(tmp_path / "on.sqlite3", include_prompts=True)
    on.append(_entry(1, prompt="what are the opening hours?"))
    assert on.records()[0].prompt == "what are the opening hours?"
    assert on.verify().ok
    off.close()
    on.close()


def test_sql_level_update_and_delete_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    _fill(path, 3).close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE records SET tokens_out = 1 WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM records WHERE seq = 2")
    db.close()


def _tamper_sql(path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """What an attacker with the file does: drop the guard triggers, then edit."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("DROP TRIGGER records_no_delete")
    db.execute(sql, params)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("sql", "broken", "problem"),
    [
        ("UPDATE records SET tokens_out = 99999 WHERE seq = 7", 7, "content"),
        ("UPDATE records SET reason = 'local.default' WHERE seq = 5", 5, "content"),
        ("DELETE FROM records WHERE seq = 4", 4, "missing"),
        ("UPDATE records SET prev_hash = hash WHERE seq = 9", 9, "prev_hash"),
    ],
)
def test_tampering_is_found(tmp_path: Path, sql: str, broken: int, problem: str) -> None:
    path = tmp_path / "a.sqlite3"
    _fill(path, 12).close()
    _tamper_sql(path, sql)
    result = AuditLog(path).verify()
    assert not result.ok
    assert result.first_broken_seq == broken
    assert problem in (result.problem or "")
    assert result.records == broken - 1


def test_rehashed_record_still_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    log = _fill(path, 8)
    row = log.records()[4]  # seq 5
    log.close()
    from dataclasses import asdict

    fields = asdict(row)
    fields["cost_usd"] = 0.0
    new_hash = record_hash(fields)
    _tamper_sql(path, "UPDATE records SET cost_usd = 0.0, hash = ? WHERE seq = 5", (new_hash,))
    result = AuditLog(path).verify()
    assert result.first_broken_seq == 6
    assert "prev_hash" in (result.problem or "")


def test_byte_edit_of_the_database_file_is_found(tmp_path: Path) -> None:
    """Flip the client id of one record directly in the file's bytes (no SQL at all)."""
    path = tmp_path / "a.sqlite3"
    log = AuditLog(path)
    for i in range(1, 21):
        log.append(AuditEntry(f"req-{i}", f"ward-{i:03d}", "public", "local", "local.default"))
    log.close()
    db = sqlite3.connect(path)  # fold the WAL into the main file, as a checkpoint would
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = path.read_bytes()
    assert data.count(b"ward-013") == 1
    path.write_bytes(data.replace(b"ward-013", b"ward-031"))
    result = AuditLog(path).verify()
    assert not result.ok
    assert result.first_broken_seq == 13


_WRITER = """
import sys
from pathlib import Path
from edge_agent.audit import AuditEntry, AuditLog
log = AuditLog(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    rec = log.append(AuditEntry(f"{sys.argv[2]}-{i}", "c", "public", "local", "local.default", 1, 2, 0.5))
    print(rec.seq, rec.hash, flush=True)
"""


def test_kill_9_loses_no_committed_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    committed: dict[int, str] = {}
    for iteration in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"run{iteration}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # let it commit a few (varying) records, then kill it mid-stream
        for _ in range(3 + iteration % 7):
            seq, digest = proc.stdout.readline().split()
            committed[int(seq)] = digest
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:  # records printed before the kill landed
            parts = line.split()
            # The kill can cut the last line short: that record committed, but its printed
            # hash is incomplete, so there is nothing to compare it with.
            if len(parts) == 2 and len(parts[1]) == 64:
                committed[int(parts[0])] = parts[1]
        proc.wait(timeout=30)
        log = AuditLog(path)
        result = log.verify()
        on_disk = {r.seq: r.hash for r in log.records()}
        log.close()
        assert result.ok, result
        for number, expected in committed.items():
            assert on_disk.get(number) == expected, f"record {number} lost, kill -9 #{iteration}"
    assert len(committed) >= 20 * 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_list_verify_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    _fill(AuditConfig.for_state_dir(state).path, 6).close()
    p = _parser()
    args = p.parse_args(["audit", "verify", "--state-dir", str(state)])
    assert args.func(args) == 0
    assert "audit chain OK: 6 records" in capsys.readouterr().out
    args = p.parse_args(["audit", "list", "--state-dir", str(state), "--limit", "2", "--json"])
    assert args.func(args) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in listed] == [5, 6]
    out = tmp_path / "export.jsonl"
    args = p.parse_args(["audit", "export", "--state-dir", str(state), "-o", str(out)])
    assert args.func(args) == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(exported) == 6
    # the export carries everything needed to re-check the chain offline
    prev = GENESIS_HASH
    for rec in exported:
        assert rec["prev_hash"] == prev
        assert record_hash(rec) == rec["hash"]
        prev = rec["hash"]
    _tamper_sql(AuditConfig.for_state_dir(state).path, "DELETE FROM records WHERE seq = 2")
    args = p.parse_args(["audit", "verify", "--state-dir", str(state)])
    assert args.func(args) == 1
    assert "BROKEN at record 2" in capsys.readouterr().out
    args = p.parse_args(["audit", "verify", "--state-dir", str(tmp_path / "nothing")])
    assert args.func(args) == 1


def test_audit_config_section(tmp_path: Path) -> None:
    cfg = parse_audit_config(TableReader({}, source="t.toml", prefix="audit."), state_dir=tmp_path)
    assert cfg == AuditConfig(path=tmp_path / "audit" / "audit.sqlite3", include_prompts=False)
    cfg = parse_audit_config(
        TableReader({"include_prompts": True, "path": "log.db"}, source="t.toml", prefix="audit."),
        base=tmp_path,
    )
    assert cfg.include_prompts
    assert cfg.path == tmp_path / "log.db"
    with pytest.raises(ConfigError, match=r"audit\.include_prompt"):
        parse_audit_config(TableReader({"include_prompt": True}, source="t.toml", prefix="audit."))


async def test_append_async_keeps_order(tmp_path: Path) -> None:
    import asyncio

    log = AuditLog(tmp_path / "a.sqlite3")
    await asyncio.gather(*(log.append_async(_entry(i)) for i in range(1, 31)))
    result = log.verify()
    assert result.ok
    assert result.records == 30
    log.close()


async def test_concurrent_appends_share_commits_and_each_gets_its_record(tmp_path: Path) -> None:
    import asyncio

    class CountingLog(AuditLog):
        commits = 0

        def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
            CountingLog.commits += 1
            return super().append_many(entries)

    log = CountingLog(tmp_path / "a.sqlite3")
    entries = [_entry(i) for i in range(1, 301)]
    records = await asyncio.gather(*(log.append_async(e) for e in entries))
    # 300 requests finishing together cost a handful of fsyncs, not 300.
    assert CountingLog.commits <= 3
    assert [r.request_id for r in records] == [e.request_id for e in entries]
    assert sorted(r.seq for r in records) == list(range(1, 301))
    assert log.records() == sorted(records, key=lambda r: r.seq)
    assert log.verify().ok
    # A waiter that gives up still has its record written; the next appends go on.
    waiter = asyncio.ensure_future(log.append_async(_entry(301)))
    await asyncio.sleep(0)
    waiter.cancel()
    await log.append_async(_entry(302))
    assert [r.request_id for r in log.tail(2)] == ["req-0301", "req-0302"]
    log.close()


async def test_a_failed_commit_reaches_its_waiter_and_the_log_goes_on(tmp_path: Path) -> None:
    import asyncio

    log = AuditLog(tmp_path / "a.sqlite3")
    log.close()  # every commit now fails
    with pytest.raises(sqlite3.ProgrammingError):
        await log.append_async(_entry(1))
    fresh = AuditLog(tmp_path / "a.sqlite3")
    assert (await asyncio.gather(fresh.append_async(_entry(2))))[0].seq == 1
    fresh.close()
