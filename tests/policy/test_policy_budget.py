"""The budget ledger: persistence, UTC windows, reserve/settle/release, no overshoot under races."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.errors import ResourceExhausted
from edge_agent.policy import BudgetLedger, Budgets, ClientRule, EffectivePolicy, ModelPrice

NOW = datetime(2026, 3, 31, 23, 50, tzinfo=UTC)
POLICY = EffectivePolicy(
    version=1,
    escalation=True,
    max_cloud_class="public",
    budgets=Budgets(daily_tokens=10_000, monthly_tokens=25_000, daily_usd=1.0, monthly_usd=10.0),
    models={"m": ModelPrice(1.0, 1.0)},
    default_model="m",
    clients={"*": ClientRule(True, "public", 1.0), "half": ClientRule(True, "public", 0.5)},
)


def _assert_totals_match_entries(db: Path) -> None:
    """The running totals the snapshot reads agree with the entries they summarise."""
    con = sqlite3.connect(db)
    for key, tokens, usd in con.execute("SELECT key, tokens, usd FROM totals"):
        kind, *parts = key.split("|")
        where = {
            "day": "day = ?",
            "month": "month = ?",
            "client-day": "day = ? AND client = ?",
            "client-month": "month = ? AND client = ?",
            "credential": "credential = ?",
        }[kind]
        raw = con.execute(
            f"SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM entries WHERE {where}",  # noqa: S608
            parts,
        ).fetchone()
        assert tokens == raw[0], key
        assert usd == pytest.approx(raw[1]), key
    con.close()


def test_reserve_settle_release_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    ledger = BudgetLedger(db)
    r1 = ledger.reserve(POLICY, client_id="a", tokens=3000, usd=0.3, now=NOW)
    r2 = ledger.reserve(POLICY, client_id="b", tokens=3000, usd=0.3, now=NOW)
    view = ledger.view(NOW, "a")
    assert (view.day_tokens, view.client_day_tokens) == (6000, 3000)
    ledger.settle(r1, tokens=1200, usd=0.12)
    ledger.release(r2)
    ledger.settle(r2, tokens=999, usd=9.0)  # a released reservation cannot be settled later
    ledger.reserve(POLICY, client_id="a", tokens=10, usd=0.001, now=NOW - timedelta(days=20))
    _assert_totals_match_entries(db)
    usage = ledger.usage(NOW)
    assert (usage.day_tokens, usage.reserved) == (1200, 1)  # the one 20 days earlier is open
    assert usage.day_usd == pytest.approx(0.12)
    ledger.close()
    again = BudgetLedger(db)  # a restart keeps the spend
    assert again.view(NOW, "a").day_tokens == 1200
    # the next UTC day starts fresh; the month (April) too
    tomorrow = NOW + timedelta(minutes=20)
    assert again.view(tomorrow, "a").day_tokens == 0
    assert again.view(tomorrow, "a").month_tokens == 0
    again.close()


def test_reservation_refused_when_it_would_overshoot(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite3")
    ledger.reserve(POLICY, client_id="a", tokens=9000, usd=0.1, now=NOW)
    with pytest.raises(ResourceExhausted):
        ledger.reserve(POLICY, client_id="a", tokens=1001, usd=0.1, now=NOW)
    ledger.reserve(POLICY, client_id="a", tokens=1000, usd=0.1, now=NOW)
    # client share: "half" may use at most 5000 tokens a day, counted on its own
    ledger2 = BudgetLedger(tmp_path / "l2.sqlite3")
    ledger2.reserve(POLICY, client_id="half", tokens=5000, usd=0.1, now=NOW)
    with pytest.raises(ResourceExhausted):
        ledger2.reserve(POLICY, client_id="half", tokens=1, usd=0.0, now=NOW)
    ledger2.reserve(POLICY, client_id="other", tokens=5000, usd=0.1, now=NOW)
    # a client without any rule may not spend at all
    strict = dataclasses.replace(POLICY, clients={})
    with pytest.raises(ResourceExhausted):
        ledger2.reserve(strict, client_id="x", tokens=1, usd=0.0, now=NOW)
    ledger.close()
    ledger2.close()


def test_credential_cap_counts_lifetime_spend(tmp_path: Path) -> None:
    capped = dataclasses.replace(POLICY, credential_cap_usd=0.5)
    ledger = BudgetLedger(tmp_path / "l.sqlite3")
    ledger.reserve(capped, client_id="a", tokens=10, usd=0.3, now=NOW, credential_id="env1")
    later = NOW + timedelta(days=3)  # another day and month: the cap still remembers
    with pytest.raises(ResourceExhausted):
        ledger.reserve(capped, client_id="a", tokens=10, usd=0.3, now=later, credential_id="env1")
    ledger.reserve(capped, client_id="a", tokens=10, usd=0.3, now=later, credential_id="env2")
    ledger.close()


def test_threads_on_separate_connections_never_overshoot(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite3"
    ledgers = [BudgetLedger(db) for _ in range(4)]
    granted: list[int] = []
    lock = threading.Lock()

    def worker(ledger: BudgetLedger) -> None:
        for _ in range(40):
            try:
                ledger.reserve(POLICY, client_id="t", tokens=300, usd=0.001, now=NOW)
            except ResourceExhausted:
                continue
            with lock:
                granted.append(300)

    threads = [threading.Thread(target=worker, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 9900  # exactly as many 300-token reservations as fit in 10 000
    assert ledgers[0].view(NOW, "t").day_tokens == 9900
    for led in ledgers:
        led.close()


def test_processes_never_overshoot(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite3"
    BudgetLedger(db).close()
    code = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from edge_agent.errors import ResourceExhausted
from edge_agent.policy import BudgetLedger, Budgets, ClientRule, EffectivePolicy
policy = EffectivePolicy(
    budgets=Budgets(10_000, 25_000, 1.0, 10.0), clients={"*": ClientRule(True, "public", 1.0)}
)
now = datetime(2026, 3, 31, 23, 50, tzinfo=UTC)
ledger = BudgetLedger(Path(sys.argv[1]))
ok = 0
for _ in range(30):
    try:
        ledger.reserve(policy, client_id="p", tokens=700, usd=0.05, now=now)
        ok += 1
    except ResourceExhausted:
        pass
print(ok)
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    granted = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    # 10 000 tokens / 700 = 14; 1.0 USD / 0.05 = 20: the token budget binds
    assert granted == 14
    ledger = BudgetLedger(db)
    view = ledger.view(NOW, "p")
    assert view.day_tokens == 9800
    _assert_totals_match_entries(db)
    assert view.day_usd <= 1.0
    ledger.close()
