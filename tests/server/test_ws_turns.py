"""Turns over a raw WebSocket: every turn form, the result, streaming, limits.

The rules are docs/protocol.md sections 3 to 5.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from support.raw import (
    Frame,
    check_result,
    collect_turn,
    open_raw,
    open_session,
    recv,
    send,
    turn,
    user_frame,
)
from support.timing import ticks

from chucky.server.config import ServerConfig
from chucky.testing import ScriptedServer, scripted_server

DEFAULT_MODEL = ServerConfig().default_model
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
PDF = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
TOOL_SERVER = {
    "name": "srv",
    "version": "1.0.0",
    "tools": [{"name": "t", "description": "a tool", "inputSchema": {"type": "object"}}],
}


def _of(frames: list[Frame], kind: str, subtype: str | None = None) -> list[Frame]:
    return [
        f
        for f in frames
        if f.get("type") == kind and (subtype is None or f.get("subtype") == subtype)
    ]


# -- turn forms --------------------------------------------------------------------------------


async def test_the_result_says_how_long_the_turn_took(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        started = time.monotonic()
        result = check_result(await turn(ws, f"sleep {ticks(0.05)}; echo done"))
        took_ms = (time.monotonic() - started) * 1000
        # It used to be the server's monotonic clock (hours, days) instead.
        assert ticks(0.05) * 1000 <= result["duration_ms"] <= took_ms + 1
        assert result["duration_api_ms"] <= result["duration_ms"]


async def test_user_turn_with_string_content(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, info):
        frames = await turn(ws, "echo hello world")
        result = check_result(frames)
        assert result["result"] == "hello world"
        assert result["session_id"] == info["sessionId"]
        assert result["num_turns"] == 1
        assert result["total_cost_usd"] > 0  # the scripted model is priced like Sonnet
        assert result["usage"]["input_tokens"] > 0
        assert result["usage"]["output_tokens"] > 0
        assert result["stop_reason"] == "end_turn"
        assert [f["type"] for f in frames] == ["system", "assistant", "result"]
        assistant = frames[1]
        assert assistant["session_id"] == info["sessionId"]
        assert assistant["parent_tool_use_id"] is None
        assert isinstance(assistant["uuid"], str)
        assert assistant["message"]["role"] == "assistant"
        assert assistant["message"]["content"] == [{"type": "text", "text": "hello world"}]


async def test_system_init_starts_every_turn(server: ScriptedServer) -> None:
    async with open_session(server, model="sonnet", permissionMode="acceptEdits") as (ws, info):
        for text in ("echo one", "echo two"):
            frames = await turn(ws, text)
            system = frames[0]
            assert system["type"] == "system"
            assert system["subtype"] == "init"
            assert system["session_id"] == info["sessionId"]
            assert system["tools"] == []
            assert system["mcp_servers"] == []
            assert system["model"] == "sonnet"
            assert system["permissionMode"] == "acceptEdits"
            assert isinstance(system["cwd"], str)
            assert system["cwd"]
            assert isinstance(system["uuid"], str)
            assert len(_of(frames, "system", "init")) == 1
            check_result(frames)


@pytest.mark.parametrize(
    ("blocks", "attachments"),
    [
        pytest.param([{"type": "text", "text": "echo from blocks"}], 0, id="text"),
        pytest.param(
            [
                {"type": "text", "text": "echo "},
                {"type": "text", "text": "from blocks"},
            ],
            0,
            id="two-texts",
        ),
        pytest.param(
            [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "text", "text": "echo from blocks"},
            ],
            1,
            id="image",
        ),
        pytest.param(
            [
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "a.pdf",
                },
                {"type": "text", "text": "echo from blocks"},
            ],
            1,
            id="document",
        ),
    ],
)
async def test_user_turn_with_content_blocks(
    server: ScriptedServer, blocks: list[dict[str, Any]], attachments: int
) -> None:
    async with open_session(server) as (ws, _):
        result = check_result(await turn(ws, blocks))
        assert result["result"] == "from blocks"
        # Each attachment counts 256 input tokens under the scripted rule.
        assert (result["usage"]["input_tokens"] >= 256) is bool(attachments)


async def test_prompt_turn_nested_options(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(
            ws,
            {
                "type": "prompt",
                "payload": {"message": "echo nested", "options": {"model": "nested-model"}},
            },
        )
        frames = await collect_turn(ws)
        assert frames[0]["model"] == "nested-model"
        assert check_result(frames)["result"] == "nested"


async def test_prompt_turn_flat_options(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(
            ws,
            {"type": "prompt", "payload": {"message": "echo flat", "model": "flat-model"}},
        )
        frames = await collect_turn(ws)
        assert frames[0]["model"] == "flat-model"
        assert check_result(frames)["result"] == "flat"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"type": "user", "message": "echo legacy"}, id="user-message-string"),
        pytest.param(
            {"type": "user_message", "message": {"role": "user", "content": "echo legacy"}},
            id="user_message-message-object",
        ),
        pytest.param({"type": "user", "content": "echo legacy"}, id="user-content"),
        pytest.param(
            {"type": "user_message", "content": [{"type": "text", "text": "echo legacy"}]},
            id="user_message-content-blocks",
        ),
    ],
)
async def test_sdk_message_turn(server: ScriptedServer, payload: dict[str, Any]) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, {"type": "sdk_message", "payload": payload})
        assert check_result(await collect_turn(ws))["result"] == "legacy"


@pytest.mark.parametrize(
    ("frame", "model"),
    [
        pytest.param(user_frame("echo implicit"), DEFAULT_MODEL, id="user"),
        pytest.param(
            {"type": "prompt", "payload": {"message": "echo implicit", "options": {"model": "p"}}},
            "p",
            id="prompt",
        ),
        pytest.param(
            {"type": "sdk_message", "payload": {"type": "user", "message": "echo implicit"}},
            DEFAULT_MODEL,
            id="sdk_message",
        ),
    ],
)
async def test_turn_before_init_opens_the_session(
    server: ScriptedServer, frame: Frame, model: str
) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, frame)
        info = await recv(ws)
        assert info["payload"]["action"] == "session_info"
        frames = await collect_turn(ws)
        assert frames[0]["model"] == model
        result = check_result(frames)
        assert result["result"] == "implicit"
        assert result["session_id"] == info["payload"]["data"]["sessionId"]
        # The implicit init was the init: an explicit one now is a second init.
        await send(ws, {"type": "init", "payload": {}})
        error = await recv(ws)
        assert error["payload"]["code"] == "VALIDATION_ERROR"


async def test_sdk_messages_are_bare(server: ScriptedServer) -> None:
    async with open_session(server, includePartialMessages=True) as (ws, _):
        frames = await turn(ws, "echo bare frames")
        kinds = {f["type"] for f in frames}
        assert kinds == {"system", "stream_event", "assistant", "result"}
        assert all("payload" not in f for f in frames)


# -- many turns --------------------------------------------------------------------------------


async def test_many_turns_on_one_socket(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, info):
        for i in range(5):
            result = check_result(await turn(ws, f"echo turn {i}"))
            assert result["result"] == f"turn {i}"
            assert result["session_id"] == info["sessionId"]


async def test_turns_sent_back_to_back_are_queued_in_order(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, user_frame(f"sleep {ticks(2)}; echo one"))
        await send(ws, user_frame("echo two"))
        await send(ws, {"type": "prompt", "payload": {"message": "echo three"}})
        texts = [check_result(await collect_turn(ws))["result"] for _ in range(3)]
        assert texts == ["one", "two", "three"]


async def test_busy_policy_reject() -> None:
    async with scripted_server(busy_policy="reject") as server, open_session(server) as (ws, _):
        await send(ws, user_frame(f"sleep {ticks(6)}; echo first"))
        assert (await recv(ws))["subtype"] == "init"  # the first turn is running
        await send(ws, user_frame("echo second"))
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["payload"]["code"] == "SESSION_ERROR"
        assert error["payload"]["details"]["reason"] == "session_busy"
        frames = await collect_turn(ws)
        assert check_result(frames)["result"] == "first"
        assert not _of(frames, "error")
        # Once the turn is over the session takes turns again.
        assert check_result(await turn(ws, "echo third"))["result"] == "third"


# -- streaming ---------------------------------------------------------------------------------


async def test_partial_messages_stream_raw_events(server: ScriptedServer) -> None:
    async with open_session(server, includePartialMessages=True) as (ws, info):
        frames = await turn(ws, "echo the quick brown fox")
        result = check_result(frames)
        events = [f for f in frames if f["type"] == "stream_event"]
        for frame in events:
            assert frame["session_id"] == info["sessionId"]
            assert frame["parent_tool_use_id"] is None
            assert isinstance(frame["uuid"], str)
        kinds = [f["event"]["type"] for f in events]
        assert kinds[0] == "message_start"
        assert kinds[1] == "content_block_start"
        assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert set(kinds[2:-3]) == {"content_block_delta"}
        deltas = [
            f["event"]["delta"] for f in events if f["event"]["type"] == "content_block_delta"
        ]
        assert all(d["type"] == "text_delta" for d in deltas)
        assert "".join(d["text"] for d in deltas) == result["result"] == "the quick brown fox"
        assert len(deltas) == 4
        start = events[0]["event"]["message"]
        assert start["role"] == "assistant"
        assert type(start["usage"]["input_tokens"]) is int
        # The events come before the assistant message they make up.
        order = [f["type"] for f in frames]
        assert order.index("assistant") > max(i for i, k in enumerate(order) if k == "stream_event")


async def test_no_stream_events_without_partial_messages(server: ScriptedServer) -> None:
    async with open_session(server, includePartialMessages=False) as (ws, _):
        frames = await turn(ws, "stream 50")
        check_result(frames)
        assert not _of(frames, "stream_event")


async def test_stream_3000_deltas_all_arrive(server: ScriptedServer) -> None:
    async with open_session(server, includePartialMessages=True) as (ws, _):
        frames = await turn(ws, "stream 3000")
        result = check_result(frames)
        expected = "".join(f"{i % 100:02d} " for i in range(3000))
        deltas = [
            f["event"]["delta"]["text"]
            for f in frames
            if f["type"] == "stream_event" and f["event"]["type"] == "content_block_delta"
        ]
        assert len(deltas) == 3000
        assert "".join(deltas) == expected == result["result"]


# -- history and per-turn options --------------------------------------------------------------


async def test_recall_returns_the_first_user_message(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        check_result(await turn(ws, "echo the very first"))
        check_result(await turn(ws, "echo something else"))
        assert check_result(await turn(ws, "recall"))["result"] == "echo the very first"


@pytest.mark.parametrize("init_model", [None, "init-model"])
async def test_prompt_options_override_the_model_for_that_turn_only(
    server: ScriptedServer, init_model: str | None
) -> None:
    options = {"model": init_model} if init_model else {}
    session_model = init_model or DEFAULT_MODEL
    async with open_session(server, **options) as (ws, info):
        assert info["model"] == session_model
        assert (await turn(ws, "echo a"))[0]["model"] == session_model
        await send(
            ws, {"type": "prompt", "payload": {"message": "echo b", "options": {"model": "opus"}}}
        )
        frames = await collect_turn(ws)
        assert frames[0]["model"] == "opus"
        assert frames[1]["message"]["model"] == "opus"
        check_result(frames)
        # The override does not stick to the session.
        assert (await turn(ws, "echo c"))[0]["model"] == session_model


async def test_max_turns_ends_the_turn(server: ScriptedServer) -> None:
    async with open_session(server, maxTurns=1, mcpServers=[TOOL_SERVER]) as (ws, _):
        await send(ws, user_frame("call t {}"))
        frames = [await recv(ws) for _ in range(3)]
        assert [f["type"] for f in frames] == ["system", "assistant", "tool_call"]
        call = frames[2]["payload"]
        await send(
            ws,
            {
                "type": "tool_result",
                "payload": {"callId": call["callId"], "result": {"content": []}},
            },
        )
        frames += await collect_turn(ws)
        result = check_result(frames, subtype="error_max_turns")
        assert result["num_turns"] == 1
        assert result["errors"]
        assert result["total_cost_usd"] > 0
        # maxTurns counts model calls per user turn: the next turn runs again.
        assert check_result(await turn(ws, "echo again"))["result"] == "again"


async def test_max_budget_is_a_hard_cap_on_the_session(server: ScriptedServer) -> None:
    # A cap that cannot pay for one call's input and 16 output tokens: no call is made, and
    # nothing is spent (the cap is a promise, like the token's budget).
    async with open_session(server, maxBudgetUsd=0.000001, mcpServers=[TOOL_SERVER]) as (ws, _):
        frames = await turn(ws, "call t {}")
        result = check_result(frames, subtype="error_max_budget_usd")
        assert result["num_turns"] == 0
        assert result["total_cost_usd"] == 0
        assert not _of(frames, "assistant")


async def test_a_huge_budget_cap_is_no_cap(server: ScriptedServer) -> None:
    async with open_session(server, maxBudgetUsd=1e303) as (ws, _):
        assert check_result(await turn(ws, "echo rich"))["result"] == "rich"


async def test_structured_output(server: ScriptedServer) -> None:
    output_format = {
        "type": "json_schema",
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
    }
    async with open_session(server, outputFormat=output_format) as (ws, _):
        result = check_result(await turn(ws, 'json {"a":1}'))
        assert result["structured_output"] == {"a": 1}


async def test_no_structured_output_without_output_format(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        result = check_result(await turn(ws, 'json {"a":1}'))
        assert result["result"] == '{"a":1}'
        assert result.get("structured_output") is None


async def test_status_frames_during_a_long_turn() -> None:
    async with (
        scripted_server(status_interval=ticks(4)) as server,
        open_session(server) as (ws, info),
    ):
        frames = await turn(ws, f"sleep {ticks(12)}; echo done")
        assert check_result(frames)["result"] == "done"
        status = _of(frames, "system", "status")
        assert status
        for frame in status:
            assert frame["session_id"] == info["sessionId"]
            assert isinstance(frame["uuid"], str)
        order = [f.get("subtype") for f in frames]
        assert order[0] == "init"
        assert all(f["type"] == "system" for f in frames[: len(status) + 1])


@pytest.mark.parametrize(
    ("code", "reason"),
    [("overloaded", "provider_unavailable"), ("bad_request", "provider_rejected")],
)
async def test_provider_failure_is_an_error_frame_and_the_session_goes_on(
    server: ScriptedServer, code: str, reason: str
) -> None:
    async with open_session(server) as (ws, _):
        frames = await turn(ws, f"fail {code}")
        assert [f["type"] for f in frames] == ["system", "error"]
        payload = frames[-1]["payload"]
        assert payload["code"] == "PROVIDER_ERROR"
        assert payload["details"]["reason"] == reason
        assert isinstance(payload["message"], str)
        assert check_result(await turn(ws, "echo still here"))["result"] == "still here"


async def test_lone_surrogates_round_trip_as_json_escapes(server: ScriptedServer) -> None:
    # "\ud800" is valid JSON but no valid Unicode (json.dumps writes it as an escape): the
    # frames that carry it back must still be valid UTF-8 text frames.
    async with open_session(server, mcpServers=[TOOL_SERVER]) as (ws, _):
        assert check_result(await turn(ws, "echo a\udc00b"))["result"] == "a\udc00b"
        await send(ws, user_frame("call t {}"))
        frames = [await recv(ws) for _ in range(3)]
        call_id = frames[2]["payload"]["callId"]
        content = [{"type": "text", "text": "x\ud800y"}]
        await send(
            ws,
            {"type": "tool_result", "payload": {"callId": call_id, "result": {"content": content}}},
        )
        frames = await collect_turn(ws)
        assert frames[0]["message"]["content"][0]["content"] == content
        assert check_result(frames)["result"] == "tool t returned: x\ud800y"
