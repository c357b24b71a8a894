"""Client-side tools over a raw WebSocket (docs/protocol.md sections 5 and 6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.raw import (
    Frame,
    assert_no_frame,
    check_result,
    closed_code,
    collect_turn,
    open_raw,
    open_session,
    recv,
    send,
    turn,
    user_frame,
)
from support.timing import ticks
from websockets.asyncio.client import ClientConnection

from chucky.protocol.frames import MAX_SERVER_FRAME_BYTES
from chucky.testing import ScriptedServer, scripted_server

SCHEMA = {"type": "object", "properties": {"tz": {"type": "string"}}}


def _server(name: str, *tools: str, **schema_extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "tools": [
            {
                "name": tool,
                "description": f"the {tool} tool",
                "inputSchema": {**SCHEMA, **schema_extra},
            }
            for tool in tools
        ],
    }


def _tool_result(call_id: str, text: str, **result: Any) -> Frame:
    return {
        "type": "tool_result",
        "payload": {
            "callId": call_id,
            "result": {"content": [{"type": "text", "text": text}], **result},
        },
    }


async def _until(ws: ClientConnection, kind: str) -> list[Frame]:
    """Frames up to and including the first of type ``kind``."""
    frames = []
    while True:
        frames.append(await recv(ws))
        if frames[-1]["type"] == kind:
            return frames
        assert frames[-1]["type"] not in ("result", "error"), frames


async def test_tool_call_round_trip(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[_server("clock", "get_time")]) as (ws, info):
        assert info["tools"] == ["mcp__clock__get_time"]
        await send(ws, user_frame('call get_time {"tz": "UTC"}'))
        frames = await _until(ws, "tool_call")
        assert [f["type"] for f in frames] == ["system", "assistant", "tool_call"]
        system, assistant, call_frame = frames
        assert system["tools"] == ["mcp__clock__get_time"]
        assert system["mcp_servers"] == [{"name": "clock", "status": "connected"}]
        [tool_use] = assistant["message"]["content"]
        assert tool_use["type"] == "tool_use"
        assert tool_use["name"] == "mcp__clock__get_time"
        call = call_frame["payload"]
        assert call["toolName"] == "get_time"  # the bare name
        assert isinstance(call["callId"], str)
        assert call["callId"]
        assert call["input"] == {"tz": "UTC"}
        await send(ws, _tool_result(call["callId"], "12:00"))
        frames = await collect_turn(ws)
        assert [f["type"] for f in frames] == ["user", "assistant", "result"]
        echo = frames[0]
        assert echo["session_id"] == info["sessionId"]
        assert echo["parent_tool_use_id"] is None
        assert echo["message"]["role"] == "user"
        [block] = echo["message"]["content"]
        assert block["type"] == "tool_result"
        assert block["tool_use_id"] == tool_use["id"]
        assert block["content"] == [{"type": "text", "text": "12:00"}]
        assert block["is_error"] is False
        result = check_result(frames)
        assert result["result"] == "tool get_time returned: 12:00"
        assert result["num_turns"] == 2


async def test_name_keyed_mcp_servers_and_null_required(server: ScriptedServer) -> None:
    servers = {
        "kv": {"version": "1", "tools": _server("ignored", "lookup", required=None)["tools"]}
    }
    async with open_session(server, mcpServers=servers) as (ws, info):
        assert info["tools"] == ["mcp__kv__lookup"]
        await send(ws, user_frame("call lookup {}"))
        call = (await _until(ws, "tool_call"))[-1]["payload"]
        assert call["toolName"] == "lookup"
        await send(ws, _tool_result(call["callId"], "found"))
        assert check_result(await collect_turn(ws))["result"] == "tool lookup returned: found"


async def test_legacy_tool_objects_in_tools(server: ScriptedServer) -> None:
    legacy = [{"name": "legacy", "description": "old style", "inputSchema": SCHEMA}]
    async with open_session(server, tools=legacy) as (ws, info):
        assert info["tools"] == ["mcp__inline-tools__legacy"]
        await send(ws, user_frame("call legacy {}"))
        frames = await _until(ws, "tool_call")
        assert frames[0]["tools"] == ["mcp__inline-tools__legacy"]
        call = frames[-1]["payload"]
        assert call["toolName"] == "legacy"
        await send(ws, _tool_result(call["callId"], "done"))
        assert check_result(await collect_turn(ws))["result"] == "tool legacy returned: done"


@pytest.mark.parametrize("is_error", [None, False, True])
async def test_is_error_absent_false_or_true(server: ScriptedServer, is_error: bool | None) -> None:
    async with open_session(server, mcpServers=[_server("s", "t")]) as (ws, _):
        await send(ws, user_frame("call t {}"))
        call = (await _until(ws, "tool_call"))[-1]["payload"]
        extra = {} if is_error is None else {"isError": is_error}
        await send(ws, _tool_result(call["callId"], "outcome", **extra))
        frames = await collect_turn(ws)
        [block] = frames[0]["message"]["content"]
        assert block["is_error"] is bool(is_error)
        assert check_result(frames)["result"] == "tool t returned: outcome"


async def test_parallel_calls_answered_in_reverse_order(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[_server("s", "first", "second")]) as (ws, _):
        await send(ws, user_frame('call first {"n": 1}; call second {"n": 2}'))
        frames = await _until(ws, "tool_call")
        frames.append(await recv(ws))  # the second call follows at once
        assert [f["type"] for f in frames] == ["system", "assistant", "tool_call", "tool_call"]
        calls = [f["payload"] for f in frames[2:]]
        assert [c["toolName"] for c in calls] == ["first", "second"]
        assert [c["input"] for c in calls] == [{"n": 1}, {"n": 2}]
        assert calls[0]["callId"] != calls[1]["callId"]
        await send(ws, _tool_result(calls[1]["callId"], "B"))
        await send(ws, _tool_result(calls[0]["callId"], "A"))
        frames = await collect_turn(ws)
        echo = frames[0]["message"]["content"]
        assert [b["content"][0]["text"] for b in echo] == ["A", "B"]
        result = check_result(frames)
        assert result["result"] == "tool first returned: A; tool second returned: B"


async def test_unknown_call_id_is_rejected_and_the_call_still_waits(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[_server("s", "t")]) as (ws, _):
        await send(ws, user_frame("call t {}"))
        call = (await _until(ws, "tool_call"))[-1]["payload"]
        await send(ws, _tool_result("no-such-call", "stray"))
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["payload"]["code"] == "VALIDATION_ERROR"
        assert error["payload"]["details"]["reason"] == "invalid_frame"
        await send(ws, _tool_result(call["callId"], "real"))
        assert check_result(await collect_turn(ws))["result"] == "tool t returned: real"
        # Answering it again is dropped quietly (docs/protocol.md section 10: a resumed client
        # may answer a call twice), while a callId never sent stays an error.
        await send(ws, _tool_result(call["callId"], "again"))
        await assert_no_frame(ws)
        await send(ws, _tool_result("no-such-call", "stray"))
        assert (await recv(ws))["payload"]["code"] == "VALIDATION_ERROR"


async def test_unanswered_call_times_out_and_the_turn_ends() -> None:
    async with (
        scripted_server(tool_timeout=ticks(6)) as server,
        open_session(server, mcpServers=[_server("s", "slow")]) as (ws, _),
    ):
        await send(ws, user_frame("call slow {}"))
        call = (await _until(ws, "tool_call"))[-1]["payload"]
        frames = await collect_turn(ws, timeout=ticks(30))
        [block] = frames[0]["message"]["content"]
        assert block["is_error"] is True
        result = check_result(frames)
        assert result["result"].startswith("tool slow returned: ")
        assert "timed out" in result["result"]
        # A late answer is for a call the server gave up on: dropped quietly, and the socket
        # goes on.
        await send(ws, _tool_result(call["callId"], "late"))
        await assert_no_frame(ws)
        assert check_result(await turn(ws, "echo on"))["result"] == "on"


async def test_a_tool_not_offered_is_answered_by_the_server(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[_server("s", "real")]) as (ws, _):
        await send(ws, user_frame("call imaginary {}"))
        frames = await collect_turn(ws)
        assert "tool_call" not in [f["type"] for f in frames]
        assert [f["type"] for f in frames] == ["system", "assistant", "user", "assistant", "result"]
        [block] = frames[2]["message"]["content"]
        assert block["is_error"] is True
        result = check_result(frames)
        assert result["result"].startswith("tool imaginary returned: Unknown tool: imaginary")


@pytest.mark.parametrize(
    ("allowed", "disallowed", "offered"),
    [
        (None, None, ["mcp__s__a", "mcp__s__b", "mcp__s__c"]),
        (["*"], None, ["mcp__s__a", "mcp__s__b", "mcp__s__c"]),
        (["mcp__s__a", "mcp__s__b"], None, ["mcp__s__a", "mcp__s__b"]),
        (["mcp__s__a", "mcp__s__b"], ["mcp__s__b"], ["mcp__s__a"]),
        (None, ["mcp__s__c"], ["mcp__s__a", "mcp__s__b"]),
        (None, ["mcp__s"], []),
    ],
)
async def test_allowed_and_disallowed_tools(
    server: ScriptedServer,
    allowed: list[str] | None,
    disallowed: list[str] | None,
    offered: list[str],
) -> None:
    options: dict[str, Any] = {"mcpServers": [_server("s", "a", "b", "c")]}
    if allowed is not None:
        options["allowedTools"] = allowed
    if disallowed is not None:
        options["disallowedTools"] = disallowed
    async with open_session(server, **options) as (ws, info):
        assert info["tools"] == offered
        await send(ws, user_frame("call c {}"))
        frames = await _until(ws, "tool_call" if "mcp__s__c" in offered else "result")
        assert frames[0]["tools"] == offered


async def test_two_tools_with_the_same_bare_name_are_fatal(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        options = {"mcpServers": [_server("one", "dup"), _server("two", "dup")]}
        await send(ws, {"type": "init", "payload": options})
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["payload"]["code"] == "VALIDATION_ERROR"
        assert error["payload"]["details"]["reason"] == "invalid_options"
        assert "dup" in error["payload"]["message"]
        assert await closed_code(ws) == 1008


async def _big_result_turn(server: ScriptedServer, content: list[list[dict[str, Any]]]) -> None:
    """Answer one call per entry of ``content`` with those items; check every frame's size."""
    tools = [f"t{i}" for i in range(len(content))]
    script = "; ".join(f"call {tool} {{}}" for tool in tools)
    async with open_raw(server, max_size=None) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": {"mcpServers": [_server("s", *tools)]}})
        await send(ws, user_frame(script))
        sizes: list[tuple[str, int]] = []
        frames: list[Frame] = []
        calls: list[Frame] = []
        while True:
            async with asyncio.timeout(ticks(40)):
                text = await ws.recv()
            assert isinstance(text, str)
            frame = json.loads(text)
            sizes.append((frame["type"], len(text.encode())))
            frames.append(frame)
            if frame["type"] == "tool_call":
                calls.append(frame["payload"])
                if len(calls) == len(content):
                    for call, items in zip(calls, content, strict=True):
                        result = {"callId": call["callId"], "result": {"content": items}}
                        await send(ws, {"type": "tool_result", "payload": result})
            if frame["type"] in ("result", "error"):
                break
        assert all(size < MAX_SERVER_FRAME_BYTES for _, size in sizes), sizes
        result = check_result(frames)
        echo = next(f for f in frames if f["type"] == "user")
        texts = [item["text"] for block in echo["message"]["content"] for item in block["content"]]
        # The echo is cut with a marker (text) or leaves an attachment out (image).
        assert any("[truncated: " in text or "omitted from echo]" in text for text in texts)
        assert result["result"].startswith(f"tool {tools[0]} returned: ")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param([[{"type": "text", "text": "x" * 1_500_000}]], id="ascii"),
        pytest.param([[{"type": "text", "text": "é€😀" * 200_000}]], id="multibyte"),
        pytest.param([[{"type": "text", "text": '"\\' * 750_000}]], id="escaped-quotes"),
        pytest.param([[{"type": "text", "text": "\x01" * 400_000}]], id="control-chars"),
        pytest.param(
            [[{"type": "text", "text": "y" * 500_000} for _ in range(3)]], id="several-items"
        ),
        pytest.param(
            [[{"type": "text", "text": "z" * 800_000}], [{"type": "text", "text": "w" * 800_000}]],
            id="several-calls",
        ),
        pytest.param(
            [
                [
                    {"type": "text", "text": "a" * 700_000},
                    {"type": "image", "data": "QUJD" * 150_000, "mimeType": "image/png"},
                ]
            ],
            id="text-and-image",
        ),
    ],
)
async def test_oversized_tool_results_keep_frames_under_1MiB(
    server: ScriptedServer, content: list[list[dict[str, Any]]]
) -> None:
    await _big_result_turn(server, content)
