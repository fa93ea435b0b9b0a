"""The cloud budget ledger: SQLite (WAL, synchronous=FULL), reserve before send, settle after.

A cloud call first reserves its worst case (prompt + max_tokens at the model's worst-case
price) inside a ``BEGIN IMMEDIATE`` transaction that re-checks every budget against the
rows on disk, so concurrent requests — threads or processes — cannot together overshoot.
After the call, :meth:`BudgetLedger.settle` replaces the reservation with the real usage
(or keeps the worst case when the provider may have billed without reporting usage), or
:meth:`BudgetLedger.release` drops it when nothing reached a provider. Reservations left by
a crash are settled at their worst case by :meth:`BudgetLedger.reconcile` when the daemon
starts (never undercount: nobody knows what the provider did). Windows are the UTC day and
month of the reservation.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.errors import ResourceExhausted
from edge_agent.policy._decide import BudgetView, budget_allows
from edge_agent.policy._model import EffectivePolicy, ModelPrice

__all__ = ["BudgetLedger", "BudgetUsage", "Reservation"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    credential TEXT NOT NULL,
    day TEXT NOT NULL,
    month TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
    created TEXT NOT NULL
);
-- Running sums per window, kept in the same transactions as the entries, so a snapshot is
-- five primary-key lookups however long the history is.
CREATE TABLE IF NOT EXISTS totals (
    key TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    tokens: int
    usd: float


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """Totals for status pages and `edge-agent policy show`."""

    day_tokens: int
    day_usd: float
    month_tokens: int
    month_usd: float
    reserved: int


def _windows(now: datetime) -> tuple[str, str]:
    t = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")


def _keys(day: str, month: str, client: str, credential: str) -> tuple[str, ...]:
    """Totals keys: whole box per day and month, this client per day and month, credential.

    The prefixes keep them apart whatever a client id contains. _view unpacks them in order.
    """
    return (
        f"day|{day}",
        f"month|{month}",
        f"client-day|{day}|{client}",
        f"client-month|{month}|{client}",
        f"credential|{credential}",
    )


class BudgetLedger:
    """Persistent cloud spend, shared safely by every thread and process of the box."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (write lock up front).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, keys: tuple[str, ...], tokens: int, usd: float) -> None:
        self._db.executemany(
            "INSERT INTO totals (key, tokens, usd) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET tokens = tokens + excluded.tokens, "
            "usd = usd + excluded.usd",
            [(k, tokens, usd) for k in keys],
        )

    def _view(
        self, now: datetime, client_id: str, credential_id: str, prices: Mapping[str, ModelPrice]
    ) -> BudgetView:
        day, month = _windows(now)
        keys = _keys(day, month, client_id, credential_id)
        rows = dict.fromkeys(keys, (0, 0.0))
        for key, tokens, usd in self._db.execute(
            "SELECT key, tokens, usd FROM totals WHERE key IN (?, ?, ?, ?, ?)", keys
        ):
            rows[key] = (int(tokens), float(usd))
        (dt, du), (mt, mu), (cdt, cdu), (cmt, cmu), (_, cred) = (rows[k] for k in keys)
        return BudgetView(dt, du, mt, mu, cdt, cdu, cmt, cmu, cred, prices)

    def view(
        self,
        now: datetime,
        client_id: str,
        credential_id: str = "",
        prices: Mapping[str, ModelPrice] | None = None,
    ) -> BudgetView:
        """The snapshot :func:`decide` reads for this client."""
        with self._lock:
            return self._view(now, client_id, credential_id, prices or {})

    def reserve(
        self,
        policy: EffectivePolicy,
        *,
        client_id: str,
        tokens: int,
        usd: float,
        now: datetime,
        credential_id: str = "",
    ) -> Reservation:
        """Atomically check every budget and record a worst-case reservation.

        Raises :class:`ResourceExhausted` when it would overshoot; the caller then serves
        locally (or rejects) exactly as if :func:`decide` had said budget_exhausted.
        """
        if tokens < 0 or usd < 0:
            raise ValueError("a reservation cannot be negative")
        rule = policy.client_rule(client_id)
        share = rule.budget_share if rule is not None else 0.0
        day, month = _windows(now)
        rid = secrets.token_hex(12)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current = self._view(now, client_id, credential_id, {})
                if not budget_allows(policy, current, share, tokens, usd):
                    raise ResourceExhausted("the cloud budget is exhausted")
                self._db.execute(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                    (rid, client_id, credential_id, day, month, tokens, usd, now.isoformat()),
                )
                self._bump(_keys(day, month, client_id, credential_id), tokens, usd)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return Reservation(rid, tokens, usd)

    def _close_reservation(self, rid: str, state: str, tokens: int, usd: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT client, credential, day, month, tokens, usd FROM entries "
                    "WHERE id = ? AND state = 'reserved'",
                    (rid,),
                ).fetchone()
                if row is not None:  # unknown or already closed: nothing to change
                    client, credential, day, month, old_tokens, old_usd = row
                    self._db.execute(
                        "UPDATE entries SET tokens = ?, usd = ?, state = ? WHERE id = ?",
                        (tokens, usd, state, rid),
                    )
                    self._bump(
                        _keys(day, month, client, credential), tokens - old_tokens, usd - old_usd
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        """Replace a reservation by what the call really used (from the router's usage)."""
        self._close_reservation(reservation.id, "settled", max(tokens, 0), max(usd, 0.0))

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose call never reached the provider."""
        self._close_reservation(reservation.id, "released", 0, 0.0)

    def reconcile(self) -> int:
        """Settle every open reservation at its worst case; returns how many.

        Only for the daemon's start, before it reserves anything itself: an open
        reservation then belongs to a process that died mid-call.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE entries SET state = 'settled' WHERE state = 'reserved'"
                )
                count = cur.rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return max(count, 0)

    def usage(self, now: datetime) -> BudgetUsage:
        with self._lock:
            view = self._view(now, "", "", {})
            reserved = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE state = 'reserved'"
            ).fetchone()[0]
        return BudgetUsage(
            view.day_tokens, view.day_usd, view.month_tokens, view.month_usd, int(reserved)
        )
