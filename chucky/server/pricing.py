"""The price table and cost arithmetic (pure, no I/O).

Prices are USD per million tokens (Anthropic list prices; cache write is the 5-minute write at
1.25x input, cache read 0.1x input). Money is counted in integer **microdollars** (1e-6 USD):
because a price is per million tokens, ``tokens * price`` *is* the cost in microdollars, so a
call's cost is one exact ``Decimal`` sum rounded half up once -- no float ever accumulates.
Floats appear only at the edge, in :func:`microdollars_to_usd` (``total_cost_usd`` of a
``result`` frame).

Conversions: :func:`microdollars_to_usd` and :func:`usd_to_microdollars` (budgets in USD).

Model lookup (:func:`price_for`): configured overrides and :data:`PRICES` by exact id, then
family aliases and prefixes (``sonnet``, ``opus-4-1``, ``claude-sonnet-4-5-20250929``,
``claude-sonnet-4-5@20250929``, ``anthropic.claude-haiku-4-5-20251001-v1:0`` ...). Unknown
models cost 0: local models are free unless configured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final

__all__ = [
    "CLAUDE_CEILING",
    "FREE",
    "PRICES",
    "ModelPrice",
    "cost_microdollars",
    "known_price",
    "microdollars_to_usd",
    "price_for",
    "usd_to_microdollars",
]

_CACHE_WRITE_FACTOR: Final = Decimal("1.25")
_CACHE_READ_FACTOR: Final = Decimal("0.1")


def _decimal(value: float | Decimal) -> Decimal:
    # str() gives the shortest round-tripping form, so 0.8 becomes Decimal("0.8"), not the
    # binary expansion 0.8000000000000000444...
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What a model costs, in USD per million tokens.

    Attributes:
        input: Uncached input tokens.
        output: Output tokens.
        cache_write: Input tokens written to the prompt cache.
        cache_read: Input tokens read from the prompt cache.

    Raises:
        ValueError: a price is negative or not finite.
    """

    input: float
    output: float
    cache_write: float
    cache_read: float

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_write", "cache_read"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                raise ValueError(f"price {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"price {name} must be finite and >= 0, got {value!r}")

    @classmethod
    def standard(cls, input: float, output: float) -> ModelPrice:
        """A price with Anthropic's cache ratios: write 1.25x input, read 0.1x input.

        Args:
            input: USD per million input tokens.
            output: USD per million output tokens.

        Returns:
            The price.
        """
        base = _decimal(input)
        return cls(
            input=input,
            output=output,
            cache_write=float(base * _CACHE_WRITE_FACTOR),
            cache_read=float(base * _CACHE_READ_FACTOR),
        )


FREE: Final = ModelPrice(0, 0, 0, 0)
"""The price of unknown (local) models."""

_SONNET_5_5: Final = "claude-sonnet-5-5"
_SONNET_5: Final = "claude-sonnet-5"
_SONNET_4_6: Final = "claude-sonnet-4-6"
_SONNET_4_5: Final = "claude-sonnet-4-5-20250929"
_SONNET_4: Final = "claude-sonnet-4-20250514"
_OPUS_5_5: Final = "claude-opus-5-5"
_OPUS_5: Final = "claude-opus-5"
_OPUS_4_6: Final = "claude-opus-4-6"
_OPUS_4_5: Final = "claude-opus-4-5-20251101"
_OPUS_4_1: Final = "claude-opus-4-1-20250805"
_OPUS_4: Final = "claude-opus-4-20250514"
_HAIKU_4_5: Final = "claude-haiku-4-5-20251001"
_HAIKU_3_5: Final = "claude-3-5-haiku-20241022"

PRICES: Final[Mapping[str, ModelPrice]] = MappingProxyType(
    {
        _SONNET_5_5: ModelPrice.standard(2, 10),
        _SONNET_5: ModelPrice.standard(2, 10),
        _SONNET_4_6: ModelPrice.standard(3, 15),
        _SONNET_4_5: ModelPrice.standard(3, 15),
        _SONNET_4: ModelPrice.standard(3, 15),
        # Opus 5.5 reads its cache at 0.05x input, not the usual 0.1x.
        _OPUS_5_5: ModelPrice(4, 20, 5, 0.2),
        _OPUS_5: ModelPrice.standard(5, 25),
        _OPUS_4_6: ModelPrice.standard(5, 25),
        _OPUS_4_5: ModelPrice.standard(5, 25),
        _OPUS_4_1: ModelPrice.standard(15, 75),
        _OPUS_4: ModelPrice.standard(15, 75),
        _HAIKU_4_5: ModelPrice.standard(1, 5),
        _HAIKU_3_5: ModelPrice.standard(0.8, 4),
        # The deterministic test model is priced like Sonnet so budget tests see real numbers.
        "scripted": ModelPrice.standard(3, 15),
        # OpenAI list prices (USD per million tokens). No cache-write premium: written tokens
        # cost the input price; cached input is discounted.
        "gpt-5": ModelPrice(1.25, 10, 1.25, 0.125),
        "gpt-5-mini": ModelPrice(0.25, 2, 0.25, 0.025),
        "gpt-5-nano": ModelPrice(0.05, 0.4, 0.05, 0.005),
        "gpt-4.1": ModelPrice(2, 8, 2, 0.5),
        "gpt-4.1-mini": ModelPrice(0.4, 1.6, 0.4, 0.1),
        "gpt-4.1-nano": ModelPrice(0.1, 0.4, 0.1, 0.025),
        "gpt-4o": ModelPrice(2.5, 10, 2.5, 1.25),
        "gpt-4o-mini": ModelPrice(0.15, 0.6, 0.15, 0.075),
        "o3": ModelPrice(2, 8, 2, 0.5),
        "o4-mini": ModelPrice(1.1, 4.4, 1.1, 0.275),
    }
)
"""List prices by model id (read-only)."""

CLAUDE_CEILING: Final = max(
    (price for model, price in PRICES.items() if model.startswith("claude-")),
    key=lambda price: (price.output, price.input),
)
"""The dearest Claude price: what a Claude model missing from the table is charged, so an
unknown model can never take a user over budget (configure its ``price`` to charge it exactly)."""

# Family names and undated ids -> a key of PRICES. Legacy families map to a model of the same
# list price (Claude 3.x Sonnet 3/15, Claude 3 Opus 15/75).
_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sonnet": _SONNET_5_5,
        "opus": _OPUS_4_1,  # no version: the dearest Opus
        "haiku": _HAIKU_4_5,
        "sonnet-5-5": _SONNET_5_5,
        "sonnet-5": _SONNET_5,
        "sonnet-4-6": _SONNET_4_6,
        "opus-5-5": _OPUS_5_5,
        "opus-5": _OPUS_5,
        "opus-4-6": _OPUS_4_6,
        "claude-sonnet-4-5": _SONNET_4_5,
        "sonnet-4-5": _SONNET_4_5,
        "claude-sonnet-4": _SONNET_4,
        "claude-sonnet-4-0": _SONNET_4,
        "sonnet-4": _SONNET_4,
        "claude-opus-4-5": _OPUS_4_5,
        "opus-4-5": _OPUS_4_5,
        "claude-opus-4-1": _OPUS_4_1,
        "opus-4-1": _OPUS_4_1,
        "claude-opus-4": _OPUS_4,
        "claude-opus-4-0": _OPUS_4,
        "opus-4": _OPUS_4,
        "claude-haiku-4-5": _HAIKU_4_5,
        "haiku-4-5": _HAIKU_4_5,
        "claude-3-5-haiku": _HAIKU_3_5,
        "claude-haiku-3-5": _HAIKU_3_5,
        "haiku-3-5": _HAIKU_3_5,
        "claude-3-7-sonnet": _SONNET_4,
        "claude-3-5-sonnet": _SONNET_4,
        "claude-3-opus": _OPUS_4,
    }
)

# Bedrock / gateway spellings: "anthropic.", "us.anthropic.", "anthropic/".
_VENDOR_PREFIX: Final = re.compile(r"^(?:[a-z]+\.)?anthropic[./]")
# Gateways write versions with dots: claude-opus-4.1 is claude-opus-4-1.
_DOTTED_VERSION: Final = re.compile(r"(?<=\d)\.(?=\d)")
# After a known name, "-5", ".5" or "-10" is another version of the family (claude-opus-4-6 is
# not claude-opus-4), while "-20250929", "@...", "[1m]", "-v1:0" or "-latest" qualify the same one.
_OTHER_VERSION: Final = re.compile(r"[-.]\d{1,2}(?!\d)")
_QUALIFIER_START: Final = frozenset("-@:[._")


def _normalize(name: str) -> str:
    return _DOTTED_VERSION.sub("-", _VENDOR_PREFIX.sub("", name.strip().lower()))


def _match(name: str, keys: list[str]) -> str | None:
    """The longest key that ``name`` equals or extends with a qualifier (not a new version)."""
    for key in sorted(keys, key=len, reverse=True):
        if name == key:
            return key
        if name.startswith(key):
            rest = name[len(key) :]
            if rest[0] in _QUALIFIER_START and not _OTHER_VERSION.match(rest):
                return key
    return None


def price_for(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> ModelPrice:
    """The price of ``model``.

    Lookup, case-insensitive: an exact id in ``overrides``, then in :data:`PRICES`. Then, after
    dropping a vendor prefix (``anthropic.``, ``us.anthropic.``, ``anthropic/``) and writing
    dotted versions with dashes (``claude-opus-4.1`` -> ``claude-opus-4-1``) in the name and in
    the known names: the longest known id or alias (``sonnet``, ``opus``, ``haiku``,
    ``claude-sonnet-4-5``, ``opus-4-1`` ...) that the name equals or extends with a qualifier (a
    date, ``@...``, ``-latest``, ``[1m]``, ``-v1:0``); a suffix like ``-6`` names another version
    and does not match. An alias resolves to a :data:`PRICES` id, which ``overrides`` may also
    reprice. Anything else costs 0.

    Args:
        model: The model id as sent to the provider (or an alias).
        overrides: Configured prices by model id; they win over the table.

    Returns:
        The price; :data:`FREE` for unknown models.
    """
    return known_price(model, overrides) or FREE


def known_price(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price of ``model`` as :func:`price_for` finds it, or ``None`` if it knows none."""
    table: dict[str, ModelPrice] = dict(PRICES)
    table.update({key.strip().lower(): price for key, price in (overrides or {}).items()})
    name = model.strip().lower()
    if name in table:
        return table[name]
    # Normalized spelling -> table id or alias; a table id wins over an alias spelled alike.
    known = {_normalize(key): key for key in [*_ALIASES, *table]}
    match = _match(_normalize(name), list(known))
    if match is None:
        return None
    key = known[match]
    return table[key] if key in table else table[_ALIASES[key]]


def cost_microdollars(usage: Mapping[str, int], price: ModelPrice) -> int:
    """The cost of one usage record in microdollars, rounded half up once.

    Args:
        usage: Token counts under the Anthropic usage keys ``input_tokens``, ``output_tokens``,
            ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` (missing keys are 0,
            other keys are ignored).
        price: The model's price.

    Returns:
        ``round_half_up(sum(tokens * USD per million tokens))`` -- e.g. 1000 input and 500
        output tokens of Sonnet (3/15) cost 3000 + 7500 = 10500 microdollars.

    Raises:
        ValueError: a token count is negative or not an integer.
    """
    total = Decimal(0)
    for key, rate in (
        ("input_tokens", price.input),
        ("output_tokens", price.output),
        ("cache_creation_input_tokens", price.cache_write),
        ("cache_read_input_tokens", price.cache_read),
    ):
        tokens = usage.get(key, 0)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"usage {key} must be a non-negative integer, got {tokens!r}")
        total += tokens * _decimal(rate)
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def microdollars_to_usd(micro: int) -> float:
    """Microdollars as a float number of USD (for ``total_cost_usd``).

    Args:
        micro: An amount in microdollars.

    Returns:
        ``micro / 1_000_000`` (correctly rounded).
    """
    return micro / 1_000_000


def usd_to_microdollars(usd: float | Decimal) -> int:
    """USD (e.g. a ``maxBudgetUsd`` option) as microdollars, rounded half up.

    Args:
        usd: An amount in USD.

    Returns:
        The amount in microdollars.

    Raises:
        ValueError: ``usd`` is not finite.
    """
    value = _decimal(usd)
    if not value.is_finite():
        raise ValueError(f"amount must be finite, got {usd!r}")
    return int((value * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
