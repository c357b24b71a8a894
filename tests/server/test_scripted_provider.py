"""The scripted provider: every command, the event shape, tokens, truncation and failures."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chucky.errors import ProviderError
from chucky.server.providers import (
    MessageAccumulator,
    ModelRequest,
    Provider,
    ScriptedProvider,
    ToolSpec,
)
from chucky.server.providers.scripted import (
    ATTACHMENT_TOKENS,
    COMMANDS,
    count_input_tokens,
    count_tokens,
)

TOOLS = (
    ToolSpec("mcp__clock__get_time", "Current time", {"type": "object", "properties": {}}),
    ToolSpec("mcp__math__add", "Add", {"type": "object", "properties": {"a": {}, "b": {}}}),
)


def request(
    content: str | list[dict[str, Any]],
    *,
    history: Sequence[Mapping[str, Any]] = (),
    tools: Sequence[ToolSpec] = TOOLS,
    max_tokens: int = 4096,
    system: str | None = None,
) -> ModelRequest:
    messages = [*history, {"role": "user", "content": content}]
    return ModelRequest(
        model="scripted", system=system, messages=messages, tools=tools, max_tokens=max_tokens
    )


async def collect(req: ModelRequest) -> tuple[list[dict[str, Any]], MessageAccumulator]:
    events: list[dict[str, Any]] = []
    acc = MessageAccumulator()
    async for event in ScriptedProvider().stream(req):
        events.append(event)
        acc.feed(event)
    return events, acc


async def reply(content: str | list[dict[str, Any]], **kwargs: Any) -> MessageAccumulator:
    return (await collect(request(content, **kwargs)))[1]


def text_deltas(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["delta"]["text"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
    ]


def assert_well_formed(events: list[dict[str, Any]]) -> None:
    """The Anthropic raw-stream grammar: start, blocks (start, deltas, stop), delta, stop."""
    assert events[0]["type"] == "message_start"
    assert events[-2]["type"] == "message_delta"
    assert events[-1] == {"type": "message_stop"}
    open_index: int | None = None
    next_index = 0
    for event in events[1:-2]:
        if event["type"] == "content_block_start":
            assert open_index is None
            assert event["index"] == next_index
            open_index = next_index
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        else:
            assert event == {"type": "content_block_stop", "index": open_index}
            open_index, next_index = None, next_index + 1
    assert open_index is None


# --- the provider -------------------------------------------------------------------------


def test_is_a_provider_named_scripted() -> None:
    assert isinstance(ScriptedProvider(), Provider)
    assert ScriptedProvider.name == "scripted"
    assert sorted(COMMANDS) == ["call", "echo", "fail", "json", "recall", "sleep", "stream"]


async def test_event_shape_of_a_text_reply() -> None:
    events, acc = await collect(request("echo hello there  world"))
    assert_well_formed(events)
    start = events[0]["message"]
    assert start["id"].startswith("msg_")
    assert start["model"] == "scripted"
    assert start["role"] == "assistant"
    assert start["content"] == []
    assert start["usage"]["input_tokens"] >= 1
    assert start["usage"]["output_tokens"] == 1
    assert events[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert text_deltas(events) == ["hello ", "there  ", "world"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert acc.content == [{"type": "text", "text": "hello there  world"}]
    assert acc.stop_reason == "end_turn"
    assert acc.model == "scripted"


async def test_message_ids_are_unique() -> None:
    ids = set()
    for _ in range(5):
        events, _acc = await collect(request("echo x"))
        ids.add(events[0]["message"]["id"])
    assert len(ids) == 5


# --- commands -----------------------------------------------------------------------------


async def test_echo_commands_join_with_one_space() -> None:
    acc = await reply("echo a;  echo b ;; echo c d")
    assert acc.text == "a b c d"
    assert len(acc.content) == 1


async def test_empty_echo_contributes_nothing() -> None:
    assert (await reply("echo; echo b")).text == "b"
    acc = await reply("echo")
    assert acc.content == [{"type": "text", "text": ""}]
    assert acc.usage["output_tokens"] == 0


async def test_default_reply_echoes_the_whole_message() -> None:
    assert (await reply("  Hello; how are you?  ")).text == "echo: Hello; how are you?"
    assert (await reply("Echo hi")).text == "echo: Echo hi"  # command words are lowercase
    assert (await reply("echo: hi")).text == "echo: echo: hi"
    assert (await reply("")).text == "echo: "


async def test_unknown_command_inside_a_script() -> None:
    assert (await reply("echo a; dance now")).text == "a echo: dance now"


async def test_script_from_text_blocks_ignores_images() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "echo a"},
        image,
        {"type": "text", "text": "; echo b"},
    ]
    assert (await reply(content)).text == "a b"


async def test_json_is_verbatim() -> None:
    assert (await reply('json {"a": [1, 2],  "b": "x"} ')).text == '{"a": [1, 2],  "b": "x"}'
    assert (await reply("json {not json")).text == "{not json"


async def test_call_bare_name_resolves_to_the_full_name() -> None:
    events, acc = await collect(request('call get_time {"tz": "UTC"}'))
    assert_well_formed(events)
    assert acc.stop_reason == "tool_use"
    assert acc.text == ""  # no text block at all
    [use] = acc.content
    assert use["type"] == "tool_use"
    assert use["name"] == "mcp__clock__get_time"
    assert use["input"] == {"tz": "UTC"}
    assert use["id"].startswith("toolu_")
    assert len(use["id"]) > len("toolu_")
    start = events[1]["content_block"]
    assert start == {"type": "tool_use", "id": use["id"], "name": use["name"], "input": {}}


async def test_call_full_name_and_unknown_names_are_used_as_written() -> None:
    acc = await reply("call mcp__other__thing; call nothing_like_it; call x__add")
    assert [u["name"] for u in acc.tool_uses] == ["mcp__other__thing", "nothing_like_it", "x__add"]
    assert all(u["input"] == {} for u in acc.tool_uses)


async def test_call_ambiguous_bare_name_is_used_as_written() -> None:
    tools = (*TOOLS, ToolSpec("mcp__other__add", "Add too", {}))
    acc = await reply("call add; call get_time", tools=tools)
    assert [u["name"] for u in acc.tool_uses] == ["add", "mcp__clock__get_time"]


async def test_call_exact_offered_name_without_underscores() -> None:
    acc = await reply("call plain", tools=(ToolSpec("plain", "", {}),))
    assert acc.tool_uses[0]["name"] == "plain"


async def test_several_calls_are_one_response_text_first() -> None:
    script = 'echo let me check; call get_time; call add {"a": 1, "b": 2}; echo ok'
    events, acc = await collect(request(script))
    assert_well_formed(events)
    assert [b["type"] for b in acc.content] == ["text", "tool_use", "tool_use"]
    assert acc.text == "let me check ok"
    assert [u["name"] for u in acc.tool_uses] == ["mcp__clock__get_time", "mcp__math__add"]
    assert acc.tool_uses[1]["input"] == {"a": 1, "b": 2}
    assert acc.tool_uses[0]["id"] != acc.tool_uses[1]["id"]
    assert acc.stop_reason == "tool_use"
    assert [e["type"] for e in events].count("message_start") == 1


async def test_call_input_streams_as_json_fragments() -> None:
    payload = {"query": "a fairly long argument value", "n": [1, 2, 3], "nested": {"k": "é"}}
    events, acc = await collect(request(f"call search {json.dumps(payload)}"))
    fragments = [
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    ]
    assert len(fragments) > 1
    assert all(1 <= len(f) <= 16 for f in fragments)
    assert json.loads("".join(fragments)) == payload
    assert acc.tool_uses[0]["input"] == payload


async def test_call_with_invalid_json_replies_text() -> None:
    acc = await reply("call get_time {oops")
    assert acc.text.startswith("invalid json for call: get_time: ")
    assert acc.tool_uses == []
    assert acc.stop_reason == "end_turn"
    acc = await reply("call get_time [1, 2]")
    assert acc.text == "invalid json for call: get_time: input must be a JSON object"
    acc = await reply("call")
    assert acc.text == "invalid call: missing tool name"


async def test_invalid_call_does_not_drop_valid_ones() -> None:
    acc = await reply("call get_time; call add {bad")
    assert [u["name"] for u in acc.tool_uses] == ["mcp__clock__get_time"]
    assert acc.text.startswith("invalid json for call: add: ")
    assert acc.stop_reason == "tool_use"


async def test_json_with_escaped_semicolon() -> None:
    acc = await reply('call add {"note": "a\\u003bb"}; echo done')
    assert acc.tool_uses[0]["input"] == {"note": "a;b"}
    assert acc.text == "done"


async def test_recall_across_a_three_message_transcript() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "my name is Ada"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "echo: my name is Ada"}]},
    ]
    acc = await reply("recall", history=history)
    assert acc.text == "my name is Ada"
    assert (await reply("echo you said:; recall", history=history)).text == (
        "you said: my name is Ada"
    )


async def test_recall_of_the_only_message_is_the_script() -> None:
    assert (await reply("recall")).text == "recall"


async def test_stream_n_deltas() -> None:
    events, acc = await collect(request("stream 250"))
    deltas = text_deltas(events)
    assert len(deltas) == 250
    assert deltas[:3] == ["00 ", "01 ", "02 "]
    assert deltas[100] == "00 "
    assert all(len(d) == 3 for d in deltas)
    assert "".join(deltas) == acc.text
    assert acc.usage["output_tokens"] == math.ceil(250 * 3 / 4)


async def test_stream_5000_fits_the_default_max_tokens() -> None:
    events, acc = await collect(request("stream 5000"))
    assert len(text_deltas(events)) == 5000
    assert acc.stop_reason == "end_turn"
    assert acc.usage["output_tokens"] == 3750


async def test_stream_edge_cases() -> None:
    events, acc = await collect(request("stream 0"))
    assert text_deltas(events) == []
    assert acc.content == [{"type": "text", "text": ""}]
    assert (await reply("stream -3")).text == ""
    assert (await reply("stream many")).text == "invalid stream: many"
    assert (await reply("echo go; stream 2")).text == "go 00 01 "


async def test_sleep_delays_the_reply() -> None:
    started = time.monotonic()
    acc = await reply("sleep 0.05; echo awake")
    assert time.monotonic() - started >= 0.04
    assert acc.text == "awake"


async def test_sleep_edge_cases() -> None:
    assert (await reply("sleep -1; echo x")).text == "x"
    assert (await reply("sleep soon")).text == "invalid sleep: soon"
    assert (await reply("sleep nan")).text == "invalid sleep: nan"
    assert (await reply("sleep inf")).text == "invalid sleep: inf"


async def test_sleep_is_cancellable() -> None:
    first_event = asyncio.Event()

    async def consume() -> None:
        async for _event in ScriptedProvider().stream(request("sleep 30; echo late")):
            first_event.set()

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1
    assert not first_event.is_set()


async def test_sleep_honours_a_timeout() -> None:
    async def consume() -> None:
        async for _event in ScriptedProvider().stream(request("sleep 30")):
            pass

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await consume()


@pytest.mark.parametrize(
    ("code", "kind", "retryable", "status"),
    [
        ("overloaded", "overloaded", True, 529),
        ("rate_limited", "rate_limited", True, 429),
        ("server_error", "server_error", True, 500),
        ("bad_request", "bad_request", False, 400),
        ("teapot", "server_error", True, 500),
        ("", "server_error", True, 500),
    ],
)
async def test_fail_raises_provider_error_before_any_event(
    code: str, kind: str, retryable: bool, status: int
) -> None:
    events: list[dict[str, Any]] = []

    async def drain() -> None:
        async for event in ScriptedProvider().stream(request(f"echo never; fail {code}")):
            events.append(event)

    with pytest.raises(ProviderError) as info:
        await drain()
    assert events == []
    error = info.value
    assert error.message == f"scripted provider failure: {kind}"
    assert error.code == "PROVIDER_ERROR"
    assert error.details["kind"] == kind
    assert error.details["retryable"] is retryable
    assert error.details["status"] == status
    assert error.reason == ("provider_unavailable" if retryable else "provider_rejected")


async def test_sleeps_and_failures_run_in_script_order() -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError):
        await reply("fail overloaded; sleep 30")
    assert time.monotonic() - started < 1
    started = time.monotonic()
    with pytest.raises(ProviderError):
        await reply("sleep 0.03; fail overloaded")
    assert time.monotonic() - started >= 0.02


# --- tool results -------------------------------------------------------------------------


def tool_round(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "call get_time; call add {}; call mcp__x__y__z"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "mcp__clock__get_time", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "mcp__math__add", "input": {}},
                {"type": "tool_use", "id": "toolu_3", "name": "mcp__x__y__z", "input": {}},
            ],
        },
    ]
    return history, results


async def test_tool_results_reply() -> None:
    history, results = tool_round(
        [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"}]
    )
    acc = await reply(results, history=history)
    assert acc.text == "tool get_time returned: 12:00"
    assert acc.stop_reason == "end_turn"
    assert acc.tool_uses == []


async def test_several_tool_results_in_block_order_with_errors() -> None:
    history, results = tool_round(
        [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "text", "text": "3"}, {"type": "text", "text": " apples"}],
            },
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [{"type": "text", "text": "boom"}],
                "is_error": True,
            },
            {
                "type": "tool_result",
                "tool_use_id": "toolu_3",
                "content": [
                    {"type": "image", "source": {"type": "base64", "data": "AA"}},
                    {"type": "text", "text": "pic"},
                ],
            },
            {"type": "tool_result", "tool_use_id": "toolu_404"},
        ]
    )
    acc = await reply(results, history=history)
    assert acc.text == (
        "tool add returned: 3 apples; tool get_time returned: boom; "
        "tool z returned: pic; tool unknown returned: "
    )


async def test_tool_results_are_not_scripts() -> None:
    history, results = tool_round(
        [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "fail overloaded"}]
    )
    acc = await reply([*results, {"type": "text", "text": "fail overloaded"}], history=history)
    assert acc.text == "tool get_time returned: fail overloaded"


# --- tokens -------------------------------------------------------------------------------


def test_count_tokens() -> None:
    assert [count_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_input_token_rule() -> None:
    tool = ToolSpec("mcp__s__t", "d", {"type": "object"})
    tool_chars = len('{"name":"mcp__s__t","description":"d","input_schema":{"type":"object"}}')
    req = ModelRequest(
        model="scripted",
        system="sys",  # 3
        messages=[
            {"role": "user", "content": "hello"},  # 5
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},  # 3
                    {"type": "text", "text": "ok"},  # 2
                    {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"a": 1}},  # 7
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "four"},  # 4
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "ab"},  # 2
                            {"type": "image", "source": {}},  # attachment
                        ],
                    },
                    {"type": "document", "source": {}},  # attachment
                ],
            },
        ],
        tools=[tool],
    )
    chars = 3 + 5 + 3 + 2 + 7 + 4 + 2 + tool_chars
    assert count_input_tokens(req) == math.ceil(chars / 4) + 2 * ATTACHMENT_TOKENS


def test_input_tokens_at_least_one() -> None:
    req = ModelRequest(model="scripted", system=None, messages=[])
    assert count_input_tokens(req) == 1


async def test_usage_in_events() -> None:
    req = request("echo abcdefghi", system="be brief", tools=())
    events, acc = await collect(req)
    assert acc.usage["input_tokens"] == count_input_tokens(req) == math.ceil(22 / 4)
    assert acc.usage["output_tokens"] == 3  # "abcdefghi" is 9 characters
    assert events[-2]["usage"] == {"output_tokens": 3}


async def test_output_tokens_count_tool_inputs() -> None:
    acc = await reply('echo abcd; call add {"a": 1}')
    # "abcd" (4) + '{"a":1}' (7) = 11 characters
    assert acc.usage["output_tokens"] == 3


async def test_no_user_message_at_all() -> None:
    req = ModelRequest(model="scripted", system=None, messages=[])
    _events, acc = await collect(req)
    assert acc.text == "echo: "


# --- max_tokens ---------------------------------------------------------------------------


async def test_max_tokens_truncates_text() -> None:
    events, acc = await collect(request("echo " + "word " * 20, max_tokens=3))
    assert_well_formed(events)
    assert acc.text == "word word wo"
    assert "".join(text_deltas(events)) == acc.text
    assert acc.stop_reason == "max_tokens"
    assert acc.usage["output_tokens"] == 3


async def test_max_tokens_drops_calls() -> None:
    events, acc = await collect(request('echo hi; call add {"a": "long enough"}', max_tokens=2))
    assert_well_formed(events)
    assert acc.text == "hi"
    assert acc.tool_uses == []
    assert acc.stop_reason == "max_tokens"
    assert acc.usage["output_tokens"] == 2


async def test_max_tokens_cuts_a_stream() -> None:
    events, acc = await collect(request("stream 100", max_tokens=10))
    deltas = text_deltas(events)
    assert "".join(deltas) == acc.text == ("".join(f"{i:02d} " for i in range(100)))[:40]
    assert len(deltas) == 14


async def test_exactly_max_tokens_is_not_truncated() -> None:
    acc = await reply("echo abcdefgh", max_tokens=2)
    assert acc.text == "abcdefgh"
    assert acc.stop_reason == "end_turn"


async def test_zero_max_tokens() -> None:
    events, acc = await collect(request("echo hi", max_tokens=0))
    assert_well_formed(events)
    assert acc.text == ""
    assert acc.stop_reason == "max_tokens"
    assert acc.usage["output_tokens"] == 0


# --- concurrency and properties -----------------------------------------------------------


async def test_one_instance_serves_concurrent_sessions() -> None:
    provider = ScriptedProvider()

    async def run(word: str) -> str:
        acc = MessageAccumulator()
        async for event in provider.stream(request(f"sleep 0.01; echo {word}")):
            acc.feed(event)
        return acc.text

    words = [f"w{i}" for i in range(20)]
    assert await asyncio.gather(*(run(w) for w in words)) == words


echo_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=";"), max_size=200
).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(echo_text)
def test_echo_deltas_concatenate_to_the_text(text: str) -> None:
    events, acc = asyncio.run(collect(request(f"echo {text}")))
    assert_well_formed(events)
    assert "".join(text_deltas(events)) == text
    assert acc.text == text
    assert acc.content == [{"type": "text", "text": text}]
    assert acc.usage["output_tokens"] == count_tokens(text)
    assert all(text_deltas(events))  # no empty deltas


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=30), max_size=5))
def test_call_inputs_round_trip(payload: dict[str, Any]) -> None:
    raw = json.dumps(payload).replace(";", "\\u003b")
    _events, acc = asyncio.run(collect(request(f"call add {raw}")))
    assert acc.tool_uses[0]["input"] == payload


# --- grammar details ----------------------------------------------------------------------


async def test_any_whitespace_separates_the_command_word() -> None:
    assert (await reply("echo\tx\ty")).text == "x\ty"
    assert (await reply("echo\nx")).text == "x"


async def test_newlines_do_not_separate_commands() -> None:
    assert (await reply("echo a\necho b")).text == "a\necho b"


async def test_a_huge_stream_is_cut_cheaply() -> None:
    started = time.monotonic()
    events, acc = await collect(request("echo hi; stream 1000000000", max_tokens=10))
    assert time.monotonic() - started < 5
    assert acc.text == ("hi " + "".join(f"{i:02d} " for i in range(20)))[:40]
    assert acc.stop_reason == "max_tokens"
    assert acc.usage["output_tokens"] == 10
    assert "".join(text_deltas(events)) == acc.text


async def test_only_a_sleep_replies_an_empty_text() -> None:
    acc = await reply("sleep 0")
    assert acc.content == [{"type": "text", "text": ""}]
    assert acc.stop_reason == "end_turn"


async def test_events_are_fresh_dicts() -> None:
    events, _acc = await collect(request("stream 3"))
    assert len({id(e) for e in events}) == len(events)
    assert len({id(e.get("delta")) for e in events if "delta" in e}) == len(
        [e for e in events if "delta" in e]
    )
