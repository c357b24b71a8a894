"""One retry policy for every provider (issue 11, finding 15).

The pure policy (:class:`RetryPolicy`, :func:`parse_retry_after`), the loop
(:func:`retrying`) with fake attempts, then both real providers -- their SDKs and HTTP stacks --
against recorded 429, 529 and "overloaded inside a 200 stream" responses served by a local
stand-in on 127.0.0.1 (no internet). Sleep and the jitter's random draw are injected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from support.anthropic_api import (
    MessagesAPI,
    Reply,
    overloaded,
    rate_limited,
    sse_error,
    sse_text,
)

from chucky.errors import ProviderError, error_from_payload
from chucky.server.providers.anthropic import AnthropicProvider
from chucky.server.providers.base import MessageAccumulator, ModelRequest, provider_error
from chucky.server.providers.openai import OpenAIProvider
from chucky.server.providers.retry import (
    DEFAULT_RETRY,
    RetryPolicy,
    parse_retry_after,
    retrying,
)

API_KEY = "sk-ant-retry-" + "k" * 24
CLAUDE = "claude-haiku-4-5-20251001"


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def draws(*values: float) -> Callable[[], float]:
    """A random source returning ``values`` in turn (the last one repeats)."""
    pending = list(values)

    def draw() -> float:
        return pending.pop(0) if len(pending) > 1 else pending[0]

    return draw


# -- the policy ----------------------------------------------------------------------------------


def test_full_jitter_draws_below_the_doubling_ceiling() -> None:
    policy = RetryPolicy(max_retries=6, backoff=0.5, max_backoff=8.0)
    assert [policy.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [policy.delay(n, random=lambda: 0.25) for n in range(6)] == [
        0.125,
        0.25,
        0.5,
        1.0,
        2.0,
        2.0,
    ]
    assert policy.delay(3, random=lambda: 0.0) == 0.0
    assert policy.ceiling(10_000) == 8.0  # no overflow on a huge attempt count


def test_retry_after_is_honoured_capped_and_not_jittered() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=8.0)
    assert policy.delay(0, retry_after=2.0, random=lambda: 0.0) == 2.0
    assert policy.delay(2, retry_after=60.0, random=lambda: 0.0) == 8.0
    assert policy.delay(0, retry_after=0.0, random=lambda: 0.9) == 0.0


def test_the_default_policy() -> None:
    assert RetryPolicy(max_retries=3, backoff=0.5, max_backoff=8.0) == DEFAULT_RETRY


@pytest.mark.parametrize(
    "settings",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"backoff": -0.1},
        {"max_backoff": float("inf")},
        {"backoff": float("nan")},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**settings)
    with pytest.raises(ValueError, match="must be"):
        AnthropicProvider(api_key=API_KEY, base_url="http://127.0.0.1:9", **settings)
    with pytest.raises(ValueError, match="must be"):
        OpenAIProvider(api_key="sk-x", base_url="http://127.0.0.1:9/v1", **settings)


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ({"retry-after": "2"}, NOW, 2.0),
        ({"retry-after": "1.5"}, None, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, NOW, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "3"}, NOW, 3.0),
        ({"retry-after": format_datetime(datetime(2026, 1, 2, 3, 4, 35, tzinfo=UTC))}, NOW, 30.0),
        ({"retry-after": format_datetime(datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC))}, NOW, 0.0),
        ({"retry-after": "Fri, 02 Jan 2026 03:04:35 GMT"}, None, None),  # no clock, no date
        ({"retry-after": "-1"}, NOW, None),
        ({"retry-after": "nan"}, NOW, None),
        ({"retry-after": "soon"}, NOW, None),
        ({}, NOW, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], now: float | None, expected: float) -> None:
    assert parse_retry_after(headers, now=now) == expected


# -- the typed error -----------------------------------------------------------------------------


def test_provider_error_carries_a_typed_retryable() -> None:
    error = provider_error("overloaded", kind="overloaded", retryable=True, retry_after=2.0)
    assert error.retryable is True and error.retry_after == 2.0
    # The wire keeps what clients read.
    assert error.details["retryable"] is True
    assert error.to_payload()["details"]["reason"] == "provider_unavailable"
    rejected = ProviderError("no", retryable=False)
    assert rejected.retryable is False and rejected.reason == "provider_rejected"
    assert rejected.details["retryable"] is False


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"retryable": True, "reason": "provider_unavailable"}, True),
        ({"retryable": False}, False),
        ({"reason": "provider_unavailable"}, True),  # a server that sends only the reason
        ({"reason": "provider_rejected"}, False),
        (None, False),
    ],
)
def test_a_provider_error_frame_gives_the_typed_retryable(
    details: dict[str, Any] | None, expected: bool
) -> None:
    payload: dict[str, Any] = {"message": "provider failed", "code": "PROVIDER_ERROR"}
    if details is not None:
        payload["details"] = details
    error = error_from_payload(payload)
    assert isinstance(error, ProviderError)
    assert error.retryable is expected


# -- the loop ------------------------------------------------------------------------------------


class Attempts:
    """Attempts that fail with the given errors in turn, then yield ``events``; each records
    whether it was closed."""

    def __init__(self, failures: Sequence[ProviderError | None], events: Sequence[str]) -> None:
        self.failures = list(failures)
        self.events = list(events)
        self.opened = 0
        self.closed = 0

    def __call__(self) -> AsyncIterator[str]:
        failure = self.failures[self.opened] if self.opened < len(self.failures) else None
        self.opened += 1
        return self._attempt(failure)

    async def _attempt(self, failure: ProviderError | None) -> AsyncIterator[str]:
        try:
            if failure is not None and failure.details.get("after") is None:
                raise failure
            for index, event in enumerate(self.events):
                if failure is not None and failure.details.get("after") == index:
                    raise failure
                yield event
        finally:
            self.closed += 1


def failure(retryable: bool = True, **details: Any) -> ProviderError:
    return provider_error("failed", kind="test", retryable=retryable, **details)


async def run(attempts: Attempts, **options: Any) -> tuple[list[str], SleepRecorder]:
    sleep = SleepRecorder()
    options.setdefault("policy", DEFAULT_RETRY)
    options.setdefault("random", lambda: 0.5)
    events = retrying(attempts, provider="test", sleep=sleep, **options)
    return [event async for event in events], sleep


async def test_retryable_failures_are_retried_with_jittered_backoff() -> None:
    attempts = Attempts([failure(), failure(), failure()], ["a", "b"])
    events, sleep = await run(attempts, random=draws(0.5, 0.1, 0.9))
    assert events == ["a", "b"]
    assert sleep.delays == [0.25, 0.1, 1.8]
    assert (attempts.opened, attempts.closed) == (4, 4)


async def test_retry_after_of_the_error_is_the_wait() -> None:
    limited = provider_error("slow down", kind="rate_limited", retryable=True, retry_after=3.0)
    events, sleep = await run(Attempts([limited], ["a"]))
    assert events == ["a"] and sleep.delays == [3.0]


async def test_a_rejected_call_is_not_retried() -> None:
    attempts = Attempts([failure(retryable=False)], ["a"])
    with pytest.raises(ProviderError) as caught:
        await run(attempts)
    assert caught.value.details["attempts"] == 1 and caught.value.details["streamed"] is False
    assert attempts.opened == 1


async def test_retries_run_out() -> None:
    attempts = Attempts([failure()] * 5, ["a"])
    with pytest.raises(ProviderError) as caught:
        await run(attempts, policy=RetryPolicy(max_retries=2))
    assert caught.value.retryable and caught.value.details["attempts"] == 3
    assert attempts.opened == 3


async def test_no_retry_once_an_event_went_out() -> None:
    attempts = Attempts([failure(after=1)], ["a", "b"])
    seen: list[str] = []
    sleep = SleepRecorder()
    with pytest.raises(ProviderError) as caught:
        async for event in retrying(attempts, policy=DEFAULT_RETRY, provider="t", sleep=sleep):
            seen.append(event)
    assert seen == ["a"]
    assert caught.value.details["streamed"] is True and caught.value.details["attempts"] == 1
    assert sleep.delays == [] and attempts.opened == 1


async def test_a_caller_stopping_early_closes_the_attempt() -> None:
    attempts = Attempts([], ["a", "b", "c"])
    events = retrying(attempts, policy=DEFAULT_RETRY, provider="t", sleep=SleepRecorder())
    assert await anext(events) == "a"
    await events.aclose()  # type: ignore[attr-defined]
    assert attempts.closed == 1


# -- the providers against recorded responses ----------------------------------------------------


def request_for(model: str = CLAUDE) -> ModelRequest:
    return ModelRequest(model=model, system=None, messages=[{"role": "user", "content": "hi"}])


async def fold(events: AsyncIterator[dict[str, Any]]) -> MessageAccumulator:
    accumulator = MessageAccumulator()
    async for event in events:
        accumulator.feed(event)
    return accumulator


def anthropic_provider(api: MessagesAPI, **options: Any) -> AnthropicProvider:
    return AnthropicProvider(api_key=API_KEY, base_url=api.url, **options)


@pytest.mark.parametrize(
    ("replies", "draw", "delays"),
    [
        # 429 with retry-after: 2 s, whatever the draw.
        ([rate_limited("2"), sse_text("Hi")], 0.9, [2.0]),
        # 429 asking for a minute: capped at max_backoff.
        ([rate_limited("60"), sse_text("Hi")], 0.9, [8.0]),
        # 529 overloaded (no retry-after): full jitter under the 0.5 s ceiling, then 1 s.
        ([overloaded(), overloaded(), sse_text("Hi")], 0.5, [0.25, 0.5]),
        # an overloaded_error event inside a 200 stream, before any other event.
        ([sse_error(), sse_text("Hi")], 0.1, [0.05]),
    ],
    ids=["429-retry-after", "429-capped", "529", "overloaded-in-200"],
)
async def test_anthropic_retries_recorded_failures(
    replies: list[bytes | Reply], draw: float, delays: list[float]
) -> None:
    sleep = SleepRecorder()
    with MessagesAPI(replies) as api:
        provider = anthropic_provider(api, sleep=sleep, random=lambda: draw)
        try:
            answer = await fold(provider.stream(request_for()))
        finally:
            await provider.aclose()
    assert answer.text == "Hi"
    assert sleep.delays == delays
    assert len(api.requests) == len(delays) + 1


async def test_anthropic_overloaded_to_the_end_is_a_retryable_provider_error() -> None:
    sleep = SleepRecorder()
    with MessagesAPI([overloaded()]) as api:
        provider = anthropic_provider(api, sleep=sleep, random=lambda: 1.0, max_retries=2)
        try:
            with pytest.raises(ProviderError) as caught:
                await fold(provider.stream(request_for()))
        finally:
            await provider.aclose()
    error = caught.value
    assert error.retryable is True and error.details["retryable"] is True
    assert error.reason == "provider_unavailable"
    assert error.details["kind"] == "overloaded" and error.details["status"] == 529
    assert error.details["attempts"] == 3
    assert sleep.delays == [0.5, 1.0] and len(api.requests) == 3
    assert API_KEY not in str(error)


def chat_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    return {
        "id": "chatcmpl-9Xz",
        "object": "chat.completion.chunk",
        "created": 1767323045,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def chat_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


CHAT_HI = chat_sse(chat_chunk("Hi"), chat_chunk(None, "stop"))


def chat_error(status: int, message: str, kind: str, code: str | None, **headers: str) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status, json.dumps(body).encode(), {"x-request-id": "req_8c1f", **headers})


CHAT_RATE_LIMITED = chat_error(
    429,
    "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, "
    "Requested 1. Please try again in 20s.",
    "requests",
    "rate_limit_exceeded",
    **{"retry-after": "20"},
)
CHAT_RATE_LIMITED_MS = chat_error(
    429, "Rate limit reached.", "tokens", "rate_limit_exceeded", **{"retry-after-ms": "1500"}
)
CHAT_OVERLOADED = chat_error(
    503, "The server is overloaded or not ready yet.", "server_error", None
)
# An OpenAI-compatible server failing inside a 200 stream (the SDK raises openai.APIError).
CHAT_ERROR_IN_200 = chat_sse(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
        }
    }
)


@pytest.mark.parametrize(
    ("replies", "draw", "delays"),
    [
        # Retry-After was ignored by the OpenAI provider before: it waited 0.5 s.
        ([CHAT_RATE_LIMITED, CHAT_HI], 0.9, [8.0]),
        ([CHAT_RATE_LIMITED_MS, CHAT_HI], 0.9, [1.5]),
        ([CHAT_OVERLOADED, CHAT_OVERLOADED, CHAT_HI], 0.5, [0.25, 0.5]),
        ([CHAT_ERROR_IN_200, CHAT_HI], 0.2, [0.1]),
    ],
    ids=["429-retry-after", "429-retry-after-ms", "503", "error-in-200"],
)
async def test_openai_retries_recorded_failures_by_the_same_policy(
    replies: list[bytes | Reply], draw: float, delays: list[float]
) -> None:
    sleep = SleepRecorder()
    with MessagesAPI(replies) as api:
        provider = OpenAIProvider(
            api_key="sk-openai-test", base_url=f"{api.url}/v1", sleep=sleep, random=lambda: draw
        )
        try:
            answer = await fold(provider.stream(request_for("gpt-4o-mini")))
        finally:
            await provider.aclose()
    assert answer.text == "Hi"
    assert sleep.delays == delays
    assert [path for path, _, _ in api.requests] == ["/v1/chat/completions"] * len(api.requests)
    assert len(api.requests) == len(delays) + 1


async def test_openai_failures_carry_the_same_details_as_anthropic() -> None:
    sleep = SleepRecorder()
    with MessagesAPI([CHAT_OVERLOADED]) as api:
        provider = OpenAIProvider(
            api_key="sk-openai-test", base_url=f"{api.url}/v1", sleep=sleep, max_retries=1
        )
        try:
            with pytest.raises(ProviderError) as caught:
                await fold(provider.stream(request_for("gpt-4o-mini")))
        finally:
            await provider.aclose()
    error = caught.value
    assert error.retryable is True and error.details["kind"] == "overloaded"
    assert error.details["attempts"] == 2 and error.details["streamed"] is False
    assert len(sleep.delays) == 1 and 0.0 <= sleep.delays[0] < 0.5
