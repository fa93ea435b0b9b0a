"""Model names, the router's model catalog (``GET /v1/models``) and what an answer costs.

Router model names are ``org/model``, optionally followed by ``:provider`` (pin one
provider, e.g. ``:novita``) or by a selection policy: ``:fastest`` (highest throughput),
``:cheapest`` (lowest price per output token) or ``:preferred`` (the account's provider
order). Without a suffix the router applies its own default selection.

The catalog lists, per model, the providers serving it with their status, context length
and pricing in USD per million input and output tokens. Money is kept as ``Decimal`` so
that budgets add up exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from edge_agent.chat import Usage
from edge_agent.cloud._errors import CloudProtocolError
from edge_agent.errors import InvalidArgument

__all__ = [
    "POLICIES",
    "ModelCatalog",
    "ModelInfo",
    "ModelRef",
    "Policy",
    "Pricing",
    "ProviderOffer",
    "cost_usd",
    "parse_model_ref",
    "parse_models_response",
]

Policy = Literal["fastest", "cheapest", "preferred"]
POLICIES: tuple[Policy, ...] = ("fastest", "cheapest", "preferred")

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PROVIDER = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed router model name: a model id plus at most one provider or policy."""

    model_id: str
    provider: str | None = None
    policy: Policy | None = None

    def __str__(self) -> str:
        suffix = self.provider or self.policy
        return f"{self.model_id}:{suffix}" if suffix else self.model_id


def parse_model_ref(name: str, *, field: str = "model") -> ModelRef:
    """Validate and split ``org/model[:provider|:fastest|:cheapest|:preferred]``."""
    if not name:
        raise InvalidArgument(field, "must not be empty")
    model_id, sep, suffix = name.partition(":")
    if not _MODEL_ID.match(model_id):
        raise InvalidArgument(field, "must look like org/model (letters, digits, . _ -)")
    if not sep:
        return ModelRef(model_id)
    if suffix in POLICIES:
        return ModelRef(model_id, policy=suffix)
    if not _PROVIDER.match(suffix):
        raise InvalidArgument(
            field,
            "suffix must be a provider name (lowercase letters, digits, -) "
            "or one of :fastest, :cheapest, :preferred",
        )
    return ModelRef(model_id, provider=suffix)


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per million tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal


def cost_usd(usage: Usage, pricing: Pricing) -> Decimal:
    """What ``usage`` costs at ``pricing``, in USD (exact decimal arithmetic)."""
    return (
        usage.prompt_tokens * pricing.input_per_mtok
        + usage.completion_tokens * pricing.output_per_mtok
    ) / _MILLION


@dataclass(frozen=True, slots=True)
class ProviderOffer:
    """One provider serving one model, as the catalog lists it."""

    provider: str
    status: str
    context_length: int | None
    pricing: Pricing | None
    supports_tools: bool | None = None
    supports_structured_output: bool | None = None
    latency_s: float | None = None  # time to first token the router measured
    throughput: float | None = None  # tokens per second the router measured

    @property
    def live(self) -> bool:
        return self.status == "live"

    def supports(self, *, structured_output: bool = False, tools: bool = False) -> bool:
        """True only when the catalog says so: an unknown capability counts as missing."""
        return (not structured_output or self.supports_structured_output is True) and (
            not tools or self.supports_tools is True
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    offers: tuple[ProviderOffer, ...]


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """The router's model list at one moment; immutable, replaced as a whole on refresh."""

    models: Mapping[str, ModelInfo]

    def offers(self, model_id: str) -> tuple[ProviderOffer, ...]:
        info = self.models.get(model_id)
        return () if info is None else info.offers

    def is_available(self, ref: ModelRef) -> bool:
        """Whether some live provider serves ``ref`` (respecting a pinned provider)."""
        return any(
            o.live and (ref.provider is None or o.provider == ref.provider)
            for o in self.offers(ref.model_id)
        )

    def pricing_for(self, ref: ModelRef, provider: str | None = None) -> Pricing | None:
        """The price a request for ``ref`` pays, for budgets.

        ``provider`` is the one the router reported after the fact; before the request, a
        pinned provider gives its price, ``:cheapest`` the lowest live output price, and
        ``:fastest``/``:preferred``/none the highest live price (the router may pick any,
        so a budget check must assume the worst). None when nothing priced is listed.
        """
        offers = [o for o in self.offers(ref.model_id) if o.pricing is not None]
        chosen = provider or ref.provider
        if chosen is not None:
            for offer in offers:
                if offer.provider == chosen:
                    return offer.pricing
            return None
        live = [o.pricing for o in offers if o.live and o.pricing is not None]
        if not live:
            return None
        if ref.policy == "cheapest":
            return min(live, key=lambda p: (p.output_per_mtok, p.input_per_mtok))
        return Pricing(
            input_per_mtok=max(p.input_per_mtok for p in live),
            output_per_mtok=max(p.output_per_mtok for p in live),
        )

    def choose_provider(
        self,
        ref: ModelRef,
        *,
        structured_output: bool = False,
        tools: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> str | None:
        """A live provider of ``ref`` that supports what the request needs, or None.

        A pinned provider is returned only if it qualifies. Otherwise the selection policy
        picks among the qualifying ones: ``:cheapest`` the lowest output price, ``:fastest``
        (and no suffix, the router's documented default) the highest throughput,
        ``:preferred`` the first listed. Pinning the choice keeps the router from landing
        on a provider without the capability (``:cheapest`` may).
        """
        offers = [
            o
            for o in self.offers(ref.model_id)
            if o.live
            and o.supports(structured_output=structured_output, tools=tools)
            and (allowed is None or o.provider in allowed)
            and (ref.provider is None or o.provider == ref.provider)
        ]
        if not offers:
            return None
        if ref.policy == "cheapest":
            priced = [(o.pricing.output_per_mtok, o.provider) for o in offers if o.pricing]
            if priced:
                return min(priced)[1]
        if ref.policy in (None, "fastest") and ref.provider is None:
            return max(offers, key=lambda o: o.throughput or 0.0).provider
        return offers[0].provider

    def context_length(self, ref: ModelRef) -> int | None:
        """The smallest context any eligible live provider offers (None when unknown)."""
        lengths = [
            o.context_length
            for o in self.offers(ref.model_id)
            if o.live
            and o.context_length is not None
            and (ref.provider is None or o.provider == ref.provider)
        ]
        return min(lengths) if lengths else None


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() and result >= 0 else None


def _offer(raw: object) -> ProviderOffer | None:
    if not isinstance(raw, Mapping):
        return None
    provider = raw.get("provider")
    if not isinstance(provider, str) or not provider:
        return None
    status = raw.get("status")
    context = raw.get("context_length")
    pricing: Pricing | None = None
    raw_pricing = raw.get("pricing")
    if isinstance(raw_pricing, Mapping):
        price_in = _decimal(raw_pricing.get("input"))
        price_out = _decimal(raw_pricing.get("output"))
        if price_in is not None and price_out is not None:
            pricing = Pricing(price_in, price_out)
    tools = raw.get("supports_tools")
    structured = raw.get("supports_structured_output")
    latency, throughput = _decimal(raw.get("latency")), _decimal(raw.get("throughput"))
    return ProviderOffer(
        provider=provider,
        status=status if isinstance(status, str) else "unknown",
        context_length=context
        if isinstance(context, int) and not isinstance(context, bool) and context > 0
        else None,
        pricing=pricing,
        supports_tools=tools if isinstance(tools, bool) else None,
        supports_structured_output=structured if isinstance(structured, bool) else None,
        latency_s=float(latency) if latency is not None else None,
        throughput=float(throughput) if throughput is not None else None,
    )


def parse_models_response(payload: object) -> ModelCatalog:
    """Parse ``GET /v1/models``: ``{"data": [{"id", "providers": [...]}, ...]}``.

    Entries we cannot read are skipped (the list is informational and grows new fields);
    a payload without a ``data`` list is a protocol error.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), list):
        raise CloudProtocolError("the cloud model list has an unexpected shape")
    models: dict[str, ModelInfo] = {}
    for entry in payload["data"]:
        if not isinstance(entry, Mapping):
            continue
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        raw_offers = entry.get("providers")
        offers = tuple(
            o
            for o in (_offer(r) for r in (raw_offers if isinstance(raw_offers, list) else []))
            if o is not None
        )
        models[model_id] = ModelInfo(model_id=model_id, offers=offers)
    return ModelCatalog(models=models)
