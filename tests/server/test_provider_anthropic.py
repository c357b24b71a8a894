"""The Anthropic provider against recorded SSE bodies served by a mock HTTP transport.

No internet: the official ``anthropic`` client gets an ``httpx2.AsyncClient`` whose
``MockTransport`` answers from hand-written bodies in Anthropic's documented SSE format and
records every request body it received.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from chucky import Chucky
from chucky.errors import ProviderError
from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.pricing import cost_microdollars, microdollars_to_usd, price_for
from chucky.server.providers.anthropic import (
    AnthropicProvider,
    build_create_arguments,
    classify_failure,
    thinking_budget,
)
from chucky.server.providers.base import MessageAccumulator, ModelRequest, ToolSpec
from chucky.server.providers.retry import RetryPolicy
from chucky.server.routing import ModelRouter
from chucky.tokens import create_budget, create_token

API_KEY = "sk-ant-test-" + "k3y" * 8
MODEL = "claude-sonnet-4-6"


def sse(*events: dict[str, Any]) -> bytes:
    """An SSE body, ``event:`` line named after each event's type."""
    return b"".join(
        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events
    )


def message_start(input_tokens: int = 25, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
        },
    }


PING = {"type": "ping"}
OVERLOADED_EVENT = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}

TEXT_BODY = sse(
    message_start(input_tokens=472, cache_creation_input_tokens=120, cache_read_input_tokens=2048),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    PING,
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
)

TOOL_BODY = sse(
    message_start(),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Let me check."},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "mcp__weather__get_weather",
            "input": {},
        },
    },
    PING,
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"location": "San Fra'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": 'ncisco, CA", "unit": "c"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
)

THINKING_BODY = sse(
    message_start(),
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": " 27 * 453 = 12231."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 40},
    },
    {"type": "message_stop"},
)

Reply = httpx2.Response | Exception
Handler = Callable[[httpx2.Request], httpx2.Response]


def stream_response(body: bytes, status: int = 200) -> httpx2.Response:
    return httpx2.Response(status, headers={"content-type": "text/event-stream"}, content=body)


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> httpx2.Response:
    payload = {"type": "error", "error": {"type": error_type, "message": message}}
    return httpx2.Response(
        status,
        headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **(headers or {})},
        json=payload,
    )


class FakeAPI:
    """Answers requests from a list of replies (the last one repeats) and records them."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx2.Headers] = []

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        self.headers.append(request.headers)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def client(self) -> anthropic.AsyncAnthropic:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handler))
        return anthropic.AsyncAnthropic(
            api_key=API_KEY, base_url="http://anthropic.test", http_client=http, max_retries=0
        )


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def top_draw() -> float:
    """The jitter's draw at its top: each delay is its backoff ceiling (jitter itself is
    tested in test_provider_retry.py)."""
    return 1.0


def provider_for(api: FakeAPI, **options: Any) -> tuple[AnthropicProvider, SleepRecorder]:
    sleep = SleepRecorder()
    options.setdefault("random", top_draw)
    return AnthropicProvider(client=api.client(), sleep=sleep, **options), sleep


def request_for(
    content: Any = "hi",
    *,
    system: str | None = None,
    tools: Sequence[ToolSpec] = (),
    max_tokens: int = 1024,
    **params: Any,
) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        system=system,
        messages=[{"role": "user", "content": content}],
        tools=tools,
        max_tokens=max_tokens,
        params=params,
    )


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]


def fold(events: Sequence[dict[str, Any]]) -> MessageAccumulator:
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    return accumulator


# -- replies -------------------------------------------------------------------------------------


async def test_text_reply_has_the_raw_stream_shape_and_folds() -> None:
    api = FakeAPI(stream_response(TEXT_BODY))
    provider, sleep = provider_for(api)
    events = await collect(provider.stream(request_for("hi")))
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[2]["delta"] == {"type": "text_delta", "text": "Hello"}
    assert all(isinstance(e, dict) for e in events)
    json.dumps(events)  # plain JSON values only
    accumulator = fold(events)
    assert accumulator.text == "Hello!"
    assert accumulator.stop_reason == "end_turn"
    assert accumulator.message_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert accumulator.usage == {
        "input_tokens": 472,
        "output_tokens": 15,
        "cache_creation_input_tokens": 120,
        "cache_read_input_tokens": 2048,
    }
    assert sleep.delays == []
    sent = api.requests[0]
    assert sent["stream"] is True
    assert sent["model"] == MODEL
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert "system" not in sent and "tools" not in sent and "thinking" not in sent
    # SDK 2.x sends the key as a bearer token (1.x used x-api-key).
    auth = api.headers[0].get("x-api-key", "") + api.headers[0].get("authorization", "")
    assert API_KEY in auth
    await provider.aclose()


async def test_tool_use_folds_input_and_request_carries_options() -> None:
    api = FakeAPI(stream_response(TOOL_BODY))
    provider, _ = provider_for(api)
    schema = {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    }
    tool = ToolSpec("mcp__weather__get_weather", "Get the weather", schema)
    request = request_for(
        "weather in SF?",
        system="You are terse.",
        tools=[tool],
        max_tokens=777,
        stop="END",
        temperature=0.2,
        top_p=0.9,
        top_k=5,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        unknown_param="ignored",
    )
    accumulator = fold(await collect(provider.stream(request)))
    assert accumulator.stop_reason == "tool_use"
    assert accumulator.text == "Let me check."
    assert accumulator.tool_uses == [
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "mcp__weather__get_weather",
            "input": {"location": "San Francisco, CA", "unit": "c"},
        }
    ]
    sent = api.requests[0]
    assert sent["tools"] == [
        {
            "name": "mcp__weather__get_weather",
            "description": "Get the weather",
            "input_schema": schema,
        }
    ]
    assert sent["system"] == "You are terse."
    assert sent["max_tokens"] == 777
    assert sent["stop_sequences"] == ["END"]
    assert sent["temperature"] == 0.2
    assert sent["top_p"] == 0.9
    assert sent["top_k"] == 5
    assert "unknown_param" not in sent and "stop" not in sent
    # The Messages API has no penalties: they are not sent.
    assert "frequency_penalty" not in sent and "presence_penalty" not in sent
    await provider.aclose()


async def test_stop_sequences_from_a_list() -> None:
    api = FakeAPI(stream_response(TEXT_BODY))
    provider, _ = provider_for(api)
    await collect(provider.stream(request_for(stop=["a", "b"])))
    assert api.requests[0]["stop_sequences"] == ["a", "b"]


async def test_thinking_deltas_fold_and_request_has_budget() -> None:
    api = FakeAPI(stream_response(THINKING_BODY))
    provider, _ = provider_for(api)
    request = request_for("27 * 453?", max_tokens=16000, max_thinking_tokens=10000)
    accumulator = fold(await collect(provider.stream(request)))
    assert accumulator.content[0] == {
        "type": "thinking",
        "thinking": "Let me solve this step by step. 27 * 453 = 12231.",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
    }
    assert accumulator.text == "27 * 453 = 12,231"
    assert api.requests[0]["thinking"] == {"type": "enabled", "budget_tokens": 10000}
    assert api.requests[0]["max_tokens"] == 16000


@pytest.mark.parametrize(
    ("requested", "max_tokens", "expected"),
    [
        (10000, 16000, 10000),
        (10000, 4096, 4095),
        (100, 4096, 1024),
        (2000, 1024, None),
        (1024, 1025, 1024),
        (5000, 1024, None),
    ],
)
def test_thinking_budget_fits_max_tokens(
    requested: int, max_tokens: int, expected: int | None
) -> None:
    assert thinking_budget(requested, max_tokens) == expected
    arguments = build_create_arguments(
        request_for(max_tokens=max_tokens, max_thinking_tokens=requested)
    )
    if expected is None:
        assert "thinking" not in arguments
    else:
        assert arguments["thinking"] == {"type": "enabled", "budget_tokens": expected}


async def test_images_and_documents_pass_through_unchanged() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            "title": "report.pdf",
        },
    ]
    transcript = [
        {"role": "user", "content": content},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"a": 1}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "ok",
                    "is_error": False,
                }
            ],
        },
    ]
    api = FakeAPI(stream_response(TEXT_BODY))
    provider, _ = provider_for(api)
    request = ModelRequest(model=MODEL, system=None, messages=transcript)
    await collect(provider.stream(request))
    assert api.requests[0]["messages"] == transcript


# -- retries -------------------------------------------------------------------------------------


async def test_overloaded_529_is_retried_and_events_yielded_once() -> None:
    api = FakeAPI(error_response(529, "overloaded_error", "Overloaded"), stream_response(TEXT_BODY))
    provider, sleep = provider_for(api, backoff=0.5)
    events = await collect(provider.stream(request_for()))
    assert len(api.requests) == 2
    assert sleep.delays == [0.5]
    assert [e["type"] for e in events].count("message_start") == 1
    assert fold(events).text == "Hello!"


async def test_backoff_doubles_up_to_the_cap() -> None:
    api = FakeAPI(
        error_response(500, "api_error", "Internal"),
        error_response(503, "api_error", "Unavailable"),
        error_response(529, "overloaded_error", "Overloaded"),
        error_response(500, "api_error", "Internal"),
        stream_response(TEXT_BODY),
    )
    provider, sleep = provider_for(api, max_retries=4, backoff=1.0, max_backoff=3.0)
    assert fold(await collect(provider.stream(request_for()))).text == "Hello!"
    assert sleep.delays == [1.0, 2.0, 3.0, 3.0]


async def test_rate_limit_honours_retry_after() -> None:
    api = FakeAPI(
        error_response(429, "rate_limit_error", "Slow down", {"retry-after": "2"}),
        stream_response(TEXT_BODY),
    )
    provider, sleep = provider_for(api, backoff=0.5, max_backoff=8.0)
    await collect(provider.stream(request_for()))
    assert sleep.delays == [2.0]
    assert len(api.requests) == 2


async def test_retry_after_is_capped_by_max_backoff() -> None:
    api = FakeAPI(
        error_response(429, "rate_limit_error", "Slow down", {"retry-after": "60"}),
        stream_response(TEXT_BODY),
    )
    provider, sleep = provider_for(api, max_backoff=8.0)
    await collect(provider.stream(request_for()))
    assert sleep.delays == [8.0]


async def test_bad_request_is_not_retried() -> None:
    api = FakeAPI(error_response(400, "invalid_request_error", "max_tokens: too large"))
    provider, sleep = provider_for(api)
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    details = caught.value.details
    assert details["retryable"] is False
    assert details["reason"] == "provider_rejected"
    assert details["kind"] == "bad_request"
    assert details["status"] == 400
    assert details["request_id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert "max_tokens: too large" in str(caught.value)
    assert isinstance(caught.value.__cause__, anthropic.BadRequestError)
    assert len(api.requests) == 1
    assert sleep.delays == []


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [
        (401, "authentication_error", "authentication"),
        (403, "permission_error", "permission_denied"),
        (404, "not_found_error", "not_found"),
        (413, "request_too_large", "request_too_large"),
    ],
)
async def test_client_errors_are_rejected_at_once(status: int, error_type: str, kind: str) -> None:
    api = FakeAPI(error_response(status, error_type, "no"))
    provider, _ = provider_for(api)
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    assert caught.value.details["kind"] == kind
    assert caught.value.details["status"] == status
    assert caught.value.details["retryable"] is False
    assert len(api.requests) == 1


async def test_retries_exhausted_raise_the_last_error() -> None:
    api = FakeAPI(error_response(500, "api_error", "Internal server error"))
    provider, sleep = provider_for(api, max_retries=3)
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    details = caught.value.details
    assert details["retryable"] is True
    assert details["reason"] == "provider_unavailable"
    assert details["kind"] == "server_error"
    assert details["attempts"] == 4
    assert details["streamed"] is False
    assert len(api.requests) == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


async def test_error_event_first_in_a_200_stream_is_retried() -> None:
    api = FakeAPI(stream_response(sse(OVERLOADED_EVENT)), stream_response(TEXT_BODY))
    provider, sleep = provider_for(api)
    events = await collect(provider.stream(request_for()))
    assert len(api.requests) == 2
    assert sleep.delays == [0.5]
    assert fold(events).text == "Hello!"


async def test_error_event_after_streaming_raises_without_retry() -> None:
    body = sse(
        message_start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "He"}},
        OVERLOADED_EVENT,
    )
    api = FakeAPI(stream_response(body), stream_response(TEXT_BODY))
    provider, sleep = provider_for(api)
    seen: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(request_for()):
            seen.append(event)
    assert [e["type"] for e in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
    ]
    details = caught.value.details
    assert details["kind"] == "overloaded"
    assert details["retryable"] is True
    assert details["streamed"] is True
    assert details["status"] == 200
    assert details["error_type"] == "overloaded_error"
    assert len(api.requests) == 1
    assert sleep.delays == []


async def test_empty_200_body_is_retried() -> None:
    api = FakeAPI(stream_response(b""), stream_response(TEXT_BODY))
    provider, sleep = provider_for(api)
    assert fold(await collect(provider.stream(request_for()))).text == "Hello!"
    assert len(api.requests) == 2
    assert sleep.delays == [0.5]


async def test_body_cut_after_events_raises_without_retry() -> None:
    cut = TEXT_BODY[: TEXT_BODY.index(b"event: content_block_stop")]
    api = FakeAPI(stream_response(cut), stream_response(TEXT_BODY))
    provider, _ = provider_for(api)
    seen: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(request_for()):
            seen.append(event)
    assert fold(seen).text == "Hello!"
    assert caught.value.details["kind"] == "incomplete_stream"
    assert caught.value.details["streamed"] is True
    assert len(api.requests) == 1


async def test_breaking_out_early_closes_the_response() -> None:
    closed: list[bool] = []

    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield TEXT_BODY

        async def aclose(self) -> None:
            closed.append(True)

    response = httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())
    api = FakeAPI(response)
    provider, _ = provider_for(api)
    events = provider.stream(request_for())
    first = await events.__anext__()
    assert first["type"] == "message_start"
    await events.aclose()  # type: ignore[attr-defined]
    assert closed


async def test_connection_errors_are_retried_then_raised() -> None:
    api = FakeAPI(httpx2.ConnectError("connection refused"))
    provider, sleep = provider_for(api, max_retries=2)
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    assert caught.value.details["kind"] == "connection"
    assert caught.value.details["retryable"] is True
    assert caught.value.details["reason"] == "provider_unavailable"
    assert len(api.requests) == 3
    assert sleep.delays == [0.5, 1.0]


async def test_connection_error_then_success() -> None:
    api = FakeAPI(httpx2.ConnectError("connection refused"), stream_response(TEXT_BODY))
    provider, _ = provider_for(api)
    assert fold(await collect(provider.stream(request_for()))).text == "Hello!"


async def test_malformed_stream_data_is_a_provider_error() -> None:
    body = b"event: message_start\ndata: {not json\n\n"
    api = FakeAPI(stream_response(body))
    provider, _ = provider_for(api, max_retries=0)
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    assert caught.value.details["kind"] == "bad_response"


async def test_missing_credentials_is_a_provider_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The SDK raises a bare TypeError when it cannot authenticate a request.
    for name in [n for n in os.environ if n.startswith("ANTHROPIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    api = FakeAPI(stream_response(TEXT_BODY))
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(api.handler))
    client = anthropic.AsyncAnthropic(base_url="http://anthropic.test", http_client=http)
    provider = AnthropicProvider(client=client, sleep=SleepRecorder())
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(request_for()))
    assert caught.value.details["kind"] == "invalid_request"
    assert caught.value.details["retryable"] is False
    assert api.requests == []
    await client.close()


async def test_api_key_never_appears_in_errors() -> None:
    # A server that echoes the key back in its error message must not leak it.
    replies: list[Reply] = [
        error_response(401, "authentication_error", f"invalid x-api-key {API_KEY}"),
        error_response(500, "api_error", f"boom {API_KEY}"),
        httpx2.ConnectError(f"refused {API_KEY}"),
        stream_response(sse(message_start(), {**OVERLOADED_EVENT, "note": API_KEY})),
    ]
    for reply in replies:
        api = FakeAPI(reply)
        provider, _ = provider_for(api, max_retries=1)
        with pytest.raises(ProviderError) as caught:
            await collect(provider.stream(request_for()))
        assert API_KEY not in str(caught.value)
        assert API_KEY not in json.dumps(caught.value.details, default=str)
        assert API_KEY not in repr(caught.value)


async def test_aclose_closes_only_an_owned_client() -> None:
    owned = AnthropicProvider(api_key=API_KEY, base_url="http://anthropic.test")
    await owned.aclose()
    await owned.aclose()  # idempotent
    api = FakeAPI(stream_response(TEXT_BODY))
    shared = api.client()
    borrowed = AnthropicProvider(client=shared, sleep=SleepRecorder())
    await borrowed.aclose()
    assert not shared.is_closed()
    await shared.close()


def test_pure_policy_helpers() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=8.0)
    assert policy.delay(0, retry_after=None, random=top_draw) == 0.5
    assert policy.delay(5, retry_after=None, random=top_draw) == 8.0
    assert policy.delay(0, retry_after=2.0, random=top_draw) == 2.0
    assert RetryPolicy(max_backoff=1.0).delay(0, retry_after=2.0, random=top_draw) == 1.0
    failure = classify_failure(ValueError("bad"))
    assert failure.kind == "bad_response" and failure.retryable


def test_estimate_is_the_base_upper_bound() -> None:
    provider = AnthropicProvider(api_key=API_KEY, base_url="http://anthropic.test")
    request = request_for("x" * 400)
    assert provider.estimate_input_tokens(request) >= 400


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [False, True])
async def test_end_to_end_through_the_server(tmp_path: Path, partial: bool) -> None:
    api = FakeAPI(stream_response(TEXT_BODY))
    provider = AnthropicProvider(client=api.client(), sleep=SleepRecorder())
    secret = f"hk_live_{secrets.token_hex(16)}"
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        projects={"proj": [secret]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        default_model=MODEL,
    )
    router = ModelRouter(provider, price_model="claude-sonnet-4-5")
    async with ChuckyServer(config, router=router) as server:
        token = create_token("user-1", "proj", secret, create_budget(10.0, 10.0, "day"))
        async with Chucky(token, server.url) as client:
            result = await client.prompt("hi", model=MODEL, include_partial_messages=partial)
    assert result.result == "Hello!"
    assert result.usage.input_tokens == 472
    assert result.usage.output_tokens == 15
    assert result.usage.cache_creation_input_tokens == 120
    assert result.usage.cache_read_input_tokens == 2048
    usage = {
        "input_tokens": 472,
        "output_tokens": 15,
        "cache_creation_input_tokens": 120,
        "cache_read_input_tokens": 2048,
    }
    expected = microdollars_to_usd(cost_microdollars(usage, price_for("claude-sonnet-4-5")))
    assert result.total_cost_usd == pytest.approx(expected)
    assert api.requests[0]["messages"][-1]["role"] == "user"


def test_tool_choice_is_sent_with_the_full_tool_name() -> None:
    tools = [ToolSpec("mcp__client__get_weather", "Weather", {"type": "object"})]
    forced = request_for(tools=tools, tool_choice={"type": "tool", "name": "get_weather"})
    assert build_create_arguments(forced)["tool_choice"] == {
        "type": "tool",
        "name": "mcp__client__get_weather",
    }
    any_tool = request_for(tools=tools, tool_choice={"type": "any"})
    assert build_create_arguments(any_tool)["tool_choice"] == {"type": "any"}
    # Not offered, or no tools at all: the model chooses (the API would refuse the request).
    unknown = request_for(tools=tools, tool_choice={"type": "tool", "name": "nope"})
    assert "tool_choice" not in build_create_arguments(unknown)
    assert "tool_choice" not in build_create_arguments(request_for(tool_choice={"type": "any"}))
