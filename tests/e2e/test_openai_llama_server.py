"""The ``openai`` provider against a real OpenAI-compatible server: llama-cpp-python's own.

``python -m llama_cpp.server`` serves the SmolLM2-135M GGUF file on ``127.0.0.1`` (once for the
module, see :mod:`support.llama_server`); the official ``openai`` SDK inside
:class:`~chucky.server.providers.openai.OpenAIProvider` talks to it over real HTTP. Structure is
asserted, never wording (a 135M model says odd things).

What this server does differently from OpenAI (the provider copes):

* no ``usage`` chunk in streams, even with ``stream_options.include_usage``: input tokens are
  reported as 0 and output tokens estimated from the streamed text;
* tools are only honoured with a forced, named ``tool_choice`` (``chatml-function-calling``);
  the id and full name are repeated in every chunk of a call;
* an assistant message with ``content: null`` beside its tool calls is rejected.

Skipped when ``llama_cpp.server`` or the model file is missing, except under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest

from chucky.errors import ProviderError
from chucky.server.providers.base import MessageAccumulator, ModelRequest, Provider, ToolSpec

_IN_CI = os.environ.get("CI", "").lower() == "true"

try:
    if importlib.util.find_spec("llama_cpp.server") is None:
        raise ImportError(
            "llama_cpp.server is not installed (pip install 'llama-cpp-python[server]')"
        )
    from chucky.server.providers.llamacpp import default_model_path

    MODEL_PATH = default_model_path()
except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
    if _IN_CI:
        raise
    pytest.skip(f"llama_cpp.server or the SmolLM2 model is missing: {exc}", allow_module_level=True)

from support.llama_server import LlamaServer, llama_server  # noqa: E402

from chucky import AssistantMessage, Chucky, UserMessage, tool  # noqa: E402
from chucky.server.app import ChuckyServer  # noqa: E402
from chucky.server.config import ServerConfig  # noqa: E402
from chucky.server.providers.openai import OpenAIProvider  # noqa: E402
from chucky.server.routing import ModelRouter, RoutingConfig  # noqa: E402
from chucky.tokens import create_budget, create_token  # noqa: E402

SECRET = "hk_live_" + "0a" * 16
API_KEY = "sk-local-placeholder"  # the server checks no key; the SDK wants one
WEATHER = ToolSpec(
    name="mcp__weather__get_weather",
    description="Get the current weather for a city.",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
CLOCK = ToolSpec(
    name="mcp__clock__get_time",
    description="Get the current time in a time zone.",
    input_schema={
        "type": "object",
        "properties": {"zone": {"type": "string"}},
        "required": ["zone"],
    },
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_server(MODEL_PATH, tmp_path_factory.mktemp("llama-server")) as server:
        yield server


@pytest.fixture
async def provider(llama: LlamaServer) -> AsyncIterator[OpenAIProvider]:
    openai_provider = OpenAIProvider(base_url=llama.base_url, api_key=API_KEY, max_retries=0)
    try:
        yield openai_provider
    finally:
        await openai_provider.aclose()


def _request(
    llama: LlamaServer,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    max_tokens: int = 24,
    tools: Sequence[ToolSpec] = (),
    **params: Any,
) -> ModelRequest:
    transcript = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    return ModelRequest(
        model=llama.model,
        system=None,
        messages=transcript,
        tools=tools,
        max_tokens=max_tokens,
        params=params,
    )


async def _collect(
    provider: Provider, request: ModelRequest
) -> tuple[list[dict[str, Any]], MessageAccumulator]:
    events: list[dict[str, Any]] = []
    acc = MessageAccumulator()
    stream = cast(AsyncGenerator[dict[str, Any], None], provider.stream(request))
    async with contextlib.aclosing(stream):
        async for event in stream:
            events.append(event)
            acc.feed(event)
    return events, acc


def _assert_anthropic_shape(events: list[dict[str, Any]]) -> None:
    """message_start, then sequential blocks (start, deltas, stop), message_delta, message_stop."""
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["role"] == "assistant"
    assert events[-2]["type"] == "message_delta"
    assert events[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert events[-1]["type"] == "message_stop"
    open_index: int | None = None
    next_index = 0
    for event in events[1:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None and event["index"] == next_index
            open_index, next_index = next_index, next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        else:
            assert kind == "content_block_stop" and event["index"] == open_index
            open_index = None
    assert open_index is None and next_index >= 1


def _text_deltas(events: list[dict[str, Any]]) -> list[str]:
    return [
        event["delta"]["text"]
        for event in events
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta"
    ]


# -- the provider against the server -------------------------------------------------------------


async def test_text_stream_has_the_anthropic_shape(
    llama: LlamaServer, provider: OpenAIProvider
) -> None:
    events, acc = await _collect(provider, _request(llama, "Say hello."))
    _assert_anthropic_shape(events)
    assert events[0]["message"]["model"] == llama.model
    assert [block["type"] for block in acc.content] == ["text"]
    deltas = _text_deltas(events)
    assert deltas and "".join(deltas) == acc.content[0]["text"]
    assert acc.stop_reason in ("end_turn", "max_tokens")
    # No usage chunk from this server: output tokens are estimated (input tokens are unknown).
    assert acc.usage["output_tokens"] > 0


async def test_max_tokens_is_honoured(llama: LlamaServer, provider: OpenAIProvider) -> None:
    request = _request(llama, "Write a long story about the sea.", max_tokens=3, temperature=0.0)
    events, acc = await _collect(provider, request)
    _assert_anthropic_shape(events)
    assert acc.stop_reason == "max_tokens"
    assert 1 <= len(_text_deltas(events)) <= 3  # at most one chunk per token


async def test_greedy_decoding_is_repeatable(llama: LlamaServer, provider: OpenAIProvider) -> None:
    request = _request(llama, "Name a colour.", max_tokens=8, temperature=0.0, seed=7)
    _, first = await _collect(provider, request)
    _, second = await _collect(provider, request)
    assert first.content[0]["text"] and first.content == second.content  # greedy: repeatable


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "tool", "name": "get_weather"}, {"type": "tool", "name": WEATHER.name}],
    ids=["bare-name", "full-name"],
)
async def test_forced_tool_call(
    llama: LlamaServer, provider: OpenAIProvider, tool_choice: dict[str, str]
) -> None:
    request = _request(
        llama,
        "What is the weather in Paris?",
        max_tokens=48,
        tools=[CLOCK, WEATHER],
        tool_choice=tool_choice,
    )
    events, acc = await _collect(provider, request)
    _assert_anthropic_shape(events)
    assert acc.stop_reason == "tool_use"
    (block,) = acc.content  # one call, however many chunks repeat its id and name
    assert block["type"] == "tool_use"
    assert block["name"] == WEATHER.name
    assert block["id"]
    assert isinstance(block["input"], dict)
    # The server constrains the arguments with a grammar made from the schema.
    jsonschema.validate(block["input"], dict(WEATHER.input_schema))
    fragments = [
        event["delta"]["partial_json"]
        for event in events
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(fragments)) == block["input"]


async def test_tool_round_trip_at_provider_level(
    llama: LlamaServer, provider: OpenAIProvider
) -> None:
    question = "What is the weather in Paris?"
    first = _request(llama, question, max_tokens=48, tools=[WEATHER], tool_choice={"type": "any"})
    _, call = await _collect(provider, first)
    (block,) = call.content
    assert block["type"] == "tool_use"
    transcript: list[dict[str, Any]] = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": call.content},  # tool calls only: content ""
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": block["id"],
                    "content": [{"type": "text", "text": "Sunny, 21 C"}],
                }
            ],
        },
    ]
    events, answer = await _collect(provider, _request(llama, transcript, tools=[WEATHER]))
    _assert_anthropic_shape(events)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [b["type"] for b in answer.content] == ["text"]


# -- through our server and our client -----------------------------------------------------------


def _config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        port=0,
        projects={"p": [SECRET]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/chucky.db",
        max_tokens=32,
    )


def _token() -> str:
    return create_token("u", "p", SECRET, create_budget(1, 1))


async def test_end_to_end_through_server_and_client(llama: LlamaServer, tmp_path: Path) -> None:
    price = {"input": 100.0, "output": 100.0}  # USD per million tokens
    routing = RoutingConfig.from_mapping(
        {
            "providers": {"openai": {"base_url": llama.base_url, "api_key": API_KEY}},
            "models": {
                "smol": {"provider": "openai", "model": llama.model},
                "smol-priced": {"provider": "openai", "model": llama.model, "price": price},
            },
        }
    )
    router = ModelRouter.from_config(routing)
    async with (
        ChuckyServer(_config(tmp_path), router=router) as server,
        Chucky(_token(), server.url) as client,
    ):
        deltas: list[str] = []
        final = None
        async for event in client.stream("Say hello.", model="smol", include_partial_messages=True):
            if event.type == "message":
                deltas.append(event.data)
            elif event.type == "result":
                final = event.data
            assert event.type != "error", event.data
        assert final is not None and not final.is_error
        assert deltas and "".join(deltas) == final.result
        assert final.usage.output_tokens > 0
        assert final.total_cost_usd == 0

        priced = await client.prompt("Say hello.", model="smol-priced")
        assert not priced.is_error
        usage = priced.usage
        billed = (usage.input_tokens + usage.output_tokens) * price["output"] / 1_000_000
        assert usage.output_tokens > 0
        assert priced.total_cost_usd == pytest.approx(billed)


async def test_tool_choice_session_option_end_to_end(llama: LlamaServer, tmp_path: Path) -> None:
    cities: list[str] = []

    @tool("get_weather", "Get the current weather for a city.")
    async def get_weather(city: str) -> str:
        cities.append(city)
        return f"Sunny, 21 C in {city}"

    routing = RoutingConfig.from_mapping(
        {
            "providers": {"openai": {"base_url": llama.base_url, "api_key": API_KEY}},
            "models": {"smol": {"provider": "openai", "model": llama.model}},
        }
    )
    async with (
        ChuckyServer(_config(tmp_path), router=ModelRouter.from_config(routing)) as server,
        Chucky(_token(), server.url, tools=[get_weather]) as client,
    ):
        options: dict[str, Any] = {"model": "smol", "tool_choice": "get_weather"}
        result = await client.prompt("What is the weather in Paris?", **options)
    assert not result.is_error
    assert len(cities) == 1
    assistants = [m for m in result.messages if isinstance(m, AssistantMessage)]
    (call,) = assistants[0].tool_uses
    assert call.name.endswith("__get_weather")
    assert call.input == {"city": cities[0]}
    assert [m for m in result.messages if isinstance(m, UserMessage)]  # the echoed tool result
    assert assistants[-1].text == result.result  # forced on the first call only
    assert result.usage.output_tokens > 0
    assert result.total_cost_usd == 0
