"""Deadline budgets and catalog checks in the decision, the local pace, crash reconciliation
of the ledger, and chat records that say every leg (with old logs still verifying)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.audit import AuditAttempt, AuditEntry, AuditLog, record_hash
from edge_agent.policy import (
    BLOCKERS,
    MIN_CLOUD_WINDOW_S,
    BudgetLedger,
    Budgets,
    BudgetView,
    ClientRule,
    EffectivePolicy,
    LocalPace,
    ModelPrice,
    PressureView,
    RouteRequest,
    decide,
)

MODEL = "org/big-model"
NOW = datetime(2026, 6, 3, 10, 0, tzinfo=UTC)
POLICY = EffectivePolicy(
    version=1,
    escalation=True,
    max_cloud_class="public",
    default_data_class="restricted",
    budgets=Budgets(1_000_000, 10_000_000, 100.0, 1000.0),
    models={MODEL: ModelPrice(1.0, 2.0)},
    default_model=MODEL,
    provider="fastest",
    clients={"*": ClientRule(True, "public", 1.0)},
)
OK = PressureView("ok", True)
BUDGET = BudgetView()


def _req(**kw: Any) -> RouteRequest:
    base: dict[str, Any] = {
        "client_id": "c1",
        "data_class": "public",
        "route": "large_model",
        "prompt_tokens": 100,
        "max_tokens": 200,
        "deadline_s": None,
        "local_context_length": 4096,
        "local_queue_wait_s": 0.0,
        "local_answer_s": 1.0,
    }
    base.update(kw)
    return RouteRequest(**base)


def test_a_deadline_that_leaves_no_cloud_window_keeps_a_soft_need_local() -> None:
    short = decide(_req(deadline_s=1.0 + MIN_CLOUD_WINDOW_S / 2), OK, "online", POLICY, BUDGET, NOW)
    assert (short.destination, short.reason) == (
        "local",
        "local.large_model_requested_but_deadline_too_short",
    )
    assert "deadline_too_short" in BLOCKERS
    roomy = decide(_req(deadline_s=1.0 + MIN_CLOUD_WINDOW_S * 2), OK, "online", POLICY, BUDGET, NOW)
    assert roomy.destination == "cloud"
    # No deadline, or no estimate yet: nothing to budget.
    assert decide(_req(), OK, "online", POLICY, BUDGET, NOW).destination == "cloud"


def test_a_hard_need_gets_the_cloud_whatever_the_deadline() -> None:
    # The prompt does not fit locally: a local answer is no alternative to wait for.
    d = decide(
        _req(route="auto", prompt_tokens=5000, deadline_s=0.5, local_answer_s=9.0),
        OK,
        "online",
        POLICY,
        BUDGET,
        NOW,
    )
    assert (d.destination, d.need) == ("cloud", "context_exceeded")


@given(
    deadline=st.floats(0.0, 30.0),
    local=st.floats(0.0, 30.0),
)
def test_escalation_always_leaves_the_local_answer_its_time(deadline: float, local: float) -> None:
    d = decide(_req(deadline_s=deadline, local_answer_s=local), OK, "online", POLICY, BUDGET, NOW)
    if d.destination == "cloud":
        assert deadline - local >= MIN_CLOUD_WINDOW_S
    else:
        assert d.reason == "local.large_model_requested_but_deadline_too_short"


def test_the_catalog_check_can_name_a_provider_or_block() -> None:
    seen: list[tuple[str, str | None]] = []

    def pick(model: str, provider: str | None) -> tuple[str | None, str | None]:
        seen.append((model, provider))
        return "together", None

    d = decide(_req(), OK, "online", POLICY, BUDGET, NOW, cloud_check=pick)
    assert (d.destination, d.cloud_provider) == ("cloud", "together")
    assert seen == [(MODEL, "fastest")]
    for blocker in ("model_unavailable", "no_capable_provider"):

        def refuse(model: str, provider: str | None, b: str = blocker) -> tuple[str | None, str]:
            return provider, b

        d = decide(
            _req(),
            OK,
            "online",
            POLICY,
            BUDGET,
            NOW,
            cloud_check=refuse,
        )
        assert d.reason == f"local.large_model_requested_but_{blocker}"
    # A request the policy already keeps local never asks the catalog.
    seen.clear()
    decide(_req(data_class="restricted"), OK, "online", POLICY, BUDGET, NOW, cloud_check=pick)
    assert seen == []


def test_the_local_pace_learns_from_answers() -> None:
    pace = LocalPace(first_token_s=2.0, per_token_s=0.5, typical_tokens=100)
    guess = pace.answer_s(16)
    pace.observe(first_token_s=0.02, total_s=0.17, completion_tokens=16)
    measured = pace.answer_s(16)
    assert measured < guess
    # 0.02 s + 15 × 0.01 s, with its reserve: the reserve keeps it above the raw time.
    assert 0.17 < measured < 1.0
    assert pace.answer_s(64) > pace.answer_s(16)  # more tokens may take longer
    assert pace.answer_s(16, queue_wait_s=2.0) > measured + 2.0  # a queue delays it
    pace.observe(first_token_s=-1, total_s=0.0, completion_tokens=0)  # nonsense is ignored
    assert pace.estimate.samples == 1
    # One outlier moves the estimate by a fifth, not all the way.
    pace.observe(first_token_s=10.0, total_s=10.15, completion_tokens=16)
    assert pace.estimate.first_token_s == pytest.approx(0.02 + 0.2 * (10.0 - 0.02))


def test_reservations_left_by_a_crash_are_settled_at_worst_case_at_start(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    ledger = BudgetLedger(db)
    done = ledger.reserve(POLICY, client_id="a", tokens=500, usd=0.5, now=NOW)
    ledger.settle(done, tokens=100, usd=0.1)
    ledger.reserve(POLICY, client_id="a", tokens=300, usd=0.3, now=NOW)  # the process dies
    ledger.close()
    restarted = BudgetLedger(db)
    assert restarted.usage(NOW).reserved == 1
    assert restarted.reconcile() == 1
    usage = restarted.usage(NOW)
    # Nobody knows what the provider did with it: it stays counted at its worst case.
    assert (usage.reserved, usage.day_tokens) == (0, 400)
    assert usage.day_usd == pytest.approx(0.4)
    assert restarted.reconcile() == 0
    restarted.close()


def _chat_entry(i: int) -> AuditEntry:
    return AuditEntry(
        request_id=f"req-{i}",
        client_id="c1",
        data_class="public",
        destination="cloud",
        reason="cloud.large_model_requested",
        tokens_in=22,
        tokens_out=9,
        cost_usd=0.0005,
        model=MODEL,
        provider="novita",
        left_box=True,
        fallback_reason="local.cloud_failover",
        attempts=(
            AuditAttempt("cloud", MODEL, "novita", "cut", 11, 5, 0.0005, "worst_case", True, 200),
            AuditAttempt("local", "demo@1", "cpu", "ok", 11, 4),
        ),
    )


_OLD_SCHEMA = """
CREATE TABLE records (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, request_id TEXT NOT NULL,
    client_id TEXT NOT NULL, data_class TEXT NOT NULL, destination TEXT NOT NULL,
    reason TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, prompt TEXT,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
"""


def test_a_log_from_before_the_chat_fields_keeps_verifying(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(_OLD_SCHEMA)
    fields: dict[str, Any] = {
        "seq": 1,
        "time": "2026-06-01T12:00:00.000000+00:00",
        "request_id": "old",
        "client_id": "c1",
        "data_class": "public",
        "destination": "local",
        "reason": "local.default",
        "tokens_in": 1,
        "tokens_out": 2,
        "cost_usd": 0.0,
        "model": "demo@1",
        "provider": "cpu",
        "prompt": None,
        "prev_hash": "0" * 64,
    }
    fields["hash"] = record_hash(fields)  # the old hash, without the new keys
    con.execute(
        "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", tuple(fields.values())
    )
    con.commit()
    con.close()
    log = AuditLog(path)
    log.append(_chat_entry(2))
    assert log.verify().ok and log.verify().records == 2
    old, new = log.records()
    assert (old.left_box, old.attempts, old.attempt_list()) == (None, None, [])
    assert new.left_box == 1 and new.fallback_reason == "local.cloud_failover"
    legs = new.attempt_list()
    assert [(a["destination"], a["outcome"], a["usage"]) for a in legs] == [
        ("cloud", "cut", "worst_case"),
        ("local", "ok", "reported"),
    ]
    assert json.loads(new.to_json())["left_box"] == 1
    log.close()


def test_editing_a_leg_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path)
    for i in range(3):
        log.append(_chat_entry(i))
    log.close()
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER records_no_update")
    # Someone hides that the prompt left the box.
    con.execute("UPDATE records SET left_box = 0, attempts = '[]' WHERE seq = 2")
    con.commit()
    con.close()
    log = AuditLog(path)
    result = log.verify()
    assert (result.ok, result.first_broken_seq) == (False, 2)
    log.close()
