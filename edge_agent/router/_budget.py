"""The cloud budget ledger: SQLite (WAL, synchronous=FULL), reserve before send, settle after.

A cloud call first reserves its worst case (prompt + max_tokens at the model's worst-case
price) inside a ``BEGIN IMMEDIATE`` transaction that re-checks every budget against the
rows on disk, so concurrent requests — threads or processes — cannot together overshoot.
After the call, :meth:`BudgetLedger.settle` replaces the reservation with the real usage,
or :meth:`BudgetLedger.release` drops it when nothing was sent. Reservations left by a crash
stay counted at their worst case (never undercount). Windows are the UTC day and month of
the reservation.
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
from edge_agent.router._decide import BudgetView, budget_allows
from edge_agent.router._model import EffectivePolicy, ModelPrice

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
CREATE INDEX IF NOT EXISTS entries_day ON entries (day, client);
CREATE INDEX IF NOT EXISTS entries_month ON entries (month, client);
CREATE INDEX IF NOT EXISTS entries_credential ON entries (credential);
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

    def _sums(self, where: str, args: tuple[str, ...]) -> tuple[int, float]:
        row = self._db.execute(
            f"SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0.0) FROM entries WHERE {where}",  # noqa: S608 (fixed fragments)
            args,
        ).fetchone()
        return int(row[0]), float(row[1])

    def _view(
        self, now: datetime, client_id: str, credential_id: str, prices: Mapping[str, ModelPrice]
    ) -> BudgetView:
        day, month = _windows(now)
        dt, du = self._sums("day = ?", (day,))
        mt, mu = self._sums("month = ?", (month,))
        cdt, cdu = self._sums("day = ? AND client = ?", (day, client_id))
        cmt, cmu = self._sums("month = ? AND client = ?", (month, client_id))
        _, cred = self._sums("credential = ?", (credential_id,))
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
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return Reservation(rid, tokens, usd)

    def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        """Replace a reservation by what the call really used (from the router's usage)."""
        with self._lock:
            self._db.execute(
                "UPDATE entries SET tokens = ?, usd = ?, state = 'settled' "
                "WHERE id = ? AND state = 'reserved'",
                (max(tokens, 0), max(usd, 0.0), reservation.id),
            )

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose call never reached the provider."""
        with self._lock:
            self._db.execute(
                "UPDATE entries SET tokens = 0, usd = 0, state = 'released' "
                "WHERE id = ? AND state = 'reserved'",
                (reservation.id,),
            )

    def usage(self, now: datetime) -> BudgetUsage:
        day, month = _windows(now)
        with self._lock:
            dt, du = self._sums("day = ?", (day,))
            mt, mu = self._sums("month = ?", (month,))
            reserved = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE state = 'reserved'"
            ).fetchone()[0]
        return BudgetUsage(dt, du, mt, mu, int(reserved))
