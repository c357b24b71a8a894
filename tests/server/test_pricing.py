"""The price table, model lookup and integer cost arithmetic."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.server.pricing import (
    FREE,
    PRICES,
    ModelPrice,
    cost_microdollars,
    microdollars_to_usd,
    price_for,
    usd_to_microdollars,
)

SONNET = ModelPrice(3, 15, 3.75, 0.3)
OPUS = ModelPrice(15, 75, 18.75, 1.5)
OPUS_4_5 = ModelPrice(5, 25, 6.25, 0.5)
HAIKU_4_5 = ModelPrice(1, 5, 1.25, 0.1)
HAIKU_3_5 = ModelPrice(0.8, 4, 1, 0.08)
SONNET_5 = ModelPrice(2, 10, 2.5, 0.2)
OPUS_5_5 = ModelPrice(4, 20, 5, 0.2)


def test_the_brief_example() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 500}
    assert cost_microdollars(usage, price_for("claude-sonnet-4-5")) == 3000 + 7500
    assert cost_microdollars(usage, price_for("sonnet")) == 2000 + 5000  # Sonnet 5.5


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("claude-sonnet-4-5-20250929", SONNET),
        ("claude-sonnet-4-20250514", SONNET),
        ("claude-opus-4-1-20250805", OPUS),
        ("claude-opus-4-20250514", OPUS),
        ("claude-opus-4-5-20251101", OPUS_4_5),
        ("claude-haiku-4-5-20251001", HAIKU_4_5),
        ("claude-3-5-haiku-20241022", HAIKU_3_5),
        ("claude-sonnet-4-6", SONNET),
        ("claude-sonnet-5", SONNET_5),
        ("claude-sonnet-5-5", SONNET_5),
        ("claude-opus-4-6", OPUS_4_5),
        ("claude-opus-5", OPUS_4_5),
        ("claude-opus-5-5", OPUS_5_5),
        ("scripted", SONNET),
    ],
)
def test_table(model: str, price: ModelPrice) -> None:
    assert PRICES[model] == price
    assert price_for(model) == price


def test_cache_prices_follow_the_standard_ratios() -> None:
    # Anthropic's ratios; OpenAI models have none (they are checked by their own test).
    for model, price in PRICES.items():
        if not model.startswith(("claude-", "scripted")) or model == "claude-opus-5-5":
            continue  # Opus 5.5 reads its cache at 0.05x
        assert Decimal(str(price.cache_write)) == Decimal(str(price.input)) * Decimal("1.25")
        assert Decimal(str(price.cache_read)) == Decimal(str(price.input)) * Decimal("0.1")
    assert ModelPrice.standard(0.8, 4) == HAIKU_3_5


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        PRICES["free-lunch"] = FREE  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SONNET.input = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("sonnet", SONNET_5),
        ("opus", OPUS),
        ("haiku", HAIKU_4_5),
        ("Sonnet", SONNET_5),
        (" sonnet ", SONNET_5),
        ("sonnet-5-5", SONNET_5),
        ("opus-5-5", OPUS_5_5),
        ("claude-sonnet-5-5-20260922", SONNET_5),
        ("claude-sonnet-5-20260630", SONNET_5),
        ("claude-opus-4-6[1m]", OPUS_4_5),
        ("sonnet-4-5", SONNET),
        ("sonnet-4", SONNET),
        ("opus-4-1", OPUS),
        ("opus-4-5", OPUS_4_5),
        ("haiku-4-5", HAIKU_4_5),
        ("haiku-3-5", HAIKU_3_5),
        ("claude-sonnet-4-5", SONNET),
        ("claude-sonnet-4-5-20991231", SONNET),
        ("claude-sonnet-4-5@20250929", SONNET),
        ("claude-sonnet-4-5-latest", SONNET),
        ("claude-sonnet-4-5[1m]", SONNET),
        ("claude-sonnet-4-0", SONNET),
        ("claude-opus-4-1", OPUS),
        ("claude-opus-4-0", OPUS),
        ("claude-opus-4-5", OPUS_4_5),
        ("claude-haiku-4-5", HAIKU_4_5),
        ("claude-3-5-haiku-latest", HAIKU_3_5),
        ("claude-3-7-sonnet-20250219", SONNET),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", HAIKU_4_5),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", SONNET),
        ("anthropic/claude-opus-4.1", OPUS),
        ("claude-opus-4.5", OPUS_4_5),
        ("scripted-fast", SONNET),
    ],
)
def test_aliases_and_prefixes(model: str, price: ModelPrice) -> None:
    assert price_for(model) == price


@pytest.mark.parametrize(
    "model",
    [
        "local",
        "smollm2-135m-instruct",
        "",
        "claude",
        "claude-opus-4-9",  # another version, not claude-opus-4
        "claude-sonnet-4-7",
        "claude-opus-4.9",
        "claude-sonnet-5-6",
        "sonnetish",
        "my-sonnet",
        "opus-45",
    ],
)
def test_unknown_models_are_free(model: str) -> None:
    assert price_for(model) == FREE
    assert cost_microdollars({"input_tokens": 10**6, "output_tokens": 10**6}, FREE) == 0


def test_overrides_win_and_add_models() -> None:
    local = ModelPrice(0.1, 0.2, 0, 0)
    cheap = ModelPrice(1, 1, 1, 1)
    overrides = {"local": local, "claude-sonnet-5-5": cheap, "Opus": FREE}
    assert price_for("local", overrides) == local
    assert price_for("LOCAL-q4", overrides) == local
    assert price_for("claude-sonnet-5-5", overrides) == cheap
    # aliases resolve to the table id, which the override reprices
    assert price_for("sonnet", overrides) == cheap
    assert price_for("sonnet-5-5", overrides) == cheap
    # an override of the alias itself
    assert price_for("opus", overrides) == FREE
    assert price_for("haiku", overrides) == HAIKU_4_5
    assert price_for("sonnet", None) == SONNET_5
    # override keys are normalized like names
    assert price_for("My-Model-1.5-Q4", {"my-model-1.5": local}) == local
    assert price_for("my-model-1.6", {"my-model-1.5": local}) == FREE
    assert price_for("sonnet", {}) == SONNET_5


def test_cost_of_every_usage_kind() -> None:
    usage = {
        "input_tokens": 1_000_000,
        "output_tokens": 1_000_000,
        "cache_creation_input_tokens": 1_000_000,
        "cache_read_input_tokens": 1_000_000,
        "server_tool_use": 99,  # ignored
    }
    # 3 + 15 + 3.75 + 0.30 USD
    assert cost_microdollars(usage, SONNET) == 22_050_000
    assert cost_microdollars({}, SONNET) == 0


def test_cost_rounds_half_up_once() -> None:
    # 1 cache-read token of haiku 3.5 = 0.08 microdollars; 6 of them = 0.48 -> 0, 7 = 0.56 -> 1
    assert cost_microdollars({"cache_read_input_tokens": 6}, HAIKU_3_5) == 0
    assert cost_microdollars({"cache_read_input_tokens": 7}, HAIKU_3_5) == 1
    # exactly half rounds up: 5 tokens at 0.1 = 0.5
    assert cost_microdollars({"cache_read_input_tokens": 5}, HAIKU_4_5) == 1
    # rounding happens once, on the sum: 0.3 + 0.3 = 0.6 -> 1 (per kind it would be 0 + 0)
    mixed = ModelPrice(0.3, 0.3, 0, 0)
    assert cost_microdollars({"input_tokens": 1, "output_tokens": 1}, mixed) == 1


def test_cost_is_exact_where_floats_drift() -> None:
    # 0.1 + 0.2 != 0.3 in floats; in Decimal it is.
    price = ModelPrice(0.1, 0.2, 0, 0)
    assert cost_microdollars({"input_tokens": 5, "output_tokens": 5}, price) == 2  # 1.5 -> 2
    many = {"input_tokens": 10**12, "output_tokens": 10**12}
    assert cost_microdollars(many, price) == 300_000_000_000


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, None])
def test_cost_rejects_bad_token_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        cost_microdollars({"input_tokens": bad}, SONNET)  # type: ignore[dict-item]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", None, True])
def test_price_must_be_a_finite_non_negative_number(bad: object) -> None:
    with pytest.raises(ValueError, match="input"):
        ModelPrice(bad, 1, 1, 1)  # type: ignore[arg-type]


def test_price_accepts_decimal() -> None:
    price = ModelPrice(Decimal("0.8"), 4, 1, Decimal("0.08"))  # type: ignore[arg-type]
    assert cost_microdollars({"input_tokens": 10, "cache_read_input_tokens": 100}, price) == 16


def test_microdollar_conversions() -> None:
    assert microdollars_to_usd(10_500) == 0.0105
    assert microdollars_to_usd(0) == 0.0
    assert usd_to_microdollars(0.0105) == 10_500
    assert usd_to_microdollars(5) == 5_000_000
    assert usd_to_microdollars(Decimal("0.0000005")) == 1
    assert usd_to_microdollars(0.0000004) == 0
    with pytest.raises(ValueError, match="finite"):
        usd_to_microdollars(float("inf"))


@given(st.integers(min_value=0, max_value=10**15))
def test_usd_round_trip(micro: int) -> None:
    assert usd_to_microdollars(microdollars_to_usd(micro)) == micro


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(sorted(PRICES)),
)
def test_cost_matches_exact_arithmetic(inp: int, out: int, model: str) -> None:
    price = PRICES[model]
    exact = inp * Decimal(str(price.input)) + out * Decimal(str(price.output))
    got = cost_microdollars({"input_tokens": inp, "output_tokens": out}, price)
    # Rounded half up: got = floor(exact + 0.5).
    assert got - Decimal("0.5") <= exact < got + Decimal("0.5")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", (2.5, 10, 2.5, 1.25)),
        ("gpt-4o-2024-08-06", (2.5, 10, 2.5, 1.25)),
        ("gpt-4o-mini", (0.15, 0.6, 0.15, 0.075)),
        ("gpt-4.1-mini", (0.4, 1.6, 0.4, 0.1)),
        ("gpt-5-mini-2025-08-07", (0.25, 2, 0.25, 0.025)),
        ("o4-mini", (1.1, 4.4, 1.1, 0.275)),
    ],
)
def test_common_openai_models_have_list_prices(
    model: str, expected: tuple[float, float, float, float]
) -> None:
    price = price_for(model)
    assert (price.input, price.output, price.cache_write, price.cache_read) == expected


def test_a_local_model_is_free_unless_configured() -> None:
    assert price_for("local") == FREE
    assert price_for("SmolLM2-135M-Instruct") == FREE
    custom = ModelPrice(0.1, 0.2, 0.1, 0.0)
    assert price_for("local", {"local": custom}) == custom
