"""The effective escalation policy: what :func:`decide` reads. Plain frozen data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

__all__ = [
    "DATA_CLASSES",
    "Budgets",
    "ClientRule",
    "EffectivePolicy",
    "ModelPrice",
    "TimeWindow",
    "WindowSet",
    "class_rank",
    "stricter_class",
]

# Ordered from least to most sensitive.
DATA_CLASSES: tuple[str, ...] = ("public", "internal", "confidential", "restricted")
_RANK = {name: i for i, name in enumerate(DATA_CLASSES)}


def class_rank(data_class: str | None) -> int:
    """Rank of a class; unknown names rank as restricted (fail closed), None below public."""
    if data_class is None:
        return -1
    return _RANK.get(data_class, len(DATA_CLASSES) - 1)


def stricter_class(a: str | None, b: str | None) -> str | None:
    """The lower of two "highest class allowed to the cloud" limits (None: nothing leaves)."""
    if a is None or b is None:
        return None
    return a if class_rank(a) <= class_rank(b) else b


@dataclass(frozen=True, slots=True)
class Budgets:
    """Cloud spend limits per UTC day and UTC calendar month; 0 means no cloud spend."""

    daily_tokens: int = 0
    monthly_tokens: int = 0
    daily_usd: float = 0.0
    monthly_usd: float = 0.0

    def tightened(self, other: Budgets) -> Budgets:
        return Budgets(
            min(self.daily_tokens, other.daily_tokens),
            min(self.monthly_tokens, other.monthly_tokens),
            min(self.daily_usd, other.daily_usd),
            min(self.monthly_usd, other.monthly_usd),
        )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens; the fleet's figure, used when the router's is unknown."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_usd_per_mtok + tokens_out * self.output_usd_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class ClientRule:
    escalation: bool = False
    max_cloud_data_class: str | None = None  # None: nothing of this client leaves the box
    budget_share: float = 1.0  # fraction of each budget this client may use


@dataclass(frozen=True, slots=True)
class TimeWindow:
    days: frozenset[int]  # 0 = Monday
    start_minute: int  # inclusive, minutes after midnight
    end_minute: int  # exclusive; end <= start wraps past midnight

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start_minute < self.end_minute:
            return weekday in self.days and self.start_minute <= minute < self.end_minute
        # Wrapping window (e.g. 22:00-06:00): the early-morning part belongs to the day it
        # started on, so Friday 22:00-06:00 covers Saturday 03:00.
        if minute >= self.start_minute:
            return weekday in self.days
        return minute < self.end_minute and (weekday - 1) % 7 in self.days


@dataclass(frozen=True, slots=True)
class WindowSet:
    """Escalation is allowed when ``now`` (in ``tz``) falls in any window of the set."""

    tz: tzinfo
    windows: tuple[TimeWindow, ...]

    def permits(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        return any(w.contains(local.weekday(), minute) for w in self.windows)


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The signed policy merged with local tightening and the credential's scope."""

    version: int = 0
    air_gapped: bool = False
    escalation: bool = False  # master switch; False when no policy or credential is present
    max_cloud_class: str | None = None
    default_data_class: str = "restricted"
    budgets: Budgets = field(default_factory=Budgets)
    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    default_model: str | None = None
    provider: str = "fastest"  # a provider name or fastest|cheapest|preferred
    allowed_providers: frozenset[str] | None = None  # None: any
    clients: Mapping[str, ClientRule] = field(default_factory=dict)
    window_sets: tuple[WindowSet, ...] = ()  # all must permit; empty: any time
    credential_cap_usd: float | None = None

    @classmethod
    def local_only(cls) -> EffectivePolicy:
        """What the box runs with before any signed policy arrived: nothing leaves."""
        return cls()

    def client_rule(self, client_id: str) -> ClientRule | None:
        rule = self.clients.get(client_id)
        return rule if rule is not None else self.clients.get("*")

    def cloud_target(self, requested_model: str | None) -> tuple[str | None, str | None]:
        """(model, provider) an escalation would use, or (None, None) when none is allowed."""
        model = requested_model if requested_model in self.models else self.default_model
        if model is None or model not in self.models:
            return None, None
        if self.allowed_providers is None:
            return model, self.provider
        if self.provider in self.allowed_providers:
            return model, self.provider
        if not self.allowed_providers:
            return None, None
        # A selection policy (cheapest...) could pick a provider outside the list: name one.
        return model, sorted(self.allowed_providers)[0]

    def in_window(self, now: datetime) -> bool:
        return all(ws.permits(now) for ws in self.window_sets)
