"""chat(), stream_text(), converse() with message histories, on_tool_call (issue 12, part 2)."""

from __future__ import annotations

from typing import Any

import pytest

from chucky import ChuckyError, SessionNotFoundError, ValidationError, text_result, tool
from chucky.client.conversation import DoneChunk, ErrorChunk, TextChunk, ToolCallChunk
from chucky.history import Message
from chucky.testing import ScriptedServer

HISTORY: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "my first question"},
    {
        "role": "assistant",
        "content": "let me look",
        "tool_calls": [{"id": "call_1", "name": "lookup", "input": {"q": "x"}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "found it"},
    Message(role="assistant", content="it is found"),
    Message(role="user", content="recall"),
]


async def test_a_history_seeds_the_transcript(server: ScriptedServer) -> None:
    async with server.client() as client:
        assert len(HISTORY) == 6
        assert await client.chat(HISTORY) == "my first question"


async def test_a_history_continues_in_the_session(server: ScriptedServer) -> None:
    async with server.client() as client:
        chunks = [chunk async for chunk in client.converse(HISTORY)]
        done = chunks[-1]
        assert isinstance(done, DoneChunk) and done.session_id
        # The seeded messages are the session's: a later turn on it still recalls them.
        again = await client.chat("recall", session_id=done.session_id)
        assert again == "my first question"


async def test_chat_returns_the_reply(server: ScriptedServer) -> None:
    async with server.client() as client:
        assert await client.chat("echo hello there") == "hello there"


async def test_stream_text_yields_fragments(server: ScriptedServer) -> None:
    async with server.client() as client:
        fragments = [text async for text in client.stream_text("stream 4")]
        assert fragments == ["00 ", "01 ", "02 ", "03 "]


async def test_converse_chunks_and_on_tool_call(server: ScriptedServer) -> None:
    @tool("lookup", "Look something up")
    async def lookup(q: str) -> dict[str, Any]:
        return text_result(f"result for {q}")

    seen: list[ToolCallChunk] = []

    async def observe(call: ToolCallChunk) -> None:
        seen.append(call)

    async with server.client() as client:
        chunks = [
            chunk
            async for chunk in client.converse(
                'call lookup {"q": "cats"}', tools=[lookup], on_tool_call=observe
            )
        ]
    kinds = [chunk.type for chunk in chunks]
    assert kinds[-1] == "done"
    calls = [chunk for chunk in chunks if isinstance(chunk, ToolCallChunk)]
    assert [(c.name, c.input) for c in calls] == [("lookup", {"q": "cats"})]
    assert seen == calls
    text = "".join(chunk.text for chunk in chunks if isinstance(chunk, TextChunk))
    assert text == "tool lookup returned: result for cats"
    done = chunks[-1]
    assert isinstance(done, DoneChunk) and done.text == text


async def test_a_sync_on_tool_call_is_called(server: ScriptedServer) -> None:
    seen: list[str] = []
    async with server.client() as client:
        await client.chat("call nothing {}", on_tool_call=lambda call: seen.append(call.name))
    assert seen == ["nothing"]


async def test_an_error_result_is_an_error_chunk_and_raises(server: ScriptedServer) -> None:
    @tool("noop", "Nothing")
    async def noop() -> dict[str, Any]:
        return text_result("ok")

    async with server.client() as client:
        chunks = [c async for c in client.converse("call noop", tools=[noop], max_turns=1)]
        last = chunks[-1]
        assert isinstance(last, ErrorChunk)
        assert last.result is not None and last.result.subtype == "error_max_turns"
        with pytest.raises(ChuckyError) as raised:
            await client.chat("call noop", tools=[noop], max_turns=1)
        assert raised.value.reason == "error_max_turns"
        with pytest.raises(ChuckyError):
            async for _ in client.stream_text("call noop", tools=[noop], max_turns=1):
                pass


async def test_an_error_frame_raises_its_typed_error(server: ScriptedServer) -> None:
    async with server.client() as client:
        chunks = [c async for c in client.converse("echo hi", session_id="no-such-session")]
        assert len(chunks) == 1 and isinstance(chunks[0], ErrorChunk)
        assert isinstance(chunks[0].error, SessionNotFoundError)
        with pytest.raises(SessionNotFoundError):
            await client.chat("echo hi", session_id="no-such-session")


async def test_penalties_and_model_are_accepted(server: ScriptedServer) -> None:
    async with server.client() as client:
        reply = await client.chat(
            [{"role": "user", "content": "echo ok"}],
            frequency_penalty=0.5,
            presence_penalty=0.5,
            temperature=0.1,
        )
        assert reply == "ok"


@pytest.mark.parametrize(
    ("history", "fragment"),
    [
        ([], "must end with the user's message"),
        ([{"role": "assistant", "content": "hi"}], "must end with the user's message"),
        ([{"role": "robot", "content": "hi"}], "messages[0]: role"),
        ([{"role": "user"}, {"role": "user", "content": 3}], "messages[1]: content"),
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}], "tool_call_id"),
    ],
)
async def test_a_bad_history_is_refused_before_any_socket(
    server: ScriptedServer, history: list[Any], fragment: str
) -> None:
    async with server.client() as client:
        with pytest.raises(ValidationError, match=fragment.replace("[", r"\[")):
            await client.chat(history)
