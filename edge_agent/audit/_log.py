"""The tamper-evident audit log: append-only, hash-chained, SQLite WAL with synchronous=FULL.

Each record stores ``prev_hash`` (the previous record's hash; 64 zeros for the first) and
``hash = sha256(canonical JSON of every field, seq and prev_hash included)``. Editing,
deleting or reordering any record breaks the chain at that record, which :meth:`verify`
reports. SQLite gives crash safety: a record whose append returned survives kill -9 and
power loss (FULL syncs the WAL at each commit). Triggers refuse UPDATE and DELETE, which
stops accidents; someone with write access to the file can still drop them, and then the
chain is what shows it. Truncating the newest records is not visible in the chain alone:
ship :meth:`head` off the box (metrics, status) to anchor it.

A chat record says everything that happened to the request: ``destination`` is ``cloud``
whenever the prompt left the box (``left_box``), even if the answer came from the local
model after a failover (``fallback_reason``); ``attempts`` lists each leg (cloud, then
local) with its tokens and cost; ``tokens_*``/``cost_usd`` are the sums. Records written
before these columns existed have them NULL, and NULL columns are left out of the hash, so
old chains still verify.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "GENESIS_HASH",
    "AuditAttempt",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "VerifyResult",
    "record_hash",
]

GENESIS_HASH = "0" * 64
_MAX_GROUP = 256  # records per group commit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    data_class TEXT NOT NULL,
    destination TEXT NOT NULL,
    reason TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    prompt TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    left_box INTEGER,
    fallback_reason TEXT,
    attempts TEXT
);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
_COLUMNS = (
    "seq, time, request_id, client_id, data_class, destination, reason, tokens_in, "
    "tokens_out, cost_usd, model, provider, prompt, left_box, fallback_reason, attempts, "
    "prev_hash, hash"
)
# Added after the first release: logs created before get them by ALTER TABLE, their old
# rows hold NULL there, and NULL values of these are not hashed (old hashes stay valid).
_ADDED_COLUMNS = {"left_box": "INTEGER", "fallback_reason": "TEXT", "attempts": "TEXT"}


@dataclass(frozen=True, slots=True)
class AuditAttempt:
    """One leg of a chat: where it ran, what it used and how it ended.

    ``usage`` says where the token counts come from: ``reported`` (the provider or the
    engine counted them), ``worst_case`` (a cloud leg that may have been billed without a
    usage report: the reservation is kept), ``none`` (nothing reached a provider).
    ``outcome`` is ``ok`` or the failure kind (``timeout``, ``cut``, ``account_exhausted``,
    ``rate_limited``, ``model_unavailable``, ``deadline``, ``cancelled``, ...).
    """

    destination: str  # local | cloud
    model: str
    provider: str
    outcome: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    usage: str = "reported"
    sent: bool = False  # cloud: the prompt may have reached the router
    http_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One routing decision as the caller reports it."""

    request_id: str
    client_id: str
    data_class: str
    destination: str  # local | cloud | reject
    reason: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model: str = ""  # local model+version, or the cloud model
    provider: str = ""  # local execution provider, or the cloud provider
    prompt: str | None = None  # kept only when [audit] include_prompts = true
    time: datetime | None = None  # None: now
    left_box: bool | None = None  # chat records: whether the prompt was sent to the cloud
    fallback_reason: str | None = None  # chat records: why another leg finished ("" none)
    attempts: tuple[AuditAttempt, ...] | None = None  # chat records: each leg in order


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: str
    request_id: str
    client_id: str
    data_class: str
    destination: str
    reason: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    model: str
    provider: str
    prompt: str | None
    left_box: int | None
    fallback_reason: str | None
    attempts: str | None  # JSON list of AuditAttempt objects
    prev_hash: str
    hash: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    def attempt_list(self) -> list[dict[str, Any]]:
        """The legs of a chat record (empty for records without them)."""
        value = json.loads(self.attempts) if self.attempts else []
        return value if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int  # records checked (up to the first broken one)
    head_hash: str
    first_broken_seq: int | None = None
    problem: str | None = None


def record_hash(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of a record's fields (``hash`` itself excluded)."""
    body = {
        k: v for k, v in fields.items() if k != "hash" and not (k in _ADDED_COLUMNS and v is None)
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path, *, include_prompts: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._include_prompts = include_prompts
        self._lock = threading.Lock()
        self._queued: list[tuple[AuditEntry, asyncio.Future[AuditRecord]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, entry: AuditEntry) -> AuditRecord:
        """Append one record durably; returns it with its seq and hash. Blocks for an fsync."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append records in one transaction (one fsync), chained in the order given."""
        records: list[AuditRecord] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # serialises appenders across processes
            try:
                last = self._db.execute(
                    "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
                for entry in entries:
                    record = self._record(entry, seq, prev)
                    self._db.execute(
                        f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * 18)})",  # noqa: S608
                        astuple(record),
                    )
                    records.append(record)
                    seq, prev = seq + 1, record.hash
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return records

    def _record(self, entry: AuditEntry, seq: int, prev: str) -> AuditRecord:
        when = (entry.time or datetime.now(UTC)).astimezone(UTC)
        fields: dict[str, Any] = {
            "seq": seq,
            "time": when.isoformat(timespec="microseconds"),
            "request_id": entry.request_id,
            "client_id": entry.client_id,
            "data_class": entry.data_class,
            "destination": entry.destination,
            "reason": entry.reason,
            "tokens_in": int(entry.tokens_in),
            "tokens_out": int(entry.tokens_out),
            "cost_usd": float(entry.cost_usd),
            "model": entry.model,
            "provider": entry.provider,
            "prompt": entry.prompt if self._include_prompts else None,
            "left_box": None if entry.left_box is None else int(entry.left_box),
            "fallback_reason": entry.fallback_reason,
            "attempts": None
            if entry.attempts is None
            else json.dumps(
                [a.to_dict() for a in entry.attempts], sort_keys=True, separators=(",", ":")
            ),
            "prev_hash": prev,
        }
        fields["hash"] = record_hash(fields)
        return AuditRecord(**fields)

    async def append_async(self, entry: AuditEntry) -> AuditRecord:
        """:meth:`append` off the event loop, with group commit.

        Records that arrive while a commit waits for the disk go together in the next one:
        under load one fsync (and one worker thread) serves many requests, instead of an
        fsync per request wearing the flash and filling the loop's thread pool. Returns once
        the record is durable, as :meth:`append` does.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AuditRecord] = loop.create_future()
        self._queued.append((entry, done))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush(), name="audit-group-commit")
        return await done

    async def _flush(self) -> None:
        while self._queued:
            batch = self._queued[:_MAX_GROUP]
            del self._queued[:_MAX_GROUP]
            try:
                records = await asyncio.to_thread(self.append_many, [e for e, _ in batch])
            except Exception as exc:  # each waiter reports it; the next batch still runs
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), record in zip(batch, records, strict=True):
                if not done.done():  # a waiter that gave up still has its record written
                    done.set_result(record)

    def _rows(self, query: str, args: tuple[Any, ...]) -> Iterator[AuditRecord]:
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        for row in rows:
            yield AuditRecord(*row)

    def records(
        self, *, after_seq: int = 0, limit: int | None = None, client_id: str | None = None
    ) -> list[AuditRecord]:
        where = "seq > ?" + (" AND client_id = ?" if client_id is not None else "")
        args: tuple[Any, ...] = (after_seq,) if client_id is None else (after_seq, client_id)
        query = f"SELECT {_COLUMNS} FROM records WHERE {where} ORDER BY seq"  # noqa: S608
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return list(self._rows(query, args))

    def tail(self, limit: int) -> list[AuditRecord]:
        query = f"SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?"  # noqa: S608
        return list(reversed(list(self._rows(query, (limit,)))))

    def head(self) -> tuple[int, str]:
        """(last seq, last hash): publish it elsewhere to detect truncation."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def verify(self, *, batch: int = 5000) -> VerifyResult:
        """Recompute the whole chain; report the first record that does not fit."""
        prev, expected_seq, checked = GENESIS_HASH, 1, 0
        after = 0
        while True:
            rows = self.records(after_seq=after, limit=batch)
            if not rows:
                return VerifyResult(True, checked, prev)
            for r in rows:
                problem = None
                if r.seq != expected_seq:
                    problem = f"record {expected_seq} is missing"
                elif r.prev_hash != prev:
                    problem = "prev_hash does not match the previous record"
                elif record_hash(asdict(r)) != r.hash:
                    problem = "content does not match its hash"
                if problem is not None:
                    return VerifyResult(False, checked, prev, min(r.seq, expected_seq), problem)
                prev, expected_seq, checked = r.hash, r.seq + 1, checked + 1
            after = rows[-1].seq

    def export(self, out: IO[str], *, after_seq: int = 0) -> int:
        """Write records as JSON lines (with their hashes, so the chain is checkable offline)."""
        count = 0
        while True:
            rows = self.records(after_seq=after_seq, limit=5000)
            if not rows:
                return count
            for r in rows:
                out.write(r.to_json() + "\n")
            count += len(rows)
            after_seq = rows[-1].seq
