"""Bad input over a raw WebSocket: rejected frames, the invalid-frame limit.

The rules are docs/protocol.md sections 3 and 8.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.raw import (
    check_result,
    closed_code,
    init,
    open_raw,
    open_session,
    recv,
    send,
    turn,
    user_frame,
)

from chucky.testing import ScriptedServer, scripted_server

BAD_FRAMES: list[Any] = [
    pytest.param("{not json", "invalid_frame", id="invalid-json"),
    pytest.param("", "invalid_frame", id="empty"),
    pytest.param([{"type": "user"}], "invalid_frame", id="json-array"),
    pytest.param("42", "invalid_frame", id="json-number"),
    pytest.param({"no": "type"}, "invalid_frame", id="no-type"),
    pytest.param({"type": "nope"}, "invalid_frame", id="unknown-type"),
    pytest.param({"type": 7}, "invalid_frame", id="type-not-a-string"),
    pytest.param(user_frame(5), "invalid_frame", id="user-content-5"),  # type: ignore[arg-type]
    pytest.param({"type": "user", "message": {}}, "invalid_frame", id="user-no-content"),
    pytest.param({"type": "prompt", "payload": {}}, "invalid_frame", id="prompt-no-message"),
    pytest.param(
        {"type": "sdk_message", "payload": {"type": "user"}}, "invalid_frame", id="sdk-empty"
    ),
    pytest.param(
        {"type": "tool_result", "payload": {"callId": "x"}}, "invalid_frame", id="tool-result"
    ),
    pytest.param(
        {"type": "control", "payload": {"action": "explode"}}, "invalid_frame", id="control"
    ),
    pytest.param(
        {"type": "prompt", "payload": {"message": "echo x", "options": {"maxTurns": "x"}}},
        "invalid_options",
        id="prompt-bad-options",
    ),
]


async def _check_error(ws: Any, reason: str) -> dict[str, Any]:
    frame = await recv(ws)
    assert frame["type"] == "error", frame
    payload = frame["payload"]
    assert payload["code"] == "VALIDATION_ERROR"
    assert payload["details"]["reason"] == reason
    assert "nvalid" in payload["message"]  # T's classifier looks for "invalid"
    assert isinstance(payload, dict)
    return payload


@pytest.mark.parametrize(("frame", "reason"), BAD_FRAMES)
async def test_bad_frame_after_init_is_rejected_and_the_session_goes_on(
    server: ScriptedServer, frame: Any, reason: str
) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, frame)
        await _check_error(ws, reason)
        assert check_result(await turn(ws, "echo still fine"))["result"] == "still fine"


@pytest.mark.parametrize(("frame", "reason"), BAD_FRAMES)
async def test_bad_frame_before_init_is_rejected_and_init_still_works(
    server: ScriptedServer, frame: Any, reason: str
) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, frame)
        await _check_error(ws, reason)
        await send(ws, {"type": "init", "payload": {"model": "after-error"}})
        info = await recv(ws)
        assert info["payload"]["data"]["model"] == "after-error"
        assert check_result(await turn(ws, "echo fine"))["result"] == "fine"


async def test_binary_frames_are_read_as_utf8_json(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await ws.send(json.dumps(user_frame("echo binary")).encode())
        frames = [await recv(ws) for _ in range(3)]
        assert check_result(frames)["result"] == "binary"
        await ws.send(b"\xff\xfe garbage")
        await _check_error(ws, "invalid_frame")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"maxTurns": "x"}, "invalid_options"),
        ({"maxTurns": 0}, "invalid_options"),
        ({"maxBudgetUsd": -1}, "invalid_options"),
        ({"mcpServers": "nope"}, "invalid_options"),
        ({"includePartialMessages": "maybe"}, "invalid_options"),
    ],
)
async def test_bad_init_is_rejected_and_the_session_goes_on(
    server: ScriptedServer, options: dict[str, Any], reason: str
) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": options})
        await _check_error(ws, reason)
        # The session is opened by the next good init, or implicitly by a turn.
        await send(ws, user_frame("echo recovered"))
        assert (await recv(ws))["payload"]["action"] == "session_info"
        frames = [await recv(ws) for _ in range(3)]
        assert check_result(frames)["result"] == "recovered"


async def test_unknown_init_keys_and_nulls_are_ignored(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        info = await init(ws, model=None, futureOption={"x": 1}, maxTurns=None, agents=None)
        assert info["model"]
        assert check_result(await turn(ws, "echo tolerant"))["result"] == "tolerant"


async def test_second_init_is_rejected(server: ScriptedServer) -> None:
    async with open_session(server, model="first") as (ws, info):
        await send(ws, {"type": "init", "payload": {"model": "second"}})
        await _check_error(ws, "invalid_frame")
        frames = await turn(ws, "echo kept")
        assert frames[0]["model"] == "first"
        assert frames[0]["session_id"] == info["sessionId"]
        check_result(frames)


async def test_bad_frames_during_a_turn_do_not_disturb_it(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, user_frame("stream 200"))
        await send(ws, "garbage")
        await send(ws, {"type": "nope"})
        frames = []
        while not frames or frames[-1]["type"] != "result":
            frames.append(await recv(ws))
        errors = [f for f in frames if f["type"] == "error"]
        assert len(errors) == 2
        check_result([f for f in frames if f["type"] != "error"])


async def test_too_many_invalid_frames_close_the_connection() -> None:
    async with scripted_server(max_invalid_frames=3) as server, open_session(server) as (ws, _):
        for _ in range(3):
            await send(ws, "garbage")
            await _check_error(ws, "invalid_frame")
        # One good frame in between does not reset the count.
        assert check_result(await turn(ws, "echo ok"))["result"] == "ok"
        await send(ws, {"type": "nope"})
        payload = await _check_error(ws, "invalid_frame")
        assert "too many invalid frames" in payload["message"]
        assert await closed_code(ws) == 1008


@pytest.mark.parametrize("key", ["sessionId", "resumeSessionAt"])
async def test_errors_about_huge_ids_stay_small(server: ScriptedServer, key: str) -> None:
    async with open_session(server) as (ws, info):
        session_id = info["sessionId"]
    options = {"sessionId": session_id, key: "h" * 2_000_000}
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": options})
        text = await ws.recv()
        assert isinstance(text, str)
        assert len(text.encode()) < 4096
        error = json.loads(text)
        assert error["payload"]["code"] in ("SESSION_ERROR", "VALIDATION_ERROR")
        assert await closed_code(ws) == 1008
