"""The Anthropic provider: real Claude models through the official ``anthropic`` SDK.

:class:`AnthropicProvider` (name ``"anthropic"``) sends each :class:`ModelRequest` to the
streaming Messages API (``client.messages.create(..., stream=True)``, which yields the server's
raw events with no synthetic helper events) and re-yields every event as a plain dict in the
Anthropic raw-stream shape of :mod:`chucky.server.providers.base`. ``ping`` events are dropped
(the SDK already skips them).

Request mapping
---------------

``model``, ``max_tokens``, ``messages`` (passed through: they are already Anthropic-shaped),
``system`` (omitted when ``None``), ``tools`` (``name``, ``description``, ``input_schema``) and
these ``params`` (others are ignored):

* ``temperature``, ``top_p``, ``top_k`` -- sent in the body as given (SDK 2.x no longer has
  keyword arguments for them, so they go through ``extra_body``);
* ``stop`` (a string or a list of strings) -- ``stop_sequences``;
* ``max_thinking_tokens`` -- ``thinking: {"type": "enabled", "budget_tokens": n}``. The API
  wants ``1024 <= budget < max_tokens``: a smaller budget is raised to 1024, a budget not below
  ``max_tokens`` is lowered to ``max_tokens - 1``, and thinking is left out when no budget fits.

Retries
-------

The SDK's own retries are off (``max_retries=0``): it would re-send a request whose stream had
already reached our caller. This provider retries instead, through
:func:`~chucky.server.providers.retry.retrying` (the policy every provider shares: only before
the first event reached the caller, exponential backoff with full jitter, ``retry-after``
honoured, all capped at ``max_backoff``). The pure :func:`classify_failure` decides what is
retryable:

* connection errors and timeouts, HTTP 408, 409, 429 and 5xx (529 is ``overloaded``), an
  ``error`` event inside a 200 stream whose ``error.type`` is ``overloaded_error``,
  ``rate_limit_error``, ``api_error`` or ``timeout_error``, and a 200 body that ends before
  ``message_stop`` (``incomplete_stream``: a dropped connection);
* the wait the API asked for is ``retry-after-ms`` / ``retry-after``
  (:func:`~chucky.server.providers.retry.parse_retry_after`);
* other failures (400, 401, 403, 404, 413 ...) are raised at once, not retryable
  (``reason`` ``provider_rejected``); after ``max_retries`` retries the last failure is raised,
  retryable (``reason`` ``provider_unavailable``). A failure after an event was yielded has
  ``details["streamed"] = True``.

Every exception of the SDK and of its HTTP library is translated here into a
:class:`~chucky.errors.ProviderError` (chained as ``__cause__``). Messages never contain the
API key.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

import anthropic
import httpx2
from anthropic.types import RawMessageStreamEvent

from chucky.errors import ProviderError

from ..._redact import redacting_logger
from .base import ModelRequest, Provider, provider_error, redact_secret, tool_choice_for
from .retry import DEFAULT_RETRY, RetryPolicy, parse_retry_after, retrying

__all__ = [
    "MIN_THINKING_BUDGET",
    "AnthropicProvider",
    "Failure",
    "build_create_arguments",
    "classify_failure",
    "thinking_budget",
]

logger = redacting_logger("chucky.server.providers.anthropic")


MIN_THINKING_BUDGET: Final = 1024
"""The smallest ``budget_tokens`` the Messages API accepts for extended thinking."""

# error.type of a stream `error` event (or an error body) -> (kind, retryable)
_ERROR_TYPES: Final[Mapping[str, tuple[str, bool]]] = {
    "overloaded_error": ("overloaded", True),
    "rate_limit_error": ("rate_limited", True),
    "api_error": ("server_error", True),
    "timeout_error": ("timeout", True),
    "invalid_request_error": ("bad_request", False),
    "authentication_error": ("authentication", False),
    "billing_error": ("billing", False),
    "permission_error": ("permission_denied", False),
    "not_found_error": ("not_found", False),
    "request_too_large": ("request_too_large", False),
}

# HTTP status -> kind, for responses whose body names no known error type
_STATUS_KINDS: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "authentication",
    402: "billing",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limited",
    529: "overloaded",
}

# The statuses the SDK's own policy retries, plus every 5xx.
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})

# Everything the SDK and its transport may raise while opening or reading a stream. ValueError
# covers a malformed SSE `data:` line (json.JSONDecodeError) and event validation.
_LIBRARY_ERRORS: Final = (
    anthropic.AnthropicError,
    httpx2.HTTPError,
    httpx2.StreamError,
    ValueError,
)

# While building the request the SDK reports misconfiguration (no credentials, arguments it
# rejects) as TypeError or ValueError: nothing a retry can fix.
_CALL_ERRORS: Final = (*_LIBRARY_ERRORS, TypeError)


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one attempt, as the retry policy sees it.

    Attributes:
        kind: ``overloaded``, ``rate_limited``, ``server_error``, ``timeout``, ``connection``,
            ``bad_request``, ``authentication`` ...
        retryable: Whether another attempt may succeed.
        message: A human-readable description (no credentials).
        status: The HTTP status, if there was a response (200 for an ``error`` event inside a
            stream).
        error_type: ``error.type`` of the API's error body, if any.
        request_id: The ``request-id`` response header, if any.
        retry_after: Seconds the server asked to wait, if it said.
    """

    kind: str
    retryable: bool
    message: str
    status: int | None = None
    error_type: str | None = None
    request_id: str | None = None
    retry_after: float | None = None


def classify_failure(
    exc: BaseException, *, opening: bool = False, now: float | None = None
) -> Failure:
    """Map an exception of the SDK or its transport to a :class:`Failure` (pure).

    Args:
        exc: What the SDK raised while opening or reading a stream.
        opening: Whether it was raised before a response arrived (a ``TypeError`` or
            ``ValueError`` then means the request could not be built: not retryable).
        now: The time, in seconds since the epoch, for a ``retry-after`` given as an HTTP
            date (``None``: such a date is ignored).

    Returns:
        The failure; unknown exceptions are ``error``, not retryable.
    """
    if isinstance(exc, anthropic.APITimeoutError):
        return Failure("timeout", True, "request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return Failure("connection", True, f"connection error: {exc.message}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        error_type = exc.type if isinstance(exc.type, str) else None
        known = _ERROR_TYPES.get(error_type) if error_type is not None else None
        if known is not None:
            kind, retryable = known
        else:
            kind = _STATUS_KINDS.get(status, "server_error" if status >= 500 else "error")
            retryable = status >= 500 or status in _RETRYABLE_STATUSES
        # A 5xx stays retryable whatever its body says; a 200 only by its error type.
        retryable = retryable or status >= 500 or status in _RETRYABLE_STATUSES
        detail = exc.api_message if isinstance(exc.api_message, str) else None
        where = f"HTTP {status}" if status != 200 else "error event in stream"
        message = f"{kind} ({where})" + (f": {detail}" if detail else "")
        return Failure(
            kind,
            retryable,
            message,
            status=status,
            error_type=error_type,
            request_id=exc.request_id,
            retry_after=parse_retry_after(exc.response.headers, now=now),
        )
    if opening and isinstance(exc, TypeError | ValueError):
        return Failure("invalid_request", False, f"request not sent: {exc}")
    if isinstance(exc, httpx2.TransportError):
        # Raised mid-body (the SDK wraps only errors while sending the request).
        return Failure("connection", True, f"connection error: {type(exc).__name__}")
    if isinstance(exc, ValueError | httpx2.HTTPError | httpx2.StreamError):
        return Failure("bad_response", True, f"malformed response: {type(exc).__name__}")
    return Failure("error", False, f"{type(exc).__name__}: {exc}")


def thinking_budget(requested: int, max_tokens: int) -> int | None:
    """The ``budget_tokens`` to send for ``requested`` thinking tokens, or ``None`` (pure).

    The API wants ``1024 <= budget < max_tokens``.
    """
    budget = min(max(requested, MIN_THINKING_BUDGET), max_tokens - 1)
    return budget if budget >= MIN_THINKING_BUDGET else None


def build_create_arguments(request: ModelRequest) -> dict[str, Any]:
    """The keyword arguments of ``client.messages.create`` for ``request`` (pure).

    Returns:
        ``model``, ``max_tokens``, ``messages`` and, when set, ``system``, ``tools``,
        ``tool_choice`` (:func:`~chucky.server.providers.base.tool_choice_for`),
        ``stop_sequences``, ``thinking`` and ``extra_body`` (``temperature``, ``top_p``,
        ``top_k``). ``stream`` is not included.
    """
    arguments: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [dict(message) for message in request.messages],
    }
    if request.system is not None:
        arguments["system"] = request.system
    if request.tools:
        arguments["tools"] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.input_schema),
            }
            for tool in request.tools
        ]
    params = request.params
    tool_choice = tool_choice_for(params.get("tool_choice"), request.tools)
    if tool_choice is not None:
        arguments["tool_choice"] = tool_choice
    stop = params.get("stop")
    if isinstance(stop, str):
        arguments["stop_sequences"] = [stop]
    elif isinstance(stop, list | tuple) and stop:
        arguments["stop_sequences"] = [str(item) for item in stop]
    requested = params.get("max_thinking_tokens")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        budget = thinking_budget(requested, request.max_tokens)
        if budget is not None:
            arguments["thinking"] = {"type": "enabled", "budget_tokens": budget}
    extra = {
        key: params[key]
        for key in ("temperature", "top_p", "top_k")
        if isinstance(params.get(key), int | float) and not isinstance(params.get(key), bool)
    }
    if extra:
        arguments["extra_body"] = extra
    return arguments


class AnthropicProvider(Provider):
    """Claude through the official ``anthropic`` SDK (see the module docstring).

    Args:
        api_key: The API key; ``None`` lets the SDK read ``ANTHROPIC_API_KEY``.
        base_url: The API's base URL (``None``: the SDK's default or ``ANTHROPIC_BASE_URL``).
        client: A ready ``anthropic.AsyncAnthropic`` to use instead (tests hand one with a
            mock transport). It is used with SDK retries off and is not closed by
            :meth:`aclose`.
        max_retries, backoff, max_backoff: The :class:`~chucky.server.providers.retry.
            RetryPolicy` (3 retries, 0.5 s doubling, capped at 8 s).
        sleep: The coroutine function that waits (tests pass a recorder).
        random: The jitter's uniform draw in ``[0, 1)`` (tests pass a constant).

    Raises:
        ValueError: a negative or non-finite retry setting.
    """

    name: ClassVar[str] = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        max_retries: int = DEFAULT_RETRY.max_retries,
        backoff: float = DEFAULT_RETRY.backoff,
        max_backoff: float = DEFAULT_RETRY.max_backoff,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._retry = RetryPolicy(max_retries, backoff, max_backoff)
        self._owns_client = client is None
        if client is None:
            client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)
        else:
            # A copy sharing the caller's HTTP client: only the retry setting differs.
            client = client.with_options(max_retries=0)
        self._client = client
        self._sleep = sleep
        self._random = random
        self._closed = False

    def _redact(self, text: str) -> str:
        return redact_secret(text, self._client.api_key)

    def _error(self, failure: Failure) -> ProviderError:
        extra: dict[str, Any] = {}
        for key in ("status", "error_type", "request_id"):
            value = getattr(failure, key)
            if value is not None:
                extra[key] = value
        return provider_error(
            self._redact(f"anthropic provider failure: {failure.message}"),
            kind=failure.kind,
            retryable=failure.retryable,
            retry_after=failure.retry_after,
            **extra,
        )

    async def _open(
        self, arguments: Mapping[str, Any]
    ) -> anthropic.AsyncStream[RawMessageStreamEvent]:
        create = cast(Callable[..., Awaitable[Any]], self._client.messages.create)
        events = await create(**arguments, stream=True)
        return cast("anthropic.AsyncStream[RawMessageStreamEvent]", events)

    def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Stream one Messages API call as raw events (see the module docstring).

        Args:
            request: The model call.

        Yields:
            Anthropic raw-stream events as plain dicts (``ping`` dropped).

        Raises:
            ProviderError: the call failed; not retried if any event was already yielded
                (``details["streamed"]`` is then ``True``).
        """
        return retrying(
            lambda: self._attempt(build_create_arguments(request)),
            policy=self._retry,
            provider=self.name,
            sleep=self._sleep,
            random=self._random,
        )

    async def _attempt(self, arguments: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One request: its events, or a :class:`ProviderError` for whatever went wrong."""
        try:
            events = await self._open(arguments)
        except _CALL_ERRORS as exc:
            raise self._error(classify_failure(exc, opening=True, now=time.time())) from exc
        finished = False
        try:
            while True:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    if finished:
                        return
                    # The body ended without `message_stop`: a dropped connection.
                    failure = Failure("incomplete_stream", True, "stream ended before message_stop")
                    raise self._error(failure) from None
                except _CALL_ERRORS as exc:
                    raise self._error(classify_failure(exc, now=time.time())) from exc
                payload = event.model_dump(mode="json", exclude_none=True, warnings=False)
                kind = payload.get("type")
                if kind == "ping":
                    continue
                if kind == "message_start":
                    finished = False
                elif kind == "message_stop":
                    finished = True
                yield payload
        finally:
            await _close_quietly(events)

    async def aclose(self) -> None:
        """Close the SDK client if this provider created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.close()


async def _close_quietly(events: anthropic.AsyncStream[RawMessageStreamEvent]) -> None:
    # Releasing the connection must not replace the error being reported, nor be cut short.
    try:
        await asyncio.shield(events.close())
    except _LIBRARY_ERRORS:
        logger.debug("closing an anthropic stream failed", exc_info=True)
