"""The pure decision: each need, each blocker, and their machine-readable reasons."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from policy_support import CLINIC

from edge_agent.credentials import CredentialScope
from edge_agent.policy import (
    Budgets,
    BudgetView,
    ClientRule,
    EffectivePolicy,
    LocalPolicyOverrides,
    ModelPrice,
    PressureView,
    RouteRequest,
    decide,
    merge_policy,
    parse_policy,
)

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
WED_NOON = datetime(2026, 6, 3, 10, 0, tzinfo=UTC)  # 12:00 in Berlin
OK = PressureView("ok", True)
CRITICAL = PressureView("critical", True)
FULL = PressureView("critical", False)

OPEN = EffectivePolicy(
    version=1,
    escalation=True,
    max_cloud_class="restricted",
    default_data_class="restricted",
    budgets=Budgets(1_000_000, 10_000_000, 100.0, 1000.0),
    models={MODEL: ModelPrice(1.0, 2.0), "small/cloud": ModelPrice(0.1, 0.1)},
    default_model=MODEL,
    provider="cheapest",
    clients={"*": ClientRule(True, "restricted", 1.0)},
)


def req(**kw: Any) -> RouteRequest:
    base: dict[str, Any] = {
        "client_id": "c1",
        "data_class": "public",
        "route": "auto",
        "prompt_tokens": 100,
        "max_tokens": 200,
        "deadline_s": None,
        "local_context_length": 4096,
        "local_queue_wait_s": 0.0,
        "model": None,
    }
    base.update(kw)
    return RouteRequest(**base)


def run(
    r: RouteRequest,
    pressure: PressureView = OK,
    conn: str = "online",
    policy: EffectivePolicy = OPEN,
    budget: BudgetView | None = None,
) -> str:
    return decide(r, pressure, conn, policy, budget or BudgetView(), WED_NOON).reason


def test_local_when_local_serves_well() -> None:
    d = decide(req(), OK, "online", OPEN, BudgetView(), WED_NOON)
    assert (d.destination, d.reason, d.data_class) == ("local", "local.default", "public")
    assert run(req(), PressureView("elevated", True)) == "local.default"


@pytest.mark.parametrize(
    ("request_", "pressure", "reason"),
    [
        (req(prompt_tokens=4000, max_tokens=200), OK, "cloud.context_exceeded"),
        (req(), FULL, "cloud.local_not_admissible"),
        (req(route="large_model"), OK, "cloud.large_model_requested"),
        (req(), CRITICAL, "cloud.pressure_critical"),
        (req(deadline_s=1.0, local_queue_wait_s=3.0), OK, "cloud.deadline_at_risk"),
    ],
)
def test_each_need_escalates(request_: RouteRequest, pressure: PressureView, reason: str) -> None:
    d = decide(request_, pressure, "online", OPEN, BudgetView(), WED_NOON)
    assert d.destination == "cloud"
    assert d.reason == reason
    assert d.cloud_model == MODEL
    assert d.cloud_provider == "cheapest"
    assert d.estimated_tokens == request_.prompt_tokens + request_.max_tokens
    assert d.estimated_usd == pytest.approx(
        (request_.prompt_tokens * 1.0 + request_.max_tokens * 2.0) / 1e6
    )


def test_deadline_met_stays_local() -> None:
    assert run(req(deadline_s=5.0, local_queue_wait_s=3.0)) == "local.default"


def test_requested_cloud_model_is_used_when_allowed() -> None:
    d = decide(
        req(route="large_model", model="small/cloud"), OK, "online", OPEN, BudgetView(), WED_NOON
    )
    assert d.cloud_model == "small/cloud"
    d = decide(
        req(route="large_model", model="local-mistral"), OK, "online", OPEN, BudgetView(), WED_NOON
    )
    assert d.cloud_model == MODEL


@pytest.mark.parametrize(
    ("change", "blocker"),
    [
        ({"route": "local_only"}, "escalation_forbidden"),
        ({"policy": {"air_gapped": True}}, "air_gapped"),
        ({"policy": {"escalation": False}}, "escalation_disabled"),
        (
            {"policy": {"max_cloud_class": "internal"}, "data_class": "confidential"},
            "data_class_local_only",
        ),
        ({"policy": {"max_cloud_class": None}}, "data_class_local_only"),
        (
            {"data_class": None, "policy": {"max_cloud_class": "confidential"}},
            "data_class_local_only",
        ),
        (
            {"data_class": "top-secret", "policy": {"max_cloud_class": "confidential"}},
            "data_class_local_only",
        ),
        ({"policy": {"clients": {}}}, "client_not_allowed"),
        (
            {
                "policy": {
                    "clients": {
                        "c1": ClientRule(False, "restricted", 1.0),
                        "*": ClientRule(True, "restricted", 1.0),
                    }
                }
            },
            "client_not_allowed",
        ),
        (
            {
                "policy": {"clients": {"*": ClientRule(True, "public", 1.0)}},
                "data_class": "internal",
            },
            "client_data_class",
        ),
        ({"policy": {"models": {}, "default_model": None}}, "no_cloud_model"),
        ({"conn": "disabled"}, "cloud_disabled"),
        ({"conn": "offline"}, "offline"),
        ({"conn": "weird"}, "offline"),
        ({"budget": BudgetView(day_tokens=999_900)}, "budget_exhausted"),
        ({"budget": BudgetView(month_usd=999.9999)}, "budget_exhausted"),
        (
            {"budget": BudgetView(credential_usd=4.9999), "policy": {"credential_cap_usd": 5.0}},
            "budget_exhausted",
        ),
        (
            {
                "budget": BudgetView(client_day_tokens=100_000),
                "policy": {"clients": {"*": ClientRule(True, "restricted", 0.1)}},
            },
            "budget_exhausted",
        ),
    ],
)
def test_each_blocker(change: dict[str, Any], blocker: str) -> None:
    policy = dataclasses.replace(OPEN, **change.get("policy", {}))
    fields = {k: v for k, v in change.items() if k in ("route", "data_class")}
    conn = change.get("conn", "online")
    budget = change.get("budget")
    # a soft need (pressure) falls back to local ...
    assert (
        run(req(**fields), CRITICAL, conn, policy, budget)
        == f"local.pressure_critical_but_{blocker}"
    )
    # ... a hard one (prompt beyond the local context) is rejected
    assert (
        run(req(prompt_tokens=5000, **fields), OK, conn, policy, budget)
        == f"reject.context_exceeded_and_{blocker}"
    )


def test_degraded_connectivity_only_for_hard_needs() -> None:
    assert run(req(), CRITICAL, "degraded") == "local.pressure_critical_but_connectivity_degraded"
    assert run(req(prompt_tokens=5000), OK, "degraded") == "cloud.context_exceeded"


def test_router_price_raises_estimate() -> None:
    budget = BudgetView(prices={MODEL: ModelPrice(10.0, 1.0)})
    d = decide(req(route="large_model"), OK, "online", OPEN, budget, WED_NOON)
    assert d.estimated_usd == pytest.approx((100 * 10.0 + 200 * 2.0) / 1e6)


def test_allowed_providers_force_an_explicit_provider() -> None:
    policy = dataclasses.replace(OPEN, allowed_providers=frozenset({"nebius", "together"}))
    d = decide(req(route="large_model"), OK, "online", policy, BudgetView(), WED_NOON)
    assert d.cloud_provider == "nebius"


def test_clinic_scenarios() -> None:
    scope = CredentialScope(frozenset({MODEL}), frozenset(), 20.0, None)
    clinic = merge_policy(parse_policy(CLINIC).policy, LocalPolicyOverrides(), scope)
    # public FAQ from the kiosk escalates under pressure during opening hours
    assert run(req(client_id="faq-kiosk"), CRITICAL, policy=clinic) == "cloud.pressure_critical"
    # patient data (restricted) never leaves, even when it does not fit locally
    assert (
        run(
            req(client_id="faq-kiosk", data_class="restricted", prompt_tokens=5000),
            OK,
            policy=clinic,
        )
        == "reject.context_exceeded_and_data_class_local_only"
    )
    # unlabelled requests are restricted by default
    assert run(req(client_id="faq-kiosk", data_class=None), CRITICAL, policy=clinic).endswith(
        "data_class_local_only"
    )
    # other clients fall back to the "*" rule: no escalation
    assert run(req(client_id="ward-3"), CRITICAL, policy=clinic).endswith("client_not_allowed")
    # Sunday: outside the escalation window
    sunday = datetime(2026, 6, 7, 10, 0, tzinfo=UTC)
    d = decide(req(client_id="faq-kiosk"), CRITICAL, "online", clinic, BudgetView(), sunday)
    assert d.reason == "local.pressure_critical_but_outside_time_window"
    # no credential installed: nothing to escalate with
    no_cred = merge_policy(parse_policy(CLINIC).policy, LocalPolicyOverrides(), None)
    assert run(req(client_id="faq-kiosk"), CRITICAL, policy=no_cred).endswith("escalation_disabled")


def test_no_policy_means_local_only() -> None:
    policy = merge_policy(
        None, LocalPolicyOverrides(), CredentialScope(frozenset({MODEL}), frozenset(), None, None)
    )
    assert run(req(prompt_tokens=5000), OK, policy=policy).startswith(
        "reject.context_exceeded_and_"
    )
    assert run(req(), CRITICAL, policy=policy).startswith("local.")
