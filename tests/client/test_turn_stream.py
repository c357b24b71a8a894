"""``client.stream_events()``: a turn as a context manager of typed events, and the
accumulator behind it. Against the real server with the scripted model."""

from __future__ import annotations

import asyncio

import pydantic
import pytest

from chucky import StructuredOutputTruncatedError, ValidationError
from chucky.client import (
    SessionState,
    StructuredOutputDone,
    TextDelta,
    TextDone,
    ToolCallArgumentsDone,
    ToolCallStarted,
    ToolResultEvent,
    TurnAccumulator,
    TurnResult,
)
from chucky.errors import InvalidStateError
from chucky.testing import scripted_server
from chucky.tools import tool


class City(pydantic.BaseModel):
    name: str
    population: int


@tool("add", "Add two numbers")
async def add(a: int, b: int) -> str:
    return str(a + b)


@tool("slow", "Take a long time")
async def slow() -> str:
    await asyncio.sleep(30)
    return "done"


def _client_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(("chucky-reader", "chucky-keepalive", "chucky-tool-call"))
    ]


async def test_typed_events_of_a_streamed_turn_with_a_tool_call() -> None:
    async with (
        scripted_server() as server,
        server.client() as client,
        client.stream_events(
            'echo adding; call add {"a": 2, "b": 3}', tools=[add], include_partial_messages=True
        ) as stream,
    ):
        events = [event async for event in stream]
    kinds = [type(e) for e in events]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 2  # the model's stream, fragment by fragment
    assert "".join(d.text for d in deltas) == "adding" + "tool add returned: 5"
    assert deltas[-1].snapshot == "tool add returned: 5"
    texts = [e.text for e in events if isinstance(e, TextDone)]
    assert texts == ["adding", "tool add returned: 5"]
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    done = next(e for e in events if isinstance(e, ToolCallArgumentsDone))
    assert (started.name, done.name, done.arguments, done.id) == (
        "add",
        "add",
        {"a": 2, "b": 3},
        started.id,
    )
    assert (
        kinds.index(ToolCallStarted)
        < kinds.index(ToolCallArgumentsDone)
        < kinds.index(ToolResultEvent)
    )
    tool_result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert tool_result.tool_use_id == done.id and not tool_result.is_error
    assert isinstance(events[-1], TurnResult)
    assert events[-1].result.result == "tool add returned: 5"
    assert stream.accumulator.tool_calls == [done]


async def test_without_partial_messages_a_response_is_one_delta() -> None:
    async with (
        scripted_server() as server,
        server.client() as client,
        client.stream_events("echo hello world") as stream,
    ):
        fragments = [text async for text in stream.text_stream]
        result = await stream.get_final_result()
    assert fragments == ["hello world"]
    assert result.result == "hello world" and stream.current_text == "hello world"


async def test_text_stream_and_final_result_share_one_stream() -> None:
    async with (
        scripted_server() as server,
        server.client() as client,
        client.stream_events("stream 5", include_partial_messages=True) as stream,
    ):
        first = await anext(stream.text_stream)
        result = await stream.get_final_result()
        assert await stream.get_final_result() is result
        await stream.until_done()
    assert first == "00 "
    assert result.result == "00 01 02 03 04 "
    assert stream.current_text == "00 01 02 03 04 "


async def test_structured_output_done_carries_the_model() -> None:
    async with (
        scripted_server() as server,
        server.client() as client,
        client.stream_events(
            'json {"name": "Paris", "population": 2102650}', output_format=City
        ) as stream,
    ):
        events = [event async for event in stream]
    assert isinstance(events[-2], StructuredOutputDone)
    assert events[-2].output == City(name="Paris", population=2102650)
    assert isinstance(events[-1], TurnResult)
    assert events[-1].result.structured_output == City(name="Paris", population=2102650)


async def test_structured_output_cut_by_max_tokens_raises_a_typed_error() -> None:
    script = 'json {"name": "Paris", "population": 2102650}'
    async with scripted_server() as server, server.client() as client:
        async with client.stream_events(script, output_format=City, max_tokens=3) as stream:
            with pytest.raises(StructuredOutputTruncatedError) as caught:
                await stream.get_final_result()
        with pytest.raises(StructuredOutputTruncatedError) as by_prompt:
            await client.prompt(script, output_format=City, max_tokens=3)
    for error in (caught.value, by_prompt.value):
        assert isinstance(error, ValidationError)
        assert error.reason == "max_tokens"
        assert error.usage is not None and error.usage.output_tokens == 9  # 3 calls of 3
        assert error.details["result"].stop_reason == "max_tokens"
    assert stream.accumulator.error is caught.value


async def test_leaving_early_interrupts_the_turn_and_closes_cleanly() -> None:
    async with scripted_server() as server, server.client() as client:
        async with client.stream_events("sleep 30; echo too late") as stream:
            session = stream.session
            assert session.state is SessionState.OPEN
        # The interrupt's result was read: the server ended (and settled) the turn.
        result = stream.accumulator.result
        assert result is not None
        assert result.subtype == "error_during_execution" and result.errors == ["interrupted"]
        assert session.state is SessionState.CLOSED
        assert _client_tasks() == []
        # The session goes on with the next turn.
        resumed = await client.prompt("echo again", session_id=result.session_id)
        assert resumed.result == "again"


async def test_breaking_out_of_the_events_mid_stream() -> None:
    async with scripted_server() as server, server.client() as client:
        async with client.stream_events(
            "echo waiting; call slow {}", tools=[slow], include_partial_messages=True
        ) as stream:
            async for event in stream:
                if isinstance(event, ToolCallArgumentsDone):
                    break  # the tool now runs for 30 s
        assert stream.accumulator.result is not None
        assert stream.accumulator.result.errors == ["interrupted"]
        assert _client_tasks() == []
        with pytest.raises(InvalidStateError):
            await anext(stream)


async def test_an_exception_in_the_block_interrupts_and_propagates() -> None:
    async with scripted_server() as server, server.client() as client:
        with pytest.raises(KeyError):
            async with client.stream_events("sleep 30; echo x") as stream:
                raise KeyError("boom")
        assert stream.accumulator.result is not None
        assert stream.accumulator.result.errors == ["interrupted"]
        assert _client_tasks() == []


async def test_cancelling_the_block_still_settles_the_turn() -> None:
    async with scripted_server() as server, server.client() as client:
        entered = asyncio.Event()
        holder: list[object] = []

        async def run() -> None:
            async with client.stream_events("sleep 30; echo x") as stream:
                holder.append(stream)
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(run())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream = holder[0]
        assert stream.accumulator.result is not None  # type: ignore[attr-defined]
        assert _client_tasks() == []


async def test_an_error_frame_raises_the_typed_error() -> None:
    async with scripted_server() as server:
        token = server.token(ai_dollars=0.0000001)
        from chucky import BudgetExceededError, Chucky

        async with Chucky(token, server.url) as client:
            async with client.stream_events("echo hi") as stream:
                with pytest.raises(BudgetExceededError):
                    await stream.until_done()
            assert stream.accumulator.error is not None


def test_the_accumulator_by_hand() -> None:
    from chucky.messages import parse_message

    acc = TurnAccumulator()
    assistant = parse_message(
        {
            "type": "assistant",
            "message": {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "tool_use", "id": "t1", "name": "mcp__x__add", "input": {"a": 1}},
                ],
            },
        }
    )
    events = acc.feed(assistant)
    assert [type(e) for e in events] == [
        TextDelta,
        TextDone,
        ToolCallStarted,
        ToolCallArgumentsDone,
    ]
    assert events[3] == ToolCallArgumentsDone("t1", "add", {"a": 1})
    assert not acc.done and acc.text == "hi"
    (end,) = acc.feed(parse_message({"type": "result", "subtype": "success", "result": "hi"}))
    assert isinstance(end, TurnResult) and end.result.result == "hi"
    assert acc.done and acc.result is end.result and len(acc.messages) == 2
