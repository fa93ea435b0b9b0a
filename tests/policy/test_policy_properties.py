"""Properties over random requests, pressure, connectivity, policies, budgets and overrides.

- never cloud beyond the data class's furthest destination (policy and client rule);
- never cloud when air-gapped, whatever else is true;
- budgets never exceeded, with decisions feeding the real reservation ledger;
- local tightening never turns a decision into cloud that the signed policy alone would not.
"""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.credentials import CredentialScope
from edge_agent.policy import (
    DATA_CLASSES,
    BudgetLedger,
    Budgets,
    BudgetView,
    ClientRule,
    EffectivePolicy,
    LocalPolicyOverrides,
    ModelPrice,
    PressureView,
    RouteRequest,
    TimeWindow,
    WindowSet,
    budget_allows,
    class_rank,
    decide,
    merge_policy,
    resolve_data_class,
)

MODELS = ("org/big", "org/huge", "org/other")
CLIENTS = ("c1", "c2", "c3")
CONNECTIVITY = ("online", "degraded", "offline", "disabled")
FAST = settings(max_examples=250, deadline=None, database=None, derandomize=True)
MAX_CLASS = st.one_of(st.none(), st.sampled_from(DATA_CLASSES))


def mostly(value: Any, *others: Any, k: int = 10) -> st.SearchStrategy[Any]:
    """``value`` k times as likely as each of ``others``. Keeps the cloud branch reachable:
    uniform draws of a dozen independent knobs almost never permit escalation, and a property
    that never sees a cloud decision proves nothing."""
    return st.sampled_from((value,) * k + others)


prices = st.builds(
    ModelPrice,
    st.sampled_from((0.0, 0.2, 0.9, 3.0, 15.0)),
    st.sampled_from((0.0, 0.6, 2.0, 10.0, 40.0)),
)
budgets = st.builds(
    Budgets,
    mostly(1_000_000, 0, 2_000, 20_000, 60_000, k=12),
    mostly(5_000_000, 0, 10_000, 100_000, k=9),
    mostly(100.0, 0.0, 0.01, 0.5, 2.0, k=12),
    mostly(1000.0, 0.0, 0.1, 5.0, 20.0, k=12),
)
client_rules = st.builds(
    ClientRule,
    mostly(True, False),
    mostly("restricted", None, *DATA_CLASSES[:-1], k=4),
    mostly(1.0, 0.0, 0.1, 0.5, k=3),
)
windows = st.builds(
    TimeWindow,
    st.frozensets(st.integers(0, 6), min_size=1),
    st.integers(0, 1439),
    st.integers(1, 1440),
).filter(lambda w: w.start_minute != w.end_minute)
window_sets = st.builds(WindowSet, st.just(UTC), st.tuples(windows) | st.tuples(windows, windows))
NO_WINDOWS: tuple[WindowSet, ...] = ()


@st.composite
def policies(draw: st.DrawFn) -> EffectivePolicy:
    models = draw(st.dictionaries(st.sampled_from(MODELS), prices, min_size=1, max_size=3))
    default = draw(mostly(sorted(models)[0], None, *MODELS, k=3))
    clients = draw(st.dictionaries(st.sampled_from(CLIENTS), client_rules, max_size=3))
    if draw(mostly(True, False)):
        clients["*"] = draw(client_rules)
    return EffectivePolicy(
        version=draw(st.integers(1, 100)),
        air_gapped=draw(mostly(False, True)),
        escalation=draw(mostly(True, False)),
        max_cloud_class=draw(mostly("restricted", None, *DATA_CLASSES[:-1], k=4)),
        default_data_class=draw(st.sampled_from(DATA_CLASSES)),
        budgets=draw(budgets),
        models=models,
        default_model=default if default in models else None,
        provider=draw(st.sampled_from(("fastest", "together", "nebius"))),
        allowed_providers=draw(
            mostly(None, frozenset(), frozenset({"together"}), frozenset({"nebius", "together"}))
        ),
        clients=clients,
        window_sets=draw(
            st.one_of(st.just(NO_WINDOWS), st.just(NO_WINDOWS), st.tuples(window_sets))
        ),
        credential_cap_usd=draw(mostly(None, 0.0, 0.05, 1.0, k=3)),
    )


requests = st.builds(
    RouteRequest,
    client_id=st.sampled_from(CLIENTS),
    data_class=mostly("public", None, "", "bogus", *DATA_CLASSES, k=12),
    route=mostly("auto", "local_only", "large_model", k=8),
    prompt_tokens=st.integers(0, 9000),
    max_tokens=st.integers(0, 4000),
    deadline_s=st.none() | st.floats(0, 30),
    local_context_length=st.integers(512, 8192),
    local_queue_wait_s=st.floats(0, 60),
    model=st.sampled_from((None, "local-model", *MODELS)),
)
# Mostly under pressure: a request with no need never escalates, which proves nothing.
pressures = st.builds(
    PressureView, mostly("critical", "ok", "elevated", k=4), mostly(True, False, k=3)
)
CONNECTIVITY_DRAW = mostly("online", *CONNECTIVITY, k=8)
budget_views = st.builds(
    BudgetView,
    mostly(0, 1_000, 19_000, 59_000, k=3),
    mostly(0.0, 0.01, 0.49, 1.99, k=3),
    mostly(0, 9_000, 99_000, k=3),
    mostly(0.0, 0.09, 4.99, 19.99, k=3),
    mostly(0, 1_000, 19_000, k=3),
    mostly(0.0, 0.01, 0.49, k=3),
    mostly(0, 9_000, 99_000, k=3),
    mostly(0.0, 0.09, 4.99, k=3),
    mostly(0.0, 0.04, 0.99, k=3),
    st.dictionaries(st.sampled_from(MODELS), prices, max_size=2),
)
moments = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
overrides = st.builds(
    LocalPolicyOverrides,
    air_gapped=mostly(False, True),
    escalation=mostly(True, False),
    max_cloud_data_class=mostly("restricted", None, *DATA_CLASSES[:-1], k=6),
    default_data_class=mostly(None, *DATA_CLASSES, k=6),
    daily_tokens=mostly(None, 0, 5_000, 100_000, k=3),
    monthly_tokens=mostly(None, 0, 50_000, k=3),
    daily_usd=mostly(None, 0.0, 0.05, 10.0, k=3),
    monthly_usd=mostly(None, 0.0, 1.0, k=3),
    allowed_models=mostly(None, frozenset(), frozenset(MODELS[:1]), frozenset(MODELS[1:]), k=3),
    allowed_providers=mostly(None, frozenset({"together"}), frozenset({"x"}), k=3),
    deny_clients=mostly(frozenset(), frozenset({"c1"}), frozenset({"*"}), k=3),
    window_set=st.one_of(st.none(), st.none(), st.none(), window_sets),
)
scopes = st.builds(
    CredentialScope,
    mostly(frozenset(MODELS), frozenset(), frozenset(MODELS[:1]), k=3),
    st.frozensets(st.sampled_from(("together", "nebius"))),
    st.none() | st.floats(0, 10),
    st.none(),
)


def _within_class_limits(d: Any, r: RouteRequest, p: EffectivePolicy) -> bool:
    rank = class_rank(resolve_data_class(r.data_class, p))
    rule = p.client_rule(r.client_id)
    return (
        rule is not None
        and rank <= class_rank(p.max_cloud_class)
        and rank <= class_rank(rule.max_cloud_data_class)
    )


def test_cloud_only_when_everything_permits() -> None:
    seen = {"cloud": 0}

    @FAST
    @given(requests, pressures, CONNECTIVITY_DRAW, policies(), budget_views, moments)
    def check(
        r: RouteRequest,
        pr: PressureView,
        conn: str,
        p: EffectivePolicy,
        b: BudgetView,
        now: datetime,
    ) -> None:
        d = decide(r, pr, conn, p, b, now)
        assert d == decide(r, pr, conn, p, b, now)  # pure
        if d.destination != "cloud":
            return
        seen["cloud"] += 1
        assert not p.air_gapped
        assert r.route != "local_only"
        assert conn in ("online", "degraded")
        assert _within_class_limits(d, r, p)
        assert p.in_window(now)
        assert d.cloud_model in p.models
        if p.allowed_providers is not None:
            assert d.cloud_provider in p.allowed_providers
        rule = p.client_rule(r.client_id)
        assert rule is not None
        assert budget_allows(p, b, rule.budget_share, d.estimated_tokens, d.estimated_usd)
        assert d.estimated_tokens >= r.prompt_tokens + r.max_tokens

    check()
    assert seen["cloud"] >= 10, seen  # the property was exercised, not vacuously true


def test_air_gapped_is_never_cloud() -> None:
    seen = {"cloud_when_not_gapped": 0}

    @FAST
    @given(requests, pressures, CONNECTIVITY_DRAW, policies(), budget_views, moments)
    def check(
        r: RouteRequest,
        pr: PressureView,
        conn: str,
        p: EffectivePolicy,
        b: BudgetView,
        now: datetime,
    ) -> None:
        open_p = dataclasses.replace(p, air_gapped=False)
        if decide(r, pr, conn, open_p, b, now).destination == "cloud":
            seen["cloud_when_not_gapped"] += 1
        gapped = dataclasses.replace(p, air_gapped=True)
        assert decide(r, pr, conn, gapped, b, now).destination != "cloud"
        # the local air-gap switch wins over any signed policy and any credential
        scope = CredentialScope(frozenset(MODELS), frozenset(), None, None)
        merged = merge_policy(open_p, LocalPolicyOverrides(air_gapped=True), scope)
        assert decide(r, pr, conn, merged, b, now).destination != "cloud"

    check()
    assert seen["cloud_when_not_gapped"] >= 10, seen  # the same inputs did escalate ungapped


def test_local_tightening_never_loosens() -> None:
    seen = {"cloud_tightened": 0, "cloud_baseline_only": 0}

    @FAST
    @given(
        requests, pressures, CONNECTIVITY_DRAW, policies(), overrides, scopes, budget_views, moments
    )
    def check(
        r: RouteRequest,
        pr: PressureView,
        conn: str,
        signed: EffectivePolicy,
        local: LocalPolicyOverrides,
        scope: CredentialScope,
        b: BudgetView,
        now: datetime,
    ) -> None:
        baseline = merge_policy(signed, LocalPolicyOverrides(), scope)
        tightened = merge_policy(signed, local, scope)
        # structurally stricter
        assert tightened.air_gapped >= baseline.air_gapped
        assert tightened.escalation <= baseline.escalation
        assert class_rank(tightened.max_cloud_class) <= class_rank(baseline.max_cloud_class)
        assert class_rank(tightened.default_data_class) >= class_rank(baseline.default_data_class)
        assert set(tightened.models) <= set(baseline.models)
        for name in ("daily_tokens", "monthly_tokens", "daily_usd", "monthly_usd"):
            assert getattr(tightened.budgets, name) <= getattr(baseline.budgets, name)
        # behaviourally: cloud under the tightened policy implies cloud under the signed one
        d = decide(r, pr, conn, tightened, b, now)
        base_d = decide(r, pr, conn, baseline, b, now)
        if d.destination == "cloud":
            seen["cloud_tightened"] += 1
            assert base_d.destination == "cloud"
            assert class_rank(d.data_class) >= class_rank(base_d.data_class)
        elif base_d.destination == "cloud":
            seen["cloud_baseline_only"] += 1

    check()
    assert seen["cloud_tightened"] >= 4, seen
    assert seen["cloud_baseline_only"] >= 4, seen  # the overrides really did tighten something


def test_budgets_never_exceeded_with_ledger() -> None:
    seen = {"reserved": 0, "exhausted": 0}
    start = datetime(2026, 5, 31, 20, 0, tzinfo=UTC)

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        policies(),
        st.lists(
            st.tuples(requests, pressures, st.floats(0, 1.0), st.integers(0, 26 * 3600)),
            min_size=1,
            max_size=25,
        ),
    )
    def check(
        p: EffectivePolicy, steps: list[tuple[RouteRequest, PressureView, float, int]]
    ) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = BudgetLedger(Path(tmp) / "ledger.sqlite3")
            try:
                for r, pr, used_fraction, offset in sorted(steps, key=lambda s: s[3]):
                    now = start + timedelta(seconds=offset)
                    d = decide(r, pr, "online", p, ledger.view(now, r.client_id), now)
                    if d.blocker == "budget_exhausted":
                        seen["exhausted"] += 1
                    if d.destination != "cloud":
                        continue
                    # single writer: the ledger must agree with the snapshot decide saw
                    res = ledger.reserve(
                        p,
                        client_id=r.client_id,
                        tokens=d.estimated_tokens,
                        usd=d.estimated_usd,
                        now=now,
                    )
                    seen["reserved"] += 1
                    ledger.settle(
                        res,
                        tokens=int(d.estimated_tokens * used_fraction),
                        usd=d.estimated_usd * used_fraction,
                    )
                    after = ledger.view(now, r.client_id)
                    bud = p.budgets
                    assert after.day_tokens <= bud.daily_tokens
                    assert after.month_tokens <= bud.monthly_tokens
                    assert after.day_usd <= bud.daily_usd + 1e-9
                    assert after.month_usd <= bud.monthly_usd + 1e-9
                    rule = p.client_rule(r.client_id)
                    assert rule is not None
                    assert after.client_day_tokens <= rule.budget_share * bud.daily_tokens + 1e-9
                    assert after.client_month_usd <= rule.budget_share * bud.monthly_usd + 1e-9
                    if p.credential_cap_usd is not None:
                        assert after.credential_usd <= p.credential_cap_usd + 1e-9
            finally:
                ledger.close()

    check()
    assert seen["reserved"] >= 3, seen
    assert seen["exhausted"] >= 1, seen


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None)
@given(
    requests,
    pressures,
    CONNECTIVITY_DRAW,
    policies(),
    overrides,
    scopes,
    budget_views,
    moments,
)
def test_soak_tightening_and_class_limits(
    r: RouteRequest,
    pr: PressureView,
    conn: str,
    signed: EffectivePolicy,
    local: LocalPolicyOverrides,
    scope: CredentialScope,
    b: BudgetView,
    now: datetime,
) -> None:
    tightened = merge_policy(signed, local, scope)
    d = decide(r, pr, conn, tightened, b, now)
    if d.destination == "cloud":
        assert _within_class_limits(d, r, tightened)
        assert (
            decide(
                r, pr, conn, merge_policy(signed, LocalPolicyOverrides(), scope), b, now
            ).destination
            == "cloud"
        )
