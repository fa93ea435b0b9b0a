"""Model names, the catalog and cost arithmetic."""

from __future__ import annotations

from decimal import Decimal

import pytest
from fake_router import default_catalog
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.chat import Usage
from edge_agent.cloud import (
    CloudProtocolError,
    ModelRef,
    Pricing,
    cost_usd,
    parse_model_ref,
    parse_models_response,
)
from edge_agent.errors import InvalidArgument


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("org/model", ModelRef("org/model")),
        ("meta-llama/Llama-3.3-70B-Instruct", ModelRef("meta-llama/Llama-3.3-70B-Instruct")),
        ("org/m:fastest", ModelRef("org/m", policy="fastest")),
        ("org/m:cheapest", ModelRef("org/m", policy="cheapest")),
        ("org/m:preferred", ModelRef("org/m", policy="preferred")),
        ("org/m:fireworks-ai", ModelRef("org/m", provider="fireworks-ai")),
        ("org/m:hf-inference", ModelRef("org/m", provider="hf-inference")),
    ],
)
def test_valid_names_round_trip(name: str, ref: ModelRef) -> None:
    assert parse_model_ref(name) == ref
    assert str(ref) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "model",
        "org/",
        "/model",
        "a/b/c",
        "org/m:",
        "org/m:Fastest",
        "org/m:two words",
        "org/m:a:b",
        "org/m:-x",
        "org m/x",
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_model_ref(name, field="cloud_model")
    assert info.value.field == "cloud_model"


def test_catalog_parsing_and_pricing_rules() -> None:
    catalog = parse_models_response(default_catalog())
    offers = catalog.offers("org/big-model")
    assert [o.provider for o in offers] == ["novita", "together", "staging-co"]
    assert offers[0].context_length == 32768
    assert offers[0].pricing == Pricing(Decimal("0.2"), Decimal("0.8"))
    assert not offers[2].live
    cheapest = catalog.pricing_for(ModelRef("org/big-model", policy="cheapest"))
    # Lowest live output price; the cheaper staging offer is not eligible.
    assert cheapest == Pricing(Decimal("0.3"), Decimal("0.6"))
    worst = catalog.pricing_for(ModelRef("org/big-model", policy="fastest"))
    assert worst == Pricing(Decimal("0.3"), Decimal("0.8"))
    assert catalog.pricing_for(ModelRef("org/big-model")) == worst
    pinned = catalog.pricing_for(ModelRef("org/big-model", provider="novita"))
    assert pinned == Pricing(Decimal("0.2"), Decimal("0.8"))
    reported = catalog.pricing_for(ModelRef("org/big-model", policy="cheapest"), "novita")
    assert reported == pinned
    assert catalog.pricing_for(ModelRef("org/big-model", provider="nobody")) is None
    assert catalog.pricing_for(ModelRef("org/unpriced")) is None
    assert catalog.pricing_for(ModelRef("org/absent")) is None
    assert catalog.context_length(ModelRef("org/big-model")) == 32768
    assert catalog.context_length(ModelRef("org/big-model", provider="together")) == 131072
    assert catalog.is_available(ModelRef("org/big-model", provider="together"))
    assert not catalog.is_available(ModelRef("org/big-model", provider="staging-co"))
    assert not catalog.is_available(ModelRef("org/unpriced"))


def test_catalog_skips_unreadable_entries_but_refuses_a_wrong_shape() -> None:
    catalog = parse_models_response(
        {
            "data": [
                "junk",
                {"id": 3},
                {"id": "o/a", "providers": "junk"},
                {
                    "id": "o/b",
                    "providers": [
                        {"provider": "p", "pricing": {"input": "NaN", "output": 1}},
                        {"provider": "q", "pricing": {"input": -1, "output": 1}},
                        {"provider": "r", "context_length": True, "pricing": {"input": 1}},
                        {"no": "provider"},
                    ],
                },
            ]
        }
    )
    assert set(catalog.models) == {"o/a", "o/b"}
    assert [(o.provider, o.pricing, o.context_length) for o in catalog.offers("o/b")] == [
        ("p", None, None),
        ("q", None, None),
        ("r", None, None),
    ]
    bad: object
    for bad in ({}, {"data": {}}, [], "x"):
        with pytest.raises(CloudProtocolError):
            parse_models_response(bad)


def test_cost_is_exact() -> None:
    pricing = Pricing(Decimal("0.1"), Decimal("0.3"))
    assert cost_usd(Usage(1_000_000, 1_000_000), pricing) == Decimal("0.4")
    assert cost_usd(Usage(3, 7), pricing) == Decimal("0.0000024")
    assert cost_usd(Usage(0, 0), pricing) == 0


@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)
def test_cost_is_additive(p1: int, c1: int, p2: int, c2: int) -> None:
    # Budgets sum per-request costs; exact decimals make the sum equal the total's cost.
    pricing = Pricing(Decimal("0.59"), Decimal("0.79"))
    total = cost_usd(Usage(p1 + p2, c1 + c2), pricing)
    assert cost_usd(Usage(p1, c1), pricing) + cost_usd(Usage(p2, c2), pricing) == total


def test_usage_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        Usage(-1, 0)
