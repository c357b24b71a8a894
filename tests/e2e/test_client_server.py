"""Every public method of the client, end to end against ``chucky serve`` (scripted model)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel
from support.timing import ticks

import chucky
from chucky import (
    AssistantMessage,
    AuthenticationError,
    Chucky,
    ErrorMessage,
    ImageBlock,
    ProviderError,
    ResultMessage,
    SessionNotFoundError,
    SystemMessage,
    TextBlock,
    UserMessage,
    ValidationError,
    create_budget,
    create_mcp_server,
    create_sdk_mcp_server,
    create_token,
    get_assistant_text,
    get_result_text,
    text_result,
    tool,
)
from chucky.messages import StreamEventMessage
from chucky.testing import ScriptedServer, scripted_server


async def test_prompt_returns_a_typed_result_that_is_also_a_mapping(server: ScriptedServer) -> None:
    async with server.client(system_prompt="You are helpful.") as client:
        result = await client.prompt("What is 2 + 2?")
    assert result.result == "echo: What is 2 + 2?"
    assert result.get("result") == result.result
    assert result["subtype"] == "success" == result.subtype
    assert result.is_error is False
    assert result.total_cost_usd > 0
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert isinstance(result.duration_ms, int)
    assert result.num_turns == 1
    assert result.session_id
    assert dict(result)["session_id"] == result.session_id
    kinds = [type(m) for m in result.messages]
    assert kinds == [SystemMessage, AssistantMessage, ResultMessage]


async def test_official_argument_order_url_then_token(server: ScriptedServer) -> None:
    client = Chucky(server.url, server.token())
    assert (await client.prompt("echo ok")).result == "ok"
    await client.close()


async def test_stream_yields_messages_tool_use_result_and_done(server: ScriptedServer) -> None:
    @tool("get_time", "Get the current time")
    async def get_time() -> dict[str, object]:
        return {"content": [{"type": "text", "text": "12:00"}]}

    async with server.client() as client:
        events = [e async for e in client.stream("echo hi; call get_time {}", tools=[get_time])]
    kinds = [e.type for e in events]
    assert kinds == ["message", "tool_use", "message", "result", "done"]
    assert events[0].data == "hi"
    assert isinstance(events[0].message, AssistantMessage)
    assert events[1].name == "get_time"
    assert events[1].input == {}
    assert events[1].id
    assert events[2].data == "tool get_time returned: 12:00"
    assert isinstance(events[3].data, ResultMessage)
    assert events[4].data == {"sessionId": events[3].data.session_id}


async def test_stream_with_partial_messages_yields_text_deltas(server: ScriptedServer) -> None:
    async with server.client(include_partial_messages=True) as client:
        events = [e async for e in client.stream("echo one two three four")]
    deltas = [e.data for e in events if e.type == "message"]
    assert len(deltas) > 1
    assert "".join(deltas) == "one two three four"
    assert all(isinstance(e.message, StreamEventMessage) for e in events if e.type == "message")


async def test_stream_error_event_and_prompt_raise_typed_errors(server: ScriptedServer) -> None:
    async with server.client() as client:
        events = [e async for e in client.stream("fail bad_request")]
        assert [e.type for e in events] == ["error"]
        assert isinstance(events[0].error, ProviderError)
        assert events[0].error.reason == "provider_rejected"
        assert events[0].data.get("error", {}).get("code") == "PROVIDER_ERROR"
        with pytest.raises(ProviderError):
            await client.prompt("fail overloaded")


async def test_session_multi_turn_on_one_socket(server: ScriptedServer) -> None:
    async with server.client() as client:
        session = client.create_session(system_prompt="You are a math tutor.")
        assert session.session_id is None  # lazy: nothing happened yet
        assert session.state is chucky.SessionState.NEW
        await session.send("Hello, I am Alice")
        texts = []
        async for msg in session.stream():
            if msg.get("type") == "assistant":
                texts.append(get_assistant_text(msg))
            if msg.get("type") == "result":
                break
        first_id = session.session_id
        await session.send("recall")
        results = [m async for m in session.receive() if m.get("type") == "result"]
        assert get_result_text(results[0]) == "Hello, I am Alice"
        assert session.session_id == first_id
        assert session.info["sessionId"] == first_id
        assert len(server.server._connections) == 1
        await session.close()
    assert texts == ["echo: Hello, I am Alice"]


async def test_messages_are_typed_and_behave_like_the_official_dicts(
    server: ScriptedServer,
) -> None:
    async with server.client() as client, client.create_session() as session:
        await session.send("echo hello")
        messages = [m async for m in session.stream()]
    system, assistant, result = messages
    assert isinstance(system, SystemMessage)
    assert system.session_id == result.session_id == system["session_id"]
    assert assistant["message"]["content"][0]["text"] == "hello"
    assert dict(assistant)["type"] == "assistant"
    assert "uuid" in assistant
    assert result.get("subtype") == "success"


async def test_turns_sent_before_reading_are_all_delivered_in_order(
    server: ScriptedServer,
) -> None:
    async with server.client() as client, client.create_session() as session:
        await session.send("echo one")
        await session.send("echo two")
        await session.send("echo three")
        results = []
        for _ in range(3):
            async for msg in session.stream():
                if isinstance(msg, ResultMessage):
                    results.append(msg.result)
    assert results == ["one", "two", "three"]


async def test_a_slow_reader_gets_every_frame_with_a_bounded_queue(
    server: ScriptedServer,
) -> None:
    async with (
        server.client(include_partial_messages=True, max_queue=4) as client,
        client.create_session() as session,
    ):
        await session.send("stream 400")
        deltas = []
        async for msg in session.stream():
            inbox = session._conn.inbox if session._conn else None
            assert inbox is not None and len(inbox) <= 4
            if isinstance(msg, StreamEventMessage) and msg.text_delta:
                deltas.append(msg.text_delta)
                if len(deltas) % 50 == 0:
                    await asyncio.sleep(ticks(1))  # a slow application
            if isinstance(msg, ResultMessage):
                assert msg.result == "".join(deltas)
    assert len(deltas) == 400


async def test_content_blocks(server: ScriptedServer) -> None:
    png = base64.b64encode(b"\x89PNG fake image").decode()
    async with server.client() as client, client.create_session() as session:
        await session.send(
            [
                TextBlock(text="echo described"),
                ImageBlock(source={"type": "base64", "media_type": "image/png", "data": png}),
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": png},
                },
            ]
        )
        messages = [m async for m in session.stream()]
        assert messages[-1].result == "described"
        with pytest.raises(ValidationError):
            await session.send([{"type": "video", "url": "x"}])
        with pytest.raises(ValidationError):
            await session.send(42)  # type: ignore[arg-type]


async def test_lone_surrogates_survive_the_round_trip(server: ScriptedServer) -> None:
    async with server.client() as client:
        result = await client.prompt("echo a\udc00b")
    assert result.result == "a\udc00b"


async def test_per_call_options_override_client_defaults(server: ScriptedServer) -> None:
    async with server.client(model="haiku") as client:
        default = await client.prompt("echo a")
        override = await client.prompt("echo b", model="opus")
    assert default.messages[0].model == "haiku"
    assert override.messages[0].model == "opus"


async def test_resume_session_continues_history(server: ScriptedServer) -> None:
    async with server.client() as client:
        first = await client.prompt("My name is Bob")
        session = client.resume_session(first.session_id)
        await session.send("recall")
        messages = [m async for m in session.stream()]
        await session.close()
        assert messages[-1].result == "My name is Bob"
        assert messages[-1].session_id == first.session_id

        other = server.client("someone-else")
        with pytest.raises(SessionNotFoundError):
            await other.prompt("recall", session_id=first.session_id)
        await other.close()


async def test_resume_session_after_a_server_restart(tmp_path: Path) -> None:
    # Issue 3: a session started before a restart resumes after it, with its whole history;
    # the client's resume_session() is the way in.
    secret = "hk_live_" + "d" * 32
    database_url = f"sqlite+aiosqlite:///{tmp_path}/state.db"
    async with (
        scripted_server(secret=secret, database_url=database_url) as running,
        running.client("bob") as client,
    ):
        first = await client.prompt("My name is Bob")
    async with (
        scripted_server(secret=secret, database_url=database_url) as running,
        running.client("bob") as client,
    ):
        async with client.resume_session(first.session_id) as session:
            await session.send("recall")
            messages = [m async for m in session.stream()]
        assert messages[-1].result == "My name is Bob"
        assert messages[-1].session_id == first.session_id


async def test_interrupt_ends_the_turn_with_a_result(server: ScriptedServer) -> None:
    async with server.client() as client, client.create_session() as session:
        await session.send("sleep 30")
        messages = []
        async for msg in session.stream():
            messages.append(msg)
            if isinstance(msg, SystemMessage) and msg.subtype == "init":
                await session.interrupt()
        result = messages[-1]
        assert isinstance(result, ResultMessage)
        assert result.subtype == "error_during_execution"
        assert result.errors == ["interrupted"]
        await session.send("echo still usable")
        assert [m async for m in session.stream()][-1].result == "still usable"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda s: "not-a-jwt", "invalid_token"),
        (
            lambda s: create_token(
                "u", s.project_id, s.secret, create_budget(1, 1), now=time.time() - 7200
            ),
            "token_expired",
        ),
        (
            lambda s: create_token("u", s.project_id, "hk_live_" + "f" * 32, create_budget(1, 1)),
            "invalid_token",
        ),
        # Answered as a wrong signature: the server never says whether a project exists.
        (lambda s: create_token("u", "nope", s.secret, create_budget(1, 1)), "invalid_token"),
    ],
    ids=["garbage", "expired", "wrong-signature", "unknown-project"],
)
async def test_bad_tokens_raise_authentication_error(
    server: ScriptedServer, make_token: object, reason: str
) -> None:
    token = make_token(server)  # type: ignore[operator]
    client = Chucky(token, server.url)
    with pytest.raises(AuthenticationError) as info:
        await client.prompt("hi")
    assert info.value.reason == reason
    assert info.value.code == "AUTHENTICATION_ERROR"
    assert isinstance(info.value, RuntimeError)
    await client.close()


async def test_leaving_stream_early_leaves_no_task_or_socket(server: ScriptedServer) -> None:
    before = asyncio.all_tasks()
    async with server.client(include_partial_messages=True) as client:
        async with contextlib.aclosing(client.stream("stream 2000")) as events:
            async for event in events:
                if event.type == "message":
                    break
        session = client.create_session()
        await session.send("stream 2000")
        async for _ in session.stream():
            break
        await session.close()
    for _ in range(100):
        if not server.server._connections:
            break
        await asyncio.sleep(ticks(0.2))
    assert not server.server._connections
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
    assert not {t.get_name() for t in leftover if t.get_name().startswith("chucky")}


async def test_breaking_out_of_a_plain_stream_loop_closes_the_session(
    server: ScriptedServer,
) -> None:
    async with server.client(include_partial_messages=True) as client:
        async for event in client.stream("stream 2000"):
            if event.type == "message":
                break
        for _ in range(100):
            if not server.server._connections:
                break
            await asyncio.sleep(ticks(0.2))
    assert not server.server._connections


# --- tools ------------------------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


@tool("sync_add", "Add synchronously")
def sync_add(a: int, b: int) -> str:
    return f"{a + b} in {threading.current_thread().name}"


@tool("async_mul", "Multiply")
async def async_mul(a: float, b: float) -> str:
    return str(a * b)


@tool(
    "dict_tool",
    "Takes one dict",
    schema={"type": "object", "properties": {"q": {"type": "string"}}},
)
async def dict_tool(args: dict[str, object]) -> str:
    return f"got {sorted(args)}"


@tool("norm", "Manhattan norm", schema=Point)
def norm(point: Point) -> str:
    return str(abs(point.x) + abs(point.y))


@tool("boom", "Always fails")
def boom() -> str:
    raise RuntimeError("kaput")


@tool("sleepy", "Never returns in time")
async def sleepy() -> str:
    await asyncio.sleep(60)
    return "late"


async def _result(client: Chucky, script: str, **options: object) -> str:
    result = await client.prompt(script, **options)  # type: ignore[arg-type]
    assert result.result is not None
    return result.result


async def test_tool_kinds_end_to_end(server: ScriptedServer) -> None:
    tools = [sync_add, async_mul, dict_tool, norm, boom, sleepy]
    async with server.client(tools=tools, tool_timeout=ticks(4)) as client:
        text = await _result(client, 'call sync_add {"a": 2, "b": 3}')
        assert text.startswith("tool sync_add returned: 5 in ")
        assert "MainThread" not in text  # sync handlers run in a worker thread
        assert await _result(client, 'call async_mul {"a": 2, "b": 2.5}') == (
            "tool async_mul returned: 5.0"
        )
        assert await _result(client, 'call dict_tool {"q": "x"}') == (
            "tool dict_tool returned: got ['q']"
        )
        assert await _result(client, 'call norm {"x": -2, "y": 3}') == "tool norm returned: 5"
        invalid = await _result(client, 'call norm {"x": "left"}')
        assert "Invalid arguments" in invalid and "x" in invalid
        failed = await _result(client, "call boom {}")
        assert "kaput" in failed and "RuntimeError" in failed
        timed_out = await _result(client, "call sleepy {}")
        assert "timed out" in timed_out


async def test_two_tools_run_at_once(server: ScriptedServer) -> None:
    both_running = asyncio.Barrier(2)

    @tool("left", "Waits for right")
    async def left() -> str:
        async with asyncio.timeout(5):
            await both_running.wait()
        return "L"

    @tool("right", "Waits for left")
    async def right() -> str:
        async with asyncio.timeout(5):
            await both_running.wait()
        return "R"

    async with server.client(tools=[left, right]) as client:
        text = await _result(client, "call left {}; call right {}")
    assert text == "tool left returned: L; tool right returned: R"


async def test_interrupt_cancels_a_running_tool_handler(server: ScriptedServer) -> None:
    entered = asyncio.Event()
    cleaned = asyncio.Event()

    @tool("wait", "Waits for an event that never fires")
    async def wait() -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()
        return "never"  # pragma: no cover

    async with server.client(tools=[wait]) as client, client.create_session() as session:
        await session.send("call wait {}")
        messages = []
        async with asyncio.timeout(ticks(100)):
            async for msg in session.stream():
                messages.append(msg)
                if isinstance(msg, AssistantMessage) and msg.tool_uses:
                    await entered.wait()
                    await session.interrupt()
                    await cleaned.wait()  # cancelled locally, before the server's result
        assert messages[-1].subtype == "error_during_execution"
        assert not any(isinstance(m, ErrorMessage) for m in messages)
        await session.send("echo still usable")
        assert [m async for m in session.stream()][-1].result == "still usable"


async def test_a_server_tool_timeout_ends_the_handler_with_its_turn() -> None:
    """The server gives up on the call; when the turn's result arrives, the handler still
    running is cancelled: its late result would have been refused with an error frame, which
    would have ended the next turn."""
    release = asyncio.Event()
    cancelled = asyncio.Event()

    @tool("slow", "Slower than the server's patience")
    async def slow() -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    async with scripted_server(tool_timeout=ticks(4)) as running:
        client = running.client(tools=[slow], tool_timeout=None)
        async with client, client.create_session() as session:
            await session.send("call slow {}")
            first = [m async for m in session.stream()]
            assert "timed out" in first[-1].result
            async with asyncio.timeout(ticks(100)):
                await cancelled.wait()
            release.set()
            await session.send("echo fine")
            second = [m async for m in session.stream()]
    assert not any(isinstance(m, ErrorMessage) for m in second)
    assert second[-1].result == "fine"


async def test_unknown_tool_declared_without_handler_is_answered(server: ScriptedServer) -> None:
    declared_only = {
        "name": "remote",
        "version": "1.0.0",
        "tools": [{"name": "ghost", "description": "no handler here", "inputSchema": {}}],
    }
    async with server.client(mcp_servers=[declared_only]) as client:
        text = await _result(client, "call ghost {}")
    assert "Unknown tool" in text


async def test_mcp_servers_both_factories(server: ScriptedServer) -> None:
    @tool("get_time", "Get the time")
    async def get_time() -> dict[str, object]:
        return text_result("12:00").to_wire()

    @tool("add", "Add")
    def add(a: float, b: float) -> str:
        return f"Sum: {a + b}"

    async with server.client(
        mcp_servers={
            "time": create_mcp_server("time", [get_time]),
            "calc": create_sdk_mcp_server(name="calculator", version="2.0.0", tools=[add]),
        }
    ) as client:
        result = await client.prompt('call get_time {}; call add {"a": 1, "b": 2}')
        system = result.messages[0]
        assert isinstance(system, SystemMessage)
        assert system.tools is not None
        assert set(system.tools) == {"mcp__time__get_time", "mcp__calc__add"}
        assert result.result == "tool get_time returned: 12:00; tool add returned: Sum: 3.0"
        echo = [m for m in result.messages if isinstance(m, UserMessage)]
        assert echo and echo[0].message.content


async def test_duplicate_tool_names_fail_at_create_time(server: ScriptedServer) -> None:
    @tool("same", "One")
    def one() -> str:
        return "1"

    @tool("same", "Two")
    def two() -> str:
        return "2"

    async with server.client() as client:
        with pytest.raises(ValidationError, match="same"):
            client.create_session(tools=[one], mcp_servers={"other": create_mcp_server("o", [two])})
        with pytest.raises(ValidationError):
            await client.prompt("hi", tools=[one, two])


async def test_unknown_keyword_is_a_type_error(server: ScriptedServer) -> None:
    async with server.client() as client:
        with pytest.raises(TypeError, match="bogus"):
            client.create_session(bogus=1)  # type: ignore[call-arg]


async def test_error_message_shape_in_sessions(server: ScriptedServer) -> None:
    async with server.client() as client, client.create_session() as session:
        await session.send("fail server_error")
        messages = [m async for m in session.stream()]
        error = messages[-1]
        assert isinstance(error, ErrorMessage)
        assert error.get("error", {}).get("message")
        assert isinstance(error.exception, ProviderError)


async def test_testing_kit_fixture_free_usage() -> None:
    async with scripted_server() as running, running.client() as client:
        assert (await client.prompt("echo 4")).result == "4"


async def test_client_close_reaches_sessions_the_application_dropped(
    server: ScriptedServer,
) -> None:
    client = server.client()

    async def open_and_forget() -> None:
        session = client.create_session()
        await session.send("echo hi")
        async for _ in session.stream():
            pass  # the Session object goes out of scope here, its socket stays open

    await open_and_forget()
    gc.collect()
    assert len(server.server._connections) == 1
    await client.close()
    for _ in range(100):
        if not server.server._connections:
            break
        await asyncio.sleep(ticks(0.2))
    assert not server.server._connections
    assert not client._sessions
