"""The client against servers scripted by the test: dialects, handshakes, failures, keepalive."""

from __future__ import annotations

import asyncio
import builtins
import json
import time

import pytest
from support.fake_server import READY, Peer, fake_server
from support.timing import TICK, ticks
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

import chucky
from chucky import (
    AuthenticationError,
    Chucky,
    ConnectionError,
    HandshakeError,
    InvalidStateError,
    TimeoutError,
    ValidationError,
    tool,
)
from chucky.messages import AssistantMessage, ErrorMessage, ResultMessage

TOKEN = "header.payload.signature"


def client(url: str, **options: object) -> Chucky:
    return Chucky(TOKEN, url, **options)  # type: ignore[arg-type]


async def test_init_is_sent_first_and_ready_may_come_after_it() -> None:
    """T dialect: the server waits for init before ready; our client does not deadlock."""

    async def handler(peer: Peer) -> None:
        init = await peer.recv()
        assert init["type"] == "init"
        await peer.send(READY)
        await peer.recv_type("user")
        await peer.result("late ready is fine")

    async with fake_server(handler) as server:
        result = await client(server.url).prompt("hi")
    assert result.result == "late ready is fine"


async def test_ready_before_init_and_token_in_query_and_header() -> None:
    async def handler(peer: Peer) -> None:
        payload = await peer.handshake()
        assert payload["model"] == "claude-sonnet-5-5"
        turn = await peer.recv_type("user")
        assert turn["message"] == {"role": "user", "content": "hi"}
        assert turn["parent_tool_use_id"] is None
        await peer.result()

    async with fake_server(handler) as server:
        await client(server.url + "?vessel=v1").prompt("hi")
        request = server.peers[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert f"token={TOKEN}" in request.path
    assert "vessel=v1" in request.path
    assert request.headers["User-Agent"].startswith("chucky-python/")


async def test_every_option_is_sent_in_camel_case() -> None:
    seen: dict[str, object] = {}

    @tool("get_time", "Get the time")
    def get_time() -> str:
        return "12:00"

    async def handler(peer: Peer) -> None:
        seen.update(await peer.handshake())
        await peer.recv_type("user")
        await peer.result()

    async with fake_server(handler) as server:
        c = Chucky(
            TOKEN,
            server.url,
            model="opus",
            max_turns=3,
            include_partial_messages=True,
            permission_mode="acceptEdits",
        )
        await c.prompt(
            "hi",
            system_prompt="Be brief.",
            max_budget_usd=0.5,
            max_thinking_tokens=1000,
            fallback_model="haiku",
            tools=[get_time, "Read"],
            allowed_tools=["mcp__inline-tools__get_time"],
            disallowed_tools=["Bash"],
            output_format={"type": "object"},
            continue_session=True,
            fork_session=True,
            resume_session_at="u-1",
            resume="s-1",
            allow_dangerously_skip_permissions=False,
            env={"A": "1"},
            agents={"helper": {"description": "d"}},
            betas=["b1"],
            setting_sources=["user"],
            job_id="job-1",
        )
    assert seen == {
        "model": "opus",
        "maxTurns": 3,
        "includePartialMessages": True,
        "permissionMode": "acceptEdits",
        "systemPrompt": "Be brief.",
        "maxBudgetUsd": 0.5,
        "maxThinkingTokens": 1000,
        "fallbackModel": "haiku",
        "tools": ["Read"],
        "allowedTools": ["mcp__inline-tools__get_time"],
        "disallowedTools": ["Bash"],
        "mcpServers": [
            {
                "name": "inline-tools",
                "version": "1.0.0",
                "tools": [
                    {
                        "name": "get_time",
                        "description": "Get the time",
                        "inputSchema": {"type": "object", "properties": {}},
                        "executeIn": "client",
                    }
                ],
            }
        ],
        "outputFormat": {"type": "json_schema", "schema": {"type": "object"}},
        "continue": True,
        "forkSession": True,
        "resumeSessionAt": "u-1",
        "sessionId": "s-1",
        "allowDangerouslySkipPermissions": False,
        "env": {"A": "1"},
        "agents": {"helper": {"description": "d"}},
        "betas": ["b1"],
        "settingSources": ["user"],
        "jobId": "job-1",
        "chuckyExtensions": ["interrupt", "tool_cancel", "seq"],
    }


async def test_wrapped_sdk_messages_are_unwrapped_and_garbage_is_skipped() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send("{not json")
        await peer.send("[1, 2]")
        await peer.send({"type": "mystery", "x": 1})
        await peer.send(
            {
                "type": "sdk_message",
                "payload": {
                    "type": "assistant",
                    "message": {"role": "assistant", "content": [{"type": "text", "text": "w"}]},
                },
            }
        )
        await peer.send({"type": "sdk_message", "payload": {"type": "result", "result": "done"}})

    async with fake_server(handler) as server:
        session = client(server.url).create_session()
        await session.send("hi")
        kinds = [type(m) async for m in session.stream()]
        await session.close()
    assert kinds == [AssistantMessage, ResultMessage]


async def test_http_403_at_upgrade_is_an_authentication_error() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return Response(403, "Forbidden", Headers(), b"no")

    async with fake_server(lambda peer: asyncio.sleep(0), process_request=refuse) as server:
        with pytest.raises(AuthenticationError) as info:
            await client(server.url).prompt("hi")
    assert info.value.details["status"] == 403
    assert TOKEN not in str(info.value)


async def test_http_500_at_upgrade_is_a_handshake_error() -> None:
    def fail(connection: ServerConnection, request: Request) -> Response:
        return Response(500, "Internal Server Error", Headers(), b"boom")

    async with fake_server(lambda peer: asyncio.sleep(0), process_request=fail) as server:
        with pytest.raises(HandshakeError) as info:
            await client(server.url).prompt("hi")
    assert isinstance(info.value, builtins.ConnectionError)


async def test_unreachable_server_is_a_connection_error() -> None:
    async with fake_server(lambda peer: asyncio.sleep(0)) as server:
        url = server.url
    with pytest.raises(ConnectionError):
        await client(url).prompt("hi")


async def test_bad_url_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        await client("http://127.0.0.1:1/ws").prompt("hi")


async def test_no_ready_is_a_timeout() -> None:
    async def handler(peer: Peer) -> None:
        await asyncio.sleep(ticks(40))

    async with fake_server(handler) as server:
        with pytest.raises(TimeoutError) as info:
            await client(server.url, timeout=ticks(4)).prompt("hi")
    assert isinstance(info.value, builtins.TimeoutError)


async def test_error_frame_during_handshake_is_typed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(
            {
                "type": "error",
                "payload": {
                    "message": "Unauthorized: token expired",
                    "code": "AUTHENTICATION_ERROR",
                    "details": {"reason": "token_expired"},
                },
            }
        )
        await peer.ws.close(1008, "unauthorized")

    async with fake_server(handler) as server:
        with pytest.raises(AuthenticationError) as info:
            await client(server.url).prompt("hi")
    assert info.value.reason == "token_expired"


async def test_server_closing_mid_turn_raises_after_the_messages_that_came() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.assistant("partial")
        await peer.ws.close(1011, "crashed")

    async with fake_server(handler) as server:
        session = client(server.url).create_session()
        await session.send("hi")
        seen = []
        with pytest.raises(ConnectionError) as info:
            async for msg in session.stream():
                seen.append(msg)
        await session.close()
    assert [type(m) for m in seen] == [AssistantMessage]
    assert "1011" in str(info.value)
    assert info.value.details["closeCode"] == 1011


async def test_error_frame_ends_the_turn_with_a_typed_error_message() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(
            {
                "type": "error",
                "payload": {
                    "message": "Budget exceeded",
                    "code": "BUDGET_EXCEEDED",
                    "details": {"reason": "user_budget_exhausted", "limit": 10, "used": 10},
                },
            }
        )
        await peer.recv_type("user")
        await peer.result("second turn works")

    async with fake_server(handler) as server:
        session = client(server.url).create_session()
        await session.send("one")
        messages = [m async for m in session.stream()]
        assert len(messages) == 1
        error = messages[0]
        assert isinstance(error, ErrorMessage)
        assert error.get("type") == "error"
        assert error.get("error", {}).get("message") == "Budget exceeded"
        assert isinstance(error.exception, chucky.BudgetExceededError)
        assert error.exception.details["limit"] == 10
        await session.send("two")
        results = [m async for m in session.stream()]
        await session.close()
    assert results[-1]["result"] == "second turn works"


async def test_prompt_raises_the_typed_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(
            {
                "type": "error",
                "payload": {
                    "message": "Too many turns: rate limit",
                    "code": "RATE_LIMIT",
                    "details": {"reason": "rate_limited", "retryAfter": 7},
                },
            }
        )

    async with fake_server(handler) as server:
        with pytest.raises(chucky.RateLimitError) as info:
            await client(server.url).prompt("hi")
    assert info.value.retry_after == 7
    assert isinstance(info.value, RuntimeError)


async def test_unknown_tool_and_bad_arguments_are_answered_with_errors() -> None:
    @tool("add", "Add two numbers")
    def add(a: int, b: int) -> str:
        return str(a + b)

    answers: dict[str, dict[str, object]] = {}

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(
            {"type": "tool_call", "payload": {"callId": "c1", "toolName": "nope", "input": {}}}
        )
        await peer.send(
            {
                "type": "tool_call",
                "payload": {"callId": "c2", "toolName": "add", "input": {"a": 1, "b": "x"}},
            }
        )
        await peer.send(
            {
                "type": "tool_call",
                "payload": {"callId": "c3", "toolName": "add", "input": {"a": 1, "b": 2}},
            }
        )
        for _ in range(3):
            frame = await peer.recv_type("tool_result")
            answers[frame["payload"]["callId"]] = frame["payload"]["result"]
        await peer.result()

    async with fake_server(handler) as server:
        await client(server.url, tools=[add]).prompt("hi")
    assert answers["c1"]["isError"] is True
    assert "Unknown tool" in json.dumps(answers["c1"])
    assert answers["c2"]["isError"] is True
    assert "b" in json.dumps(answers["c2"]) and "Invalid arguments" in json.dumps(answers["c2"])
    assert answers["c3"] == {"content": [{"type": "text", "text": "3"}], "isError": False}


async def test_a_slow_tool_does_not_hold_up_other_frames() -> None:
    release = asyncio.Event()

    @tool("slow", "A slow tool")
    async def slow() -> str:
        await release.wait()
        return "finally"

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(
            {"type": "tool_call", "payload": {"callId": "c1", "toolName": "slow", "input": {}}}
        )
        await peer.assistant("while the tool runs")
        await peer.send({"type": "ping", "payload": {"timestamp": 1}})  # unusual, but harmless
        frame = await peer.recv_type("tool_result")
        await peer.assistant(frame["payload"]["result"]["content"][0]["text"])
        await peer.result()

    async with fake_server(handler) as server:
        session = client(server.url, tools=[slow]).create_session()
        await session.send("go")
        texts = []
        async for msg in session.stream():
            if isinstance(msg, AssistantMessage):
                texts.append(msg.text)
                release.set()  # only reachable if the reader was not blocked by the handler
        await session.close()
    assert texts == ["while the tool runs", "finally"]


async def test_a_silent_server_is_detected_by_keepalive() -> None:
    """The server stops reading and answering (even WebSocket pings) mid-turn."""

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.assistant("then silence")
        peer.ws.transport.pause_reading()
        await asyncio.sleep(ticks(200))

    interval = ticks(4)
    async with fake_server(handler) as server:
        session = client(server.url, keepalive_interval=interval).create_session()
        await session.send("hi")
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            async for _ in session.stream():
                pass
        elapsed = time.monotonic() - started
        await session.close()
    assert info.value.details.get("reason") == "keepalive_timeout"
    assert elapsed < ticks(200)  # it did not wait for the server to go away by itself


async def test_keepalive_sends_json_pings_and_keeps_a_quiet_turn_alive() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        ping = await peer.recv_type("ping")  # the client's JSON ping during a silent turn
        assert isinstance(ping["payload"]["timestamp"], int)
        await peer.send({"type": "pong", "payload": ping["payload"]})
        await peer.result("survived")

    async with fake_server(handler) as server:
        result = await client(server.url, keepalive_interval=TICK).prompt("hi")
    assert result.result == "survived"


async def test_idle_timeout_is_explicit_and_typed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await asyncio.sleep(ticks(100))

    async with fake_server(handler) as server:
        with pytest.raises(TimeoutError):
            await client(server.url, idle_timeout=ticks(2)).prompt("hi")


async def test_stream_without_a_turn_and_after_close_raise_invalid_state() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.result()
        await asyncio.sleep(ticks(20))

    async with fake_server(handler) as server:
        session = client(server.url).create_session()
        with pytest.raises(InvalidStateError):
            async for _ in session.stream():
                pass
        await session.send("hi")
        assert [m.type async for m in session.stream()] == ["result"]
        with pytest.raises(InvalidStateError, match="no turn in progress"):
            async for _ in session.stream():
                pass
        await session.close()
        await session.close()  # idempotent
        with pytest.raises(InvalidStateError):
            await session.send("again")
