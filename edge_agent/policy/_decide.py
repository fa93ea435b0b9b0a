"""The routing decision: a pure function of frozen inputs, cheap enough for every request.

Local first. A request escalates only when the local path cannot serve it well (a *need*)
and nothing forbids it (no *blocker*). A hard need (the prompt does not fit the local
context, or the local engine refuses new work) with a blocker is rejected; a soft need
(pressure, deadline at risk, larger model asked for) with a blocker still runs locally.

A client deadline is budgeted: a soft need escalates only when the deadline leaves the
cloud a useful window (``MIN_CLOUD_WINDOW_S``) after the time a local answer is expected to
take (``local_answer_s``), so a late cloud can still fall back to a local answer in time.

Reasons are machine-readable: ``local.default``, ``cloud.<need>``,
``local.<need>_but_<blocker>``, ``reject.<need>_and_<blocker>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from edge_agent.policy._model import DATA_CLASSES, EffectivePolicy, ModelPrice, class_rank

__all__ = [
    "BLOCKERS",
    "LOCAL_CAN_ANSWER",
    "MIN_CLOUD_WINDOW_S",
    "NEEDS",
    "BudgetView",
    "CloudCheck",
    "Decision",
    "PressureView",
    "RouteRequest",
    "budget_allows",
    "decide",
    "resolve_data_class",
]

Route = Literal["auto", "local_only", "large_model"]
Destination = Literal["local", "cloud", "reject"]

# Hard needs: the local path cannot serve at all.
HARD_NEEDS = ("context_exceeded", "local_not_admissible")
NEEDS = (*HARD_NEEDS, "large_model_requested", "pressure_critical", "deadline_at_risk")
BLOCKERS = (
    "escalation_forbidden",
    "air_gapped",
    "escalation_disabled",
    "data_class_local_only",
    "client_not_allowed",
    "client_data_class",
    "outside_time_window",
    "no_cloud_model",
    "cloud_disabled",
    "offline",
    "connectivity_degraded",
    "model_unavailable",
    "no_capable_provider",
    "deadline_too_short",
    "budget_exhausted",
)
# Needs where the local model could answer in time: the deadline must leave room for it.
LOCAL_CAN_ANSWER = frozenset({"large_model_requested", "pressure_critical"})
# Less time than this for the cloud's first token is not worth a round trip.
MIN_CLOUD_WINDOW_S = 0.3

# (model, provider or selection) -> (provider to use, blocker or None): the router's live
# catalog and account state (model unavailable, capabilities), read by the caller.
CloudCheck = Callable[[str, str | None], tuple[str | None, str | None]]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    client_id: str
    data_class: str | None  # None: the policy's default class
    route: Route
    prompt_tokens: int
    max_tokens: int
    deadline_s: float | None
    local_context_length: int
    local_queue_wait_s: float
    model: str | None = None
    local_answer_s: float | None = None  # expected time of a whole local answer, with reserve


@dataclass(frozen=True, slots=True)
class PressureView:
    level: Literal["ok", "elevated", "critical"]
    local_admissible: bool


@dataclass(frozen=True, slots=True)
class BudgetView:
    """Cloud usage so far (settled plus reserved) in the current UTC day and month."""

    day_tokens: int = 0
    day_usd: float = 0.0
    month_tokens: int = 0
    month_usd: float = 0.0
    client_day_tokens: int = 0
    client_day_usd: float = 0.0
    client_month_tokens: int = 0
    client_month_usd: float = 0.0
    credential_usd: float = 0.0  # lifetime spend of the installed credential
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)  # router's live pricing


@dataclass(frozen=True, slots=True)
class Decision:
    destination: Destination
    reason: str
    data_class: str
    need: str | None = None
    blocker: str | None = None
    cloud_model: str | None = None
    cloud_provider: str | None = None
    estimated_tokens: int = 0  # worst case (prompt + max_tokens), what to reserve
    estimated_usd: float = 0.0


def resolve_data_class(data_class: str | None, policy: EffectivePolicy) -> str:
    """Unspecified → the policy's default; unknown → restricted (fail closed)."""
    if not data_class:
        return policy.default_data_class
    return data_class if data_class in DATA_CLASSES else DATA_CLASSES[-1]


def worst_case_price(model: str, policy: EffectivePolicy, budget: BudgetView) -> ModelPrice:
    """The higher of the fleet's and the router's price, so a reservation never undercounts."""
    fleet = policy.models[model]
    live = budget.prices.get(model)
    if live is None:
        return fleet
    return ModelPrice(
        max(fleet.input_usd_per_mtok, live.input_usd_per_mtok),
        max(fleet.output_usd_per_mtok, live.output_usd_per_mtok),
    )


def budget_allows(
    policy: EffectivePolicy, budget: BudgetView, share: float, tokens: int, usd: float
) -> bool:
    """Would ``tokens``/``usd`` more stay within every budget? (Also the ledger's check.)"""
    b = policy.budgets
    if (
        budget.day_tokens + tokens > b.daily_tokens
        or budget.month_tokens + tokens > b.monthly_tokens
    ):
        return False
    if budget.day_usd + usd > b.daily_usd or budget.month_usd + usd > b.monthly_usd:
        return False
    if (
        budget.client_day_tokens + tokens > share * b.daily_tokens
        or budget.client_month_tokens + tokens > share * b.monthly_tokens
        or budget.client_day_usd + usd > share * b.daily_usd
        or budget.client_month_usd + usd > share * b.monthly_usd
    ):
        return False
    cap = policy.credential_cap_usd
    return cap is None or budget.credential_usd + usd <= cap


def _need(request: RouteRequest, pressure: PressureView) -> str | None:
    if max(request.prompt_tokens, 0) + max(request.max_tokens, 0) > request.local_context_length:
        return "context_exceeded"
    if not pressure.local_admissible:
        return "local_not_admissible"
    if request.route == "large_model":
        return "large_model_requested"
    if pressure.level == "critical":
        return "pressure_critical"
    if request.deadline_s is not None and request.local_queue_wait_s > request.deadline_s:
        return "deadline_at_risk"
    return None


def decide(
    request: RouteRequest,
    pressure: PressureView,
    connectivity: str,
    policy: EffectivePolicy,
    budget: BudgetView | Callable[[], BudgetView],
    now: datetime,
    cloud_check: CloudCheck | None = None,
) -> Decision:
    """Where ``request`` runs. Pure: same inputs, same decision; no I/O, no clock.

    ``budget`` may be a function that reads the view: it is called only when the cloud is
    still a candidate, so the common local answer never pays for the ledger read.
    ``cloud_check`` (from the live catalog) may name another provider or a blocker.
    """
    data_class = resolve_data_class(request.data_class, policy)
    need = _need(request, pressure)
    if need is None:
        return Decision("local", "local.default", data_class)
    tokens = max(request.prompt_tokens, 0) + max(request.max_tokens, 0)
    hard = need in HARD_NEEDS
    blocker: str | None = None
    model = provider = None
    usd = 0.0
    rank = class_rank(data_class)
    rule = policy.client_rule(request.client_id)
    if request.route == "local_only":
        blocker = "escalation_forbidden"
    elif policy.air_gapped:
        blocker = "air_gapped"
    elif not policy.escalation:
        blocker = "escalation_disabled"
    elif rank > class_rank(policy.max_cloud_class):
        blocker = "data_class_local_only"
    elif rule is None or not rule.escalation:
        blocker = "client_not_allowed"
    elif rank > class_rank(rule.max_cloud_data_class):
        blocker = "client_data_class"
    elif not policy.in_window(now if now.tzinfo is not None else now.replace(tzinfo=UTC)):
        blocker = "outside_time_window"
    else:
        model, provider = policy.cloud_target(request.model)
        if model is None:
            blocker = "no_cloud_model"
        elif connectivity == "disabled":
            blocker = "cloud_disabled"
        elif connectivity == "degraded":
            # A struggling uplink is worth trying only when local cannot answer at all.
            blocker = None if hard else "connectivity_degraded"
        elif connectivity != "online":
            blocker = "offline"
        if blocker is None and model is not None and cloud_check is not None:
            provider, blocker = cloud_check(model, provider)
        if (
            blocker is None
            and need in LOCAL_CAN_ANSWER
            and request.deadline_s is not None
            and request.local_answer_s is not None
            and request.deadline_s - request.local_answer_s < MIN_CLOUD_WINDOW_S
        ):
            blocker = "deadline_too_short"
        if blocker is None and model is not None:
            if callable(budget):
                budget = budget()
            usd = worst_case_price(model, policy, budget).cost(
                max(request.prompt_tokens, 0), max(request.max_tokens, 0)
            )
            if not budget_allows(policy, budget, rule.budget_share, tokens, usd):
                blocker = "budget_exhausted"
    if blocker is None:
        return Decision(
            "cloud",
            f"cloud.{need}",
            data_class,
            need=need,
            cloud_model=model,
            cloud_provider=provider,
            estimated_tokens=tokens,
            estimated_usd=usd,
        )
    if hard:
        return Decision("reject", f"reject.{need}_and_{blocker}", data_class, need, blocker)
    return Decision("local", f"local.{need}_but_{blocker}", data_class, need, blocker)
