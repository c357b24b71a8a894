"""The budget's pure arithmetic: how many output tokens a room of microdollars pays for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chucky.server.budget import affordable_output_tokens
from chucky.server.pricing import FREE, PRICES, ModelPrice, cost_microdollars


def _worst(input_tokens: int, output_tokens: int, price: ModelPrice) -> int:
    key = "cache_creation_input_tokens" if price.cache_write > price.input else "input_tokens"
    return cost_microdollars({key: input_tokens, "output_tokens": output_tokens}, price)


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(sorted(PRICES)),
)
def test_the_affordable_count_is_the_largest_that_fits(
    room: int, input_tokens: int, model: str
) -> None:
    price = PRICES[model]
    tokens = affordable_output_tokens(room, input_tokens, price)
    assert tokens is not None
    if tokens >= 0:
        assert _worst(input_tokens, tokens, price) <= room
    else:
        assert _worst(input_tokens, 0, price) > room
    assert _worst(input_tokens, max(tokens, -1) + 1, price) > room


def test_free_output_is_unbounded_and_known_values() -> None:
    assert affordable_output_tokens(0, 100, FREE) is None
    sonnet = PRICES["claude-sonnet-4-5-20250929"]
    # 3 input tokens at the cache-write rate (3.75) = 11.25; each output token 15.
    assert affordable_output_tokens(1600, 3, sonnet) == 105
    assert affordable_output_tokens(11, 3, sonnet) == 0
    assert affordable_output_tokens(5, 3, sonnet) == -1
