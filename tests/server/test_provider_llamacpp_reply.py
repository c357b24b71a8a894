"""The llamacpp provider's reading of a constrained reply, without a model (issue 11, finding 13).

With tools offered, the local model's reply is JSON: ``{"text": ...}`` or ``{"tool": ...,
"arguments": ...}``. A tool call cut by ``max_tokens`` is neither: it must end the message with
``stop_reason: "max_tokens"``, with no ``tool_use`` block and none of its JSON shown as text.
The worker thread's output is replayed through the provider's event assembly as it would arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chucky.server.providers.base import MessageAccumulator, ModelRequest, ToolSpec
from chucky.server.providers.llamacpp import LlamaCppProvider, _Prepared, parse_reply, reply_schema

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather for a city.",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
CALL = '{ "tool": "get_weather", "arguments": { "city": "Paris" } }'


@pytest.mark.parametrize("cut", [1, 5, 12, 30, len(CALL) - 1])
def test_a_tool_call_cut_by_max_tokens_is_no_call_and_no_text(cut: int) -> None:
    assert parse_reply(CALL[:cut], "length", [WEATHER]) == (None, "max_tokens")


def test_a_complete_tool_call_is_a_call() -> None:
    assert parse_reply(CALL, "stop", [WEATHER]) == (("get_weather", {"city": "Paris"}), "tool_use")
    # Complete at the very last token of the budget: still a call.
    assert parse_reply(CALL, "length", [WEATHER]) == (
        ("get_weather", {"city": "Paris"}),
        "tool_use",
    )


def test_a_reply_cut_by_something_else_ends_the_turn() -> None:
    # A stop sequence (or a halt) cut it: not the budget.
    assert parse_reply(CALL[:20], "stop", [WEATHER]) == (None, "end_turn")
    assert parse_reply("", None, [WEATHER]) == (None, "end_turn")
    # A name that is not offered is no call either.
    assert parse_reply(CALL.replace("get_weather", "nope"), "stop", [WEATHER]) == (
        None,
        "end_turn",
    )


async def _replay(pieces: list[str], finish: str, *, tools: bool = True) -> list[dict[str, Any]]:
    """The events the provider assembles from the worker's ``pieces`` then ``done``."""
    request = ModelRequest(
        model="local",
        system=None,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER] if tools else [],
        max_tokens=16,
    )
    prepared = _Prepared(
        tokens=[1, 2, 3],
        stop=[],
        kwargs={"max_tokens": 16},
        grammar_schema=reply_schema([WEATHER], "any") if tools else None,
    )
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    for piece in pieces:
        queue.put_nowait(("text", piece))
    queue.put_nowait(("done", finish, 16))
    provider = LlamaCppProvider()
    return [event async for event in provider._events(request, prepared, queue)]


def _fold(events: list[dict[str, Any]]) -> MessageAccumulator:
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    return accumulator


async def test_a_cut_tool_call_ends_the_message_with_max_tokens_and_no_content() -> None:
    pieces = ['{ "tool": "get', '_weather", "arg', 'uments": { "ci']
    events = await _replay(pieces, "length")
    kinds = [event["type"] for event in events]
    assert kinds == ["message_start", "message_delta", "message_stop"]
    folded = _fold(events)
    assert folded.stop_reason == "max_tokens"
    assert folded.content == []
    assert folded.tool_uses == []
    assert folded.text == ""
    assert folded.usage["output_tokens"] == 16


async def test_a_complete_tool_call_is_one_tool_use_block() -> None:
    events = await _replay([CALL[:10], CALL[10:]], "stop")
    folded = _fold(events)
    assert folded.stop_reason == "tool_use"
    (call,) = folded.tool_uses
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})
    assert folded.text == ""


async def test_a_cut_text_reply_keeps_its_text() -> None:
    events = await _replay(['{"text": "Sunny in', " Par"], "length")
    folded = _fold(events)
    assert folded.stop_reason == "max_tokens"
    assert folded.text == "Sunny in Par"
    assert folded.tool_uses == []


async def test_an_unconstrained_empty_reply_is_one_empty_text_block() -> None:
    folded = _fold(await _replay([], "stop", tools=False))
    assert folded.content == [{"type": "text", "text": ""}]
    assert folded.stop_reason == "end_turn"
