"""Retries of a model call: one policy and one loop for every provider.

A provider splits a call into **attempts**: an attempt opens the request and yields its events,
and raises :class:`~chucky.errors.ProviderError` -- with :attr:`~chucky.errors.ProviderError.
retryable` and, when the provider said, :attr:`~chucky.errors.ProviderError.retry_after` --
for every failure (the provider translates its library's exceptions; nothing else is caught
here). :func:`retrying` runs the attempts:

* a failure is retried only **before the first event reached the caller**: once an event went
  out, a retry would repeat what the client already saw, so the error is raised at once with
  ``details["streamed"] = True``;
* only a retryable failure is retried, at most :attr:`RetryPolicy.max_retries` times; the error
  raised carries ``details["attempts"]``;
* the wait before retry ``n`` (``n = 0, 1, ...``) is the provider's ``retry-after`` when it
  sent one, else exponential backoff with **full jitter**: a uniform draw in ``[0, min(backoff
  * 2 ** n, max_backoff))`` (clients retrying together spread out instead of hitting an
  overloaded API in waves); both are capped at ``max_backoff``.

The decisions are pure functions (:meth:`RetryPolicy.delay`, :func:`parse_retry_after`): no
hidden clock and no hidden random source -- the loop takes ``sleep`` and ``random``, so tests
inject both. The deadline of the whole call (retries included) is the agent loop's
(``model_timeout``, ``first_event_timeout``), not this module's.

No library is used: the loop must stop retrying after the first event, which the general
retry libraries (tenacity, backoff, stamina) do not model, and the policy is a few lines.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final, TypeVar

from ..._redact import redacting_logger
from ...errors import ProviderError

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "parse_retry_after", "retrying"]

logger = redacting_logger("chucky.server.providers.retry")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a failed model call (see the module docstring).

    Attributes:
        max_retries: Retries after the first attempt (0: never retry).
        backoff: The ceiling of the first delay, in seconds; it doubles with each retry.
        max_backoff: Upper bound of any delay, ``retry-after`` included.

    Raises:
        ValueError: a negative or non-finite value.
    """

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError(f"max_retries must be an integer, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt + 1`` without ``retry-after``."""
        # min() before the power could overflow: 2 ** 1100 is not a float.
        return min(self.backoff * 2.0 ** min(attempt, 64), self.max_backoff)

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        random: Callable[[], float] = _random.random,
    ) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (pure but for ``random``).

        Args:
            attempt: Retries already made (0 before the first retry).
            retry_after: Seconds the provider asked for, if it did.
            random: A uniform draw in ``[0, 1)``.

        Returns:
            ``min(retry_after, max_backoff)`` when the provider asked, else
            ``random() * ceiling(attempt)`` (full jitter).
        """
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_backoff))
        return max(0.0, random() * self.ceiling(attempt))


DEFAULT_RETRY: Final = RetryPolicy()
"""The policy of every provider unless configured: 3 retries, 0.5 s doubling, capped at 8 s."""


def parse_retry_after(headers: Mapping[str, str], *, now: float | None) -> float | None:
    """The wait a response asked for, in seconds (pure).

    Reads ``retry-after-ms`` (milliseconds; Anthropic and OpenAI send it), then ``retry-after``
    (seconds, or an HTTP date, RFC 9110 section 10.2.3).

    Args:
        headers: The response headers (a case-insensitive mapping, as HTTP libraries give).
        now: The current time, in seconds since the epoch, for an HTTP date; ``None``: a date
            is not used.

    Returns:
        Seconds (never negative), or ``None`` when neither header is usable.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        seconds = _number(raw_ms)
        if seconds is not None:
            return seconds / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None or now is None:
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


async def retrying(
    attempt: Callable[[], AsyncIterator[_T]],
    *,
    policy: RetryPolicy,
    provider: str,
    sleep: Callable[[float], Awaitable[object]],
    random: Callable[[], float] = _random.random,
) -> AsyncIterator[_T]:
    """Run ``attempt()`` until one ends, retrying as the module docstring says.

    Args:
        attempt: Opens one attempt: an async iterator of the call's events that raises
            :class:`~chucky.errors.ProviderError` on failure. Each attempt is closed
            (``aclose``, when it has one) before the next starts and when the caller stops early.
        policy: How often and how long to wait.
        provider: The provider's name, for the log line of each retry.
        sleep: Waits that many seconds (``asyncio.sleep``; tests pass a recorder).
        random: A uniform draw in ``[0, 1)``, the jitter.

    Yields:
        The events of the attempt that succeeded (and of a failed attempt, up to its failure).

    Raises:
        ProviderError: the last failure, with ``details["attempts"]`` and
            ``details["streamed"]``.
    """
    retries = 0
    while True:
        events = attempt()
        streamed = False
        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                except ProviderError as error:
                    error.details["attempts"] = retries + 1
                    error.details["streamed"] = streamed
                    if streamed or not error.retryable or retries >= policy.max_retries:
                        raise
                    wait = policy.delay(retries, retry_after=error.retry_after, random=random)
                    logger.info(
                        "%s call failed (%s), retry %d/%d in %.2fs",
                        provider,
                        error.details.get("kind", "error"),
                        retries + 1,
                        policy.max_retries,
                        wait,
                    )
                    break
                streamed = True
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        retries += 1
        await sleep(wait)
