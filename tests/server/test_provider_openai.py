"""Tests of the OpenAI-compatible provider: pure translation both ways, then through the SDK.

The SDK tests hand the official client an ``httpx2.MockTransport`` serving hand-written SSE
chat-completion chunk streams; nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx2
import openai
import pytest

from chucky.errors import ProviderError
from chucky.server.providers.base import MessageAccumulator, ModelRequest, ToolSpec
from chucky.server.providers.openai import PLACEHOLDER_API_KEY, OpenAIProvider, translate_error
from chucky.server.providers.openai_translate import (
    ChunkTranslator,
    ToolNameMap,
    chat_messages,
    chat_params,
    chat_tool_choice,
    chat_tools,
    estimate_prompt_tokens,
    map_finish_reason,
)
from chucky.server.providers.retry import DEFAULT_RETRY

LONG_NAME = "mcp__a_server_with_a_rather_long_name__a_tool_with_an_even_longer_name_x"


def request(messages: list[dict[str, Any]], **kwargs: Any) -> ModelRequest:
    return ModelRequest(
        model="local-model", system=kwargs.pop("system", None), messages=messages, **kwargs
    )


# -- request translation -------------------------------------------------------------------------


def test_system_and_string_user_message() -> None:
    msgs = chat_messages(
        request([{"role": "user", "content": "hi"}], system="be nice"), ToolNameMap()
    )
    assert msgs == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]


def test_user_blocks_text_image_document() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}},
    ]
    (msg,) = chat_messages(request([{"role": "user", "content": content}]), ToolNameMap())
    assert msg["role"] == "user"
    parts = msg["content"]
    assert parts[0] == {"type": "text", "text": "look"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}
    assert parts[2]["type"] == "text" and "document omitted" in parts[2]["text"]


def test_text_only_blocks_become_a_string() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    (msg,) = chat_messages(request([{"role": "user", "content": content}]), ToolNameMap())
    assert msg == {"role": "user", "content": "a\nb"}


def test_tool_round_trip_messages() -> None:
    names = ToolNameMap()
    transcript: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {"tz": "UTC"}},
                {"type": "tool_use", "id": "toolu_2", "name": LONG_NAME, "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "bad"}],
                    "is_error": True,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    msgs = chat_messages(request(transcript), names)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    assistant = msgs[1]
    assert assistant["content"] == "calling"
    first, second = assistant["tool_calls"]
    assert first == {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
    }
    assert second["function"]["name"] == names.wire(LONG_NAME) != LONG_NAME
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "noon"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: bad"}
    assert msgs[4] == {"role": "user", "content": "thanks"}


def test_assistant_with_only_tool_calls_has_empty_string_content() -> None:
    # Not null: llama-cpp-python's server answers 500 to a null content beside tool calls.
    block = {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}
    (msg,) = chat_messages(request([{"role": "assistant", "content": [block]}]), ToolNameMap())
    assert msg["content"] == "" and msg["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tools_and_name_map() -> None:
    names = ToolNameMap()
    tools = [
        ToolSpec("mcp__srv__echo", "Echo", {"type": "object", "properties": {"x": {}}}),
        ToolSpec(LONG_NAME, "Long", {"type": "object"}),
        ToolSpec("has.dot and space", "Odd", {}),
    ]
    out = chat_tools(tools, names)
    assert out[0] == {
        "type": "function",
        "function": {
            "name": "mcp__srv__echo",
            "description": "Echo",
            "parameters": {"type": "object", "properties": {"x": {}}},
        },
    }
    for spec, tool in zip(tools, out, strict=True):
        wire = tool["function"]["name"]
        assert len(wire) <= 64 and all(c.isalnum() or c in "_-" for c in wire)
        assert names.original(wire) == spec.name
    assert names.wire(LONG_NAME) == out[1]["function"]["name"]  # stable
    assert names.original("unknown") == "unknown"


WEATHER = ToolSpec("mcp__weather__get_weather", "Weather", {"type": "object"})
CLOCK = ToolSpec("mcp__clock__get_time", "Time", {"type": "object"})


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


@pytest.mark.parametrize(
    ("choice", "tools", "expected"),
    [
        (None, [WEATHER], None),
        ({"type": "any"}, [], None),  # no tools: no choice
        ("auto", [WEATHER], "auto"),
        ({"type": "auto"}, [WEATHER], "auto"),
        ({"type": "none"}, [WEATHER], "none"),
        ({"type": "any"}, [WEATHER, CLOCK], "required"),
        ("required", [WEATHER, CLOCK], "required"),
        ({"type": "any"}, [WEATHER], named(WEATHER.name)),  # the one tool, named
        ("any", [WEATHER], named(WEATHER.name)),
        ({"type": "tool", "name": WEATHER.name}, [WEATHER, CLOCK], named(WEATHER.name)),
        ({"type": "tool", "name": "get_time"}, [WEATHER, CLOCK], named(CLOCK.name)),
        (named("get_time"), [WEATHER, CLOCK], named(CLOCK.name)),
        ({"type": "tool", "name": "absent"}, [WEATHER], None),
        ({"type": "tool"}, [WEATHER], None),
        ({"type": "bogus"}, [WEATHER], None),
        (42, [WEATHER], None),
    ],
)
def test_tool_choice(choice: Any, tools: list[ToolSpec], expected: Any) -> None:
    assert chat_tool_choice(choice, tools, ToolNameMap()) == expected


def test_tool_choice_uses_the_wire_name() -> None:
    names = ToolNameMap()
    long_tool = ToolSpec(LONG_NAME, "Long", {"type": "object"})
    (tool,) = chat_tools([long_tool], names)
    choice = chat_tool_choice({"type": "tool", "name": LONG_NAME}, [long_tool], names)
    assert choice == named(tool["function"]["name"]) and names.wire(LONG_NAME) != LONG_NAME


def test_params_known_only() -> None:
    req = request(
        [{"role": "user", "content": "x"}],
        max_tokens=77,
        params={"temperature": 0.2, "top_p": 0.9, "stop": ["END"], "seed": 7, "top_k": 3},
    )
    assert chat_params(req) == {
        "max_tokens": 77,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
    }
    alias = request([{"role": "user", "content": "x"}], params={"stop_sequences": ["a"]})
    assert chat_params(alias)["stop"] == ["a"]


def test_penalties_are_chat_params() -> None:
    req = request(
        [{"role": "user", "content": "x"}],
        max_tokens=5,
        params={"frequency_penalty": 0.5, "presence_penalty": -1.0},
    )
    assert chat_params(req) == {
        "max_tokens": 5,
        "frequency_penalty": 0.5,
        "presence_penalty": -1.0,
    }


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),
        (None, True, "tool_use"),
        (None, False, "end_turn"),
        ("content_filter", False, "refusal"),
        ("length", True, "max_tokens"),
    ],
)
def test_map_finish_reason(reason: str | None, calls: bool, expected: str) -> None:
    assert map_finish_reason(reason, has_tool_calls=calls) == expected


# -- response translation ------------------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    empty: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "served-model",
        "choices": [] if empty else [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def call(
    index: int, *, id: str | None = None, name: str | None = None, args: Any = None
) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    out: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        out["id"] = id
        out["type"] = "function"
    return out


def fold(
    chunks: Iterable[dict[str, Any]], names: ToolNameMap | None = None
) -> tuple[MessageAccumulator, list[dict[str, Any]]]:
    translator = ChunkTranslator(model="local-model", names=names)
    events: list[dict[str, Any]] = []
    for item in chunks:
        events.extend(translator.feed(item))
    events.extend(translator.finish())
    acc = MessageAccumulator()
    for event in events:
        acc.feed(event)
    return acc, events


def test_text_stream_with_usage_chunk() -> None:
    acc, events = fold(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(empty=True, usage={"prompt_tokens": 12, "completion_tokens": 3}),
        ]
    )
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["id"].startswith("msg_")
    assert events[0]["message"]["model"] == "served-model"
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    assert acc.content == [{"type": "text", "text": "Hello"}]
    assert acc.stop_reason == "end_turn"
    assert acc.usage["input_tokens"] == 12 and acc.usage["output_tokens"] == 3


def test_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    acc, _ = fold([chunk({"content": "x"}, "stop", usage=usage)])
    assert acc.usage["input_tokens"] == 6 and acc.usage["cache_read_input_tokens"] == 4


def test_tool_call_arguments_in_fragments() -> None:
    names = ToolNameMap()
    wire = names.wire(LONG_NAME)
    fragments = ['{"', "ci", 'ty": ', '"Par', 'is"}']
    chunks = [chunk({"tool_calls": [call(0, id="call_1", name=wire, args="")]})]
    chunks += [chunk({"tool_calls": [call(0, args=f)]}) for f in fragments]
    chunks.append(chunk({}, "tool_calls"))
    acc, events = fold(chunks, names)
    assert acc.tool_uses == [
        {"type": "tool_use", "id": "call_1", "name": LONG_NAME, "input": {"city": "Paris"}}
    ]
    deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == fragments
    assert acc.stop_reason == "tool_use"


def test_quirk_tool_calls_with_finish_reason_stop() -> None:
    acc, _ = fold([chunk({"tool_calls": [call(0, id="c", name="t", args="{}")]}, "stop")])
    assert acc.stop_reason == "tool_use" and acc.tool_uses[0]["name"] == "t"


def test_quirk_arguments_as_object() -> None:
    acc, _ = fold([chunk({"tool_calls": [call(0, id="c", name="t", args={"a": [1, 2]})]})])
    assert acc.tool_uses[0]["input"] == {"a": [1, 2]}


def test_quirk_several_calls_on_one_index() -> None:
    acc, _ = fold(
        [
            chunk({"tool_calls": [call(0, id="c1", name="one", args='{"n": 1}')]}),
            chunk({"tool_calls": [call(0, id="c2", name="two", args='{"n":')]}),
            chunk({"tool_calls": [call(0, args=" 2}")]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert [(t["id"], t["name"], t["input"]) for t in acc.tool_uses] == [
        ("c1", "one", {"n": 1}),
        ("c2", "two", {"n": 2}),
    ]


def test_quirk_same_index_new_name_without_ids() -> None:
    acc, _ = fold(
        [
            chunk({"tool_calls": [call(0, name="one", args="{}")]}),
            chunk({"tool_calls": [call(0, name="two", args="{}")]}),
        ]
    )
    assert [t["name"] for t in acc.tool_uses] == ["one", "two"]
    assert acc.tool_uses[0]["id"] != acc.tool_uses[1]["id"]


def test_quirk_id_and_name_repeated_in_every_chunk() -> None:
    # llama-cpp-python's server (chatml-function-calling) sends the whole call head each time.
    fragments = ["{", ' "', "city", '":', ' "', "Paris", '"', " }", ""]
    chunks = [
        chunk({"tool_calls": [call(0, id="call__0_w", name="get_weather", args=f)]})
        for f in fragments
    ]
    acc, events = fold([*chunks, chunk({}, "tool_calls")])
    assert acc.tool_uses == [
        {"type": "tool_use", "id": "call__0_w", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert [e["type"] for e in events].count("content_block_start") == 1
    assert acc.stop_reason == "tool_use"


def test_quirk_call_without_id_gets_toolu_id() -> None:
    acc, _ = fold([chunk({"tool_calls": [call(0, name="t", args='{"x": 1}')]}, "tool_calls")])
    (use,) = acc.tool_uses
    assert use["id"].startswith("toolu_") and use["input"] == {"x": 1}


def test_parallel_calls_on_distinct_indexes() -> None:
    acc, events = fold(
        [
            chunk(
                {
                    "tool_calls": [
                        call(0, id="a", name="x", args="{}"),
                        call(1, id="b", name="y", args="{}"),
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    assert [t["id"] for t in acc.tool_uses] == ["a", "b"]
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == [0, 1]


def test_quirk_missing_usage_is_estimated() -> None:
    acc, _ = fold([chunk({"content": "abcdefghij"}), chunk({}, "stop")])
    assert acc.usage["input_tokens"] == 0  # no estimate given
    assert acc.usage["output_tokens"] == 3  # ceil(10 / 4)
    translator = ChunkTranslator(model="m", input_estimate=42)
    events = [*translator.feed(chunk({"content": "hi"})), *translator.feed(chunk({}, "stop"))]
    events += translator.finish()
    assert events[-2]["usage"] == {"input_tokens": 42, "output_tokens": 1}


def test_the_input_estimate_grows_with_the_prompt() -> None:
    small = ModelRequest(model="m", system=None, messages=[{"role": "user", "content": "hi"}])
    large = dataclasses.replace(
        small,
        system="s" * 400,
        tools=[ToolSpec("t", "d" * 400, {"type": "object"})],
    )
    assert 0 < estimate_prompt_tokens(small) < 20
    assert estimate_prompt_tokens(large) >= estimate_prompt_tokens(small) + 200


def test_quirk_usage_on_the_finish_chunk() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    acc, _ = fold([chunk({"content": "hi"}, "stop", usage=usage)])
    assert acc.usage["input_tokens"] == 5 and acc.usage["output_tokens"] == 2


def test_quirk_text_after_tool_calls() -> None:
    acc, events = fold(
        [
            chunk({"content": "before"}),
            chunk({"tool_calls": [call(0, id="c", name="t", args="{}")]}),
            chunk({"content": "after"}),
            chunk({}, "stop"),
        ]
    )
    assert [b["type"] for b in acc.content] == ["text", "tool_use", "text"]
    assert acc.content[2]["text"] == "after"
    assert acc.stop_reason == "tool_use"
    # Blocks are sequential: every start after the first follows the previous stop.
    kinds = [e["type"] for e in events if e["type"].startswith("content_block_s")]
    assert kinds == ["content_block_start", "content_block_stop"] * 3


def test_quirk_reasoning_content_becomes_thinking() -> None:
    acc, _ = fold(
        [
            chunk({"reasoning_content": "let me "}),
            chunk({"reasoning_content": "think"}),
            chunk({"content": "42"}),
            chunk({}, "stop"),
        ]
    )
    assert acc.content[0]["type"] == "thinking" and acc.content[0]["thinking"] == "let me think"
    assert acc.content[1] == {"type": "text", "text": "42"}


def test_reasoning_field_and_refusal() -> None:
    acc, _ = fold([chunk({"reasoning": "hmm"}), chunk({"refusal": "no"}), chunk({}, "stop")])
    assert acc.content[0]["thinking"] == "hmm"
    assert acc.text == "no" and acc.stop_reason == "refusal"


def test_length_and_empty_stream() -> None:
    acc, _ = fold([chunk({"content": "cut"}, "length")])
    assert acc.stop_reason == "max_tokens"
    acc, events = fold([])
    assert events[0]["type"] == "message_start"
    assert acc.content == [{"type": "text", "text": ""}] and acc.stop_reason == "end_turn"


def test_call_whose_name_arrives_late() -> None:
    acc, _ = fold(
        [
            chunk({"tool_calls": [call(0, id="c", args='{"a"')]}),
            chunk({"tool_calls": [call(0, name="late", args=": 1}")]}),
        ]
    )
    assert acc.tool_uses == [{"type": "tool_use", "id": "c", "name": "late", "input": {"a": 1}}]


# -- errors --------------------------------------------------------------------------------------


def test_backoff_delay() -> None:
    delays = [DEFAULT_RETRY.delay(i, random=lambda: 1.0) for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_translate_error_redacts_key() -> None:
    exc = openai.OpenAIError("bad key sk-secret-123 here")
    error = translate_error(exc, api_key="sk-secret-123")
    assert "sk-secret-123" not in error.message
    assert error.details["retryable"] is False


# -- through the SDK -----------------------------------------------------------------------------


Handler = Callable[[httpx2.Request], httpx2.Response]


def sse(chunks: Iterable[dict[str, Any]]) -> httpx2.Response:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def make_provider(handler: Handler, **kwargs: Any) -> tuple[OpenAIProvider, openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        api_key="sk-test-key",
        base_url="http://openai.test/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    return OpenAIProvider(client=client, backoff=0.0, **kwargs), client


async def run(provider: OpenAIProvider, req: ModelRequest) -> MessageAccumulator:
    acc = MessageAccumulator()
    async for event in provider.stream(req):
        acc.feed(event)
    return acc


async def test_sdk_text_stream_and_request_body() -> None:
    seen: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(req.content))
        return sse(
            [
                chunk({"role": "assistant", "content": "Hi"}),
                chunk({"content": " there"}),
                chunk({}, "stop"),
                chunk(
                    empty=True,
                    usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
                ),
            ]
        )

    provider, client = make_provider(handler)
    req = request(
        [{"role": "user", "content": "hello"}],
        system="sys",
        tools=[ToolSpec(LONG_NAME, "d", {"type": "object"})],
        max_tokens=50,
        params={"temperature": 0.1, "unknown": 1},
    )
    try:
        acc = await run(provider, req)
    finally:
        await client.close()
    assert acc.text == "Hi there" and acc.stop_reason == "end_turn"
    assert acc.usage["input_tokens"] == 9 and acc.usage["output_tokens"] == 2
    (body,) = seen
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50 and body["temperature"] == 0.1 and "unknown" not in body
    assert body["messages"][0] == {"role": "system", "content": "sys"}
    assert len(body["tools"][0]["function"]["name"]) <= 64


async def test_sdk_sends_the_tool_choice() -> None:
    seen: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(req.content))
        return sse([chunk({"content": "x"}, "stop")])

    provider, client = make_provider(handler)
    tools = [ToolSpec(LONG_NAME, "d", {"type": "object"}), CLOCK]
    forced = request(
        [{"role": "user", "content": "go"}],
        tools=tools,
        params={"tool_choice": {"type": "tool", "name": LONG_NAME}},
    )
    try:
        await run(provider, forced)
        await run(provider, request([{"role": "user", "content": "go"}], tools=tools))
    finally:
        await client.close()
    first, second = seen
    wire = first["tools"][0]["function"]["name"]
    assert wire != LONG_NAME and first["tool_choice"] == named(wire)
    assert "tool_choice" not in second  # nothing asked, nothing sent (the server's default)


async def test_sdk_tool_call_in_fragments() -> None:
    def handler(req: httpx2.Request) -> httpx2.Response:
        return sse(
            [
                chunk({"tool_calls": [call(0, id="call_9", name="get_time", args="")]}),
                chunk({"tool_calls": [call(0, args='{"tz"')]}),
                chunk({"tool_calls": [call(0, args=': "UTC"}')]}),
                chunk({}, "tool_calls"),
            ]
        )

    provider, client = make_provider(handler)
    try:
        acc = await run(provider, request([{"role": "user", "content": "time?"}]))
    finally:
        await client.close()
    assert acc.tool_uses == [
        {"type": "tool_use", "id": "call_9", "name": "get_time", "input": {"tz": "UTC"}}
    ]
    assert acc.stop_reason == "tool_use"


async def test_sdk_500_then_success_is_retried() -> None:
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx2.Response(500, json={"error": {"message": "boom"}})
        return sse([chunk({"content": "ok"}, "stop")])

    provider, client = make_provider(handler)
    try:
        acc = await run(provider, request([{"role": "user", "content": "x"}]))
    finally:
        await client.close()
    assert calls == 2 and acc.text == "ok"


async def test_sdk_500_exhausts_retries() -> None:
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return httpx2.Response(503, json={"error": {"message": "busy"}})

    provider, client = make_provider(handler, max_retries=2)
    try:
        with pytest.raises(ProviderError) as info:
            await run(provider, request([{"role": "user", "content": "x"}]))
    finally:
        await client.close()
    assert calls == 3
    assert info.value.details["retryable"] is True and info.value.details["status"] == 503
    assert info.value.details["kind"] == "overloaded"
    assert info.value.reason == "provider_unavailable"
    assert isinstance(info.value.__cause__, openai.APIStatusError)


async def test_sdk_400_not_retried() -> None:
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return httpx2.Response(400, json={"error": {"message": "bad request"}})

    provider, client = make_provider(handler)
    try:
        with pytest.raises(ProviderError) as info:
            await run(provider, request([{"role": "user", "content": "x"}]))
    finally:
        await client.close()
    assert calls == 1
    assert info.value.details["retryable"] is False and info.value.details["status"] == 400
    assert info.value.reason == "provider_rejected"
    assert "sk-test-key" not in str(info.value)


async def test_sdk_connection_error() -> None:
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        raise httpx2.ConnectError("connection refused", request=req)

    provider, client = make_provider(handler, max_retries=1)
    try:
        with pytest.raises(ProviderError) as info:
            await run(provider, request([{"role": "user", "content": "x"}]))
    finally:
        await client.close()
    assert calls == 2
    assert info.value.details["kind"] == "connection_error"
    assert info.value.details["retryable"] is True


async def test_sdk_error_after_first_event_is_not_retried() -> None:
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        body = f"data: {json.dumps(chunk({'content': 'partial'}))}\n\ndata: {{not json\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    provider, client = make_provider(handler)
    events: list[dict[str, Any]] = []
    try:
        with pytest.raises(ProviderError):
            async for event in provider.stream(request([{"role": "user", "content": "x"}])):
                events.append(event)
    finally:
        await client.close()
    assert calls == 1 and events[0]["type"] == "message_start"


async def test_owned_client_placeholder_key_and_aclose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = OpenAIProvider(base_url="http://127.0.0.1:1/v1")
    assert provider._client.api_key == PLACEHOLDER_API_KEY
    await provider.aclose()
    await provider.aclose()  # idempotent
    assert provider._client.is_closed()


def test_interleaved_late_fragment_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    acc, _ = fold(
        [
            chunk({"tool_calls": [call(0, id="a", name="x", args='{"k": 1}')]}),
            chunk({"tool_calls": [call(1, id="b", name="y", args="{}")]}),
            chunk({"tool_calls": [call(0, args="garbage")]}),
        ]
    )
    assert [t["input"] for t in acc.tool_uses] == [{"k": 1}, {}]
    assert "closed tool call" in caplog.text


async def test_sdk_keeps_server_extras() -> None:
    def handler(req: httpx2.Request) -> httpx2.Response:
        return sse(
            [
                chunk({"reasoning_content": "mull"}),
                chunk({"tool_calls": [call(0, name="t", args={"q": "v"})]}),
                chunk({}, "stop"),
            ]
        )

    provider, client = make_provider(handler)
    try:
        acc = await run(provider, request([{"role": "user", "content": "x"}]))
    finally:
        await client.close()
    assert acc.content[0] == {"type": "thinking", "thinking": "mull", "signature": ""}
    assert acc.tool_uses[0]["input"] == {"q": "v"} and acc.tool_uses[0]["id"].startswith("toolu_")
    assert acc.stop_reason == "tool_use"


async def test_sdk_early_break_closes_the_response() -> None:
    closed: list[bool] = []

    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for i in range(1000):
                yield f"data: {json.dumps(chunk({'content': str(i)}))}\n\n".encode()

        async def aclose(self) -> None:
            closed.append(True)

    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    provider, client = make_provider(handler)
    try:
        stream = provider.stream(request([{"role": "user", "content": "x"}]))
        async for event in stream:
            if event["type"] == "content_block_delta":
                break
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()
    assert closed
