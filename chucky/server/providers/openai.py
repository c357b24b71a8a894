"""The OpenAI-compatible provider: any server speaking ``POST /v1/chat/completions``.

:class:`OpenAIProvider` (name ``"openai"``) serves OpenAI itself and the OpenAI-compatible
servers (vLLM, llama.cpp server, Ollama, LM Studio) through the official ``openai`` SDK. The
translation both ways is pure and lives in :mod:`chucky.server.providers.openai_translate`;
this module is the I/O shell: it sends the request, feeds the streamed chunks to a
:class:`~chucky.server.providers.openai_translate.ChunkTranslator`, retries failures that
happen before the first event, and maps every SDK and ``httpx2`` exception to a
:class:`~chucky.errors.ProviderError` (``raise ... from exc``)::

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
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar, cast

import httpx2
import openai

from chucky.errors import ProviderError

from .base import ModelRequest, Provider, provider_error, redact_secret, retry_delay
from .openai_translate import (
    ChunkTranslator,
    ToolNameMap,
    chat_messages,
    chat_params,
    chat_tool_choice,
    chat_tools,
    estimate_prompt_tokens,
)

__all__ = ["MAX_BACKOFF", "PLACEHOLDER_API_KEY", "OpenAIProvider", "translate_error"]

MAX_BACKOFF = 8.0
"""Upper bound of a retry delay, in seconds."""

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


def translate_error(exc: BaseException, *, api_key: str | None = None) -> ProviderError:
    """The :class:`ProviderError` for an ``openai`` SDK or ``httpx2`` exception (pure).

    Args:
        exc: The library exception.
        api_key: The key in use; removed from the message should it appear there.

    Returns:
        The error to raise (the caller chains ``exc`` as its cause).
    """
    status: int | None = None
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
    return provider_error(message, kind=kind, retryable=retryable, **extra)


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
        max_retries: Retries of a call that failed retryably before its first event. The SDK's
            own retries are disabled on clients this provider creates.
        retry_backoff: The first retry delay in seconds (doubling, capped at 8 s).
    """

    name: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
    ) -> None:
        self._owns_client = client is None
        if client is None:
            key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
            client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0)
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")  # only to redact messages
        self._client = client
        self._max_retries = max(0, max_retries)
        self._retry_backoff = max(0.0, retry_backoff)
        self._closed = False

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Run one chat completion, yielding Anthropic raw-stream events.

        Args:
            request: The model call. ``params`` keys other than ``temperature``, ``top_p``,
                ``stop`` (or ``stop_sequences``), ``seed`` and ``tool_choice`` (Anthropic or
                OpenAI forms, see
                :func:`~chucky.server.providers.openai_translate.chat_tool_choice`) are ignored.

        Yields:
            Anthropic raw-stream events (see :mod:`chucky.server.providers.base`).

        Raises:
            ProviderError: the call failed; retryable failures before the first event are
                retried ``max_retries`` times first.
        """
        attempt = 0
        while True:
            names = ToolNameMap()
            translator = ChunkTranslator(
                model=request.model,
                names=names,
                input_estimate=estimate_prompt_tokens(request),
            )
            try:
                # aclosing: a consumer that stops early closes the HTTP stream at once.
                attempt_events = self._attempt(request, names, translator)
                async with contextlib.aclosing(attempt_events) as events:
                    async for event in events:
                        yield event
                return
            except _TRANSLATED as exc:
                error = translate_error(exc, api_key=self._api_key)
                if translator.started or not error.details["retryable"]:
                    raise error from exc
                if attempt >= self._max_retries:
                    error.details["attempts"] = attempt + 1
                    raise error from exc
            await asyncio.sleep(
                retry_delay(attempt, backoff=self._retry_backoff, max_backoff=MAX_BACKOFF)
            )
            attempt += 1

    async def _attempt(
        self, request: ModelRequest, names: ToolNameMap, translator: ChunkTranslator
    ) -> AsyncGenerator[dict[str, Any], None]:
        messages = chat_messages(request, names)
        tools = chat_tools(request.tools, names)
        params = chat_params(request)
        tool_choice = chat_tool_choice(request.params.get("tool_choice"), request.tools, names)
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
            stop=params.get("stop", openai.omit),
            seed=params.get("seed", openai.omit),
        )
        async with stream:
            async for chunk in stream:
                # warnings=False: servers send values of other types than the SDK's models
                # declare (arguments as an object), which the translator normalises.
                for event in translator.feed(chunk.to_dict(warnings=False)):
                    yield event
        for event in translator.finish():
            yield event

    async def aclose(self) -> None:
        """Close the client if this provider created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.close()
