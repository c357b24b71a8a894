"""The OpenAI-compatible provider: any server speaking ``POST /v1/chat/completions``.

:class:`OpenAIProvider` (name ``"openai"``) serves OpenAI itself and the OpenAI-compatible
servers (vLLM, llama.cpp server, Ollama, LM Studio) through the official ``openai`` SDK. The
translation both ways is pure and lives in :mod:`chucky.server.providers.openai_translate`;
this module is the I/O shell: it sends the request, feeds the streamed chunks to a
:class:`~chucky.server.providers.openai_translate.ChunkTranslator`, and maps every SDK and
``httpx2`` exception to a :class:`~chucky.errors.ProviderError` (``raise ... from exc``).
Failures before the first event are retried by
:func:`~chucky.server.providers.retry.retrying`, the policy every provider shares (backoff with
full jitter, ``retry-after-ms`` / ``retry-after`` honoured)::

    openai.APITimeoutError           kind timeout            retryable
    openai.APIConnectionError        kind connection_error   retryable
    httpx2.HTTPError (mid-stream)     kind connection_error   retryable
    openai.RateLimitError (429)      kind rate_limited       retryable
    APIStatusError 408 / 409         kind timeout / conflict retryable
    APIStatusError 5xx               kind server_error (503, 529: overloaded)  retryable
    APIStatusError other 4xx         kind bad_request, authentication, permission_denied,
                                     not_found               not retryable
    openai.APIError (error event)    kind stream_error       retryable
    malformed chunk JSON             kind invalid_response   not retryable
"""

from __future__ import annotations

import asyncio
import os
import random as _random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, cast

import httpx2
import openai

from chucky.errors import ProviderError

from .base import ModelRequest, Provider, provider_error, redact_secret
from .openai_translate import (
    ChunkTranslator,
    ToolNameMap,
    chat_messages,
    chat_params,
    chat_tool_choice,
    chat_tools,
    estimate_prompt_tokens,
)
from .retry import DEFAULT_RETRY, RetryPolicy, parse_retry_after, retrying

__all__ = ["PLACEHOLDER_API_KEY", "OpenAIProvider", "translate_error"]

PLACEHOLDER_API_KEY = "not-needed"
"""The key sent to servers that need none (local servers), when no key is configured."""

_STATUS_KINDS = {
    400: "bad_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "request_too_large",
    422: "bad_request",
    429: "rate_limited",
    503: "overloaded",
    529: "overloaded",
}


def translate_error(
    exc: BaseException, *, api_key: str | None = None, now: float | None = None
) -> ProviderError:
    """The :class:`ProviderError` for an ``openai`` SDK or ``httpx2`` exception (pure).

    Args:
        exc: The library exception.
        api_key: The key in use; removed from the message should it appear there.
        now: The time, in seconds since the epoch, for a ``retry-after`` given as an HTTP
            date (``None``: such a date is ignored).

    Returns:
        The error to raise (the caller chains ``exc`` as its cause).
    """
    status: int | None = None
    retry_after: float | None = None
    extra: dict[str, Any] = {}
    if isinstance(exc, openai.APITimeoutError):
        kind, retryable = "timeout", True
    elif isinstance(exc, openai.APIConnectionError | httpx2.HTTPError | httpx2.StreamError):
        kind, retryable = "connection_error", True
    elif isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if exc.request_id:
            extra["request_id"] = exc.request_id
        retryable = status in (408, 409, 429) or status >= 500
        kind = _STATUS_KINDS.get(status, "server_error" if status >= 500 else "bad_request")
        retry_after = parse_retry_after(exc.response.headers, now=now)
    elif isinstance(exc, openai.APIError):
        kind, retryable = "stream_error", True
    elif isinstance(exc, ValueError):  # a chunk that is not JSON
        kind, retryable = "invalid_response", False
    else:
        kind, retryable = "provider_error", False
    if status is not None:
        extra["status"] = status
    text = str(exc) or type(exc).__name__
    secret = api_key if api_key != PLACEHOLDER_API_KEY else None
    message = redact_secret(f"openai provider: {kind}: {text}", secret)
    return provider_error(message, kind=kind, retryable=retryable, retry_after=retry_after, **extra)


_TRANSLATED = (openai.OpenAIError, httpx2.HTTPError, httpx2.StreamError, ValueError)


class OpenAIProvider(Provider):
    """A provider for OpenAI and OpenAI-compatible chat-completions servers.

    Example::

        provider = OpenAIProvider(base_url="http://127.0.0.1:8080/v1")
        async for event in provider.stream(request):
            ...
        await provider.aclose()

    Args:
        base_url: The API root (``.../v1``); ``None`` uses the SDK default (``OPENAI_BASE_URL``
            or OpenAI).
        api_key: The API key; ``None`` reads ``OPENAI_API_KEY`` and falls back to
            :data:`PLACEHOLDER_API_KEY` (local servers need no key).
        client: A ready ``openai.AsyncOpenAI`` client (then ``base_url`` and ``api_key`` are
            ignored and :meth:`aclose` leaves it open).
        max_retries, backoff, max_backoff: The :class:`~chucky.server.providers.retry.
            RetryPolicy` of a call that failed retryably before its first event (3 retries,
            0.5 s doubling, capped at 8 s). The SDK's own retries are disabled on clients this
            provider creates.
        sleep: The coroutine function that waits (tests pass a recorder).
        random: The jitter's uniform draw in ``[0, 1)`` (tests pass a constant).

    Raises:
        ValueError: a negative or non-finite retry setting.
    """

    name: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        max_retries: int = DEFAULT_RETRY.max_retries,
        backoff: float = DEFAULT_RETRY.backoff,
        max_backoff: float = DEFAULT_RETRY.max_backoff,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._retry = RetryPolicy(max_retries, backoff, max_backoff)
        self._owns_client = client is None
        if client is None:
            key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
            client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0)
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")  # only to redact messages
        self._client = client
        self._sleep = sleep
        self._random = random
        self._closed = False

    def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Run one chat completion, yielding Anthropic raw-stream events.

        Args:
            request: The model call. ``params`` keys other than ``temperature``, ``top_p``,
                ``frequency_penalty``, ``presence_penalty``, ``stop`` (or ``stop_sequences``),
                ``seed`` and ``tool_choice`` (Anthropic or OpenAI forms, see
                :func:`~chucky.server.providers.openai_translate.chat_tool_choice`) are ignored.

        Yields:
            Anthropic raw-stream events (see :mod:`chucky.server.providers.base`).

        Raises:
            ProviderError: the call failed; retryable failures before the first event are
                retried ``max_retries`` times first.
        """
        return retrying(
            lambda: self._attempt(request),
            policy=self._retry,
            provider=self.name,
            sleep=self._sleep,
            random=self._random,
        )

    async def _attempt(self, request: ModelRequest) -> AsyncGenerator[dict[str, Any], None]:
        """One request: its events, or a :class:`ProviderError` for whatever went wrong."""
        names = ToolNameMap()
        translator = ChunkTranslator(
            model=request.model, names=names, input_estimate=estimate_prompt_tokens(request)
        )
        messages = chat_messages(request, names)
        tools = chat_tools(request.tools, names)
        params = chat_params(request)
        tool_choice = chat_tool_choice(request.params.get("tool_choice"), request.tools, names)
        try:
            stream = await self._client.chat.completions.create(
                model=request.model,
                messages=cast(Any, messages),
                tools=cast(Any, tools) if tools else openai.omit,
                tool_choice=cast(Any, tool_choice) if tool_choice is not None else openai.omit,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=params["max_tokens"],
                temperature=params.get("temperature", openai.omit),
                top_p=params.get("top_p", openai.omit),
                frequency_penalty=params.get("frequency_penalty", openai.omit),
                presence_penalty=params.get("presence_penalty", openai.omit),
                stop=params.get("stop", openai.omit),
                seed=params.get("seed", openai.omit),
            )
        except _TRANSLATED as exc:
            raise self._error(exc) from exc
        async with stream:
            chunks = aiter(stream)
            while True:
                try:
                    chunk = await anext(chunks)
                    # warnings=False: servers send values of other types than the SDK's models
                    # declare (arguments as an object), which the translator normalises.
                    events = translator.feed(chunk.to_dict(warnings=False))
                except StopAsyncIteration:
                    break
                except _TRANSLATED as exc:
                    raise self._error(exc) from exc
                for event in events:
                    yield event
        for event in translator.finish():
            yield event

    def _error(self, exc: BaseException) -> ProviderError:
        return translate_error(exc, api_key=self._api_key, now=time.time())

    async def aclose(self) -> None:
        """Close the client if this provider created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.close()
