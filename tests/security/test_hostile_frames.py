"""Issue 11, findings 2 and 3: hostile frames get a clear typed answer, a proper close, and
nothing internal (a path, a database URL, a traceback) in a frame or an ERROR log record."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chucky.protocol.frames import MAX_CLOSE_REASON_BYTES, close_reason
from chucky.server.store import StoreError
from chucky.testing import ScriptedServer


async def _frames_until_close(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    try:
        async for text in ws:
            frames.append(json.loads(text))
    except ConnectionClosed:
        pass
    return frames


def _errors(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["payload"] for f in frames if f["type"] == "error"]


def _no_error_records(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]


@pytest.mark.parametrize(
    "text",
    ["é" * 100, "€" * 60, "😀" * 40, "a" * 122 + "é", "x" * 200, "\udc00" * 3 + "é" * 80],
)
def test_a_close_reason_is_cut_by_utf8_bytes_on_a_character_boundary(text: str) -> None:
    reason = close_reason(text)
    encoded = reason.encode("utf-8")  # valid UTF-8: no lone surrogate left
    assert len(encoded) <= MAX_CLOSE_REASON_BYTES
    assert text.encode("utf-8", "replace").startswith(encoded)


async def test_a_long_non_ascii_session_id_closes_with_1008_and_logs_no_error(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "init", "payload": {"sessionId": "é" * 100}}))
        frames = await _frames_until_close(ws)
    assert [e["code"] for e in _errors(frames)] == ["SESSION_ERROR"]
    assert ws.close_code == 1008
    assert ws.close_reason and len(ws.close_reason.encode()) <= MAX_CLOSE_REASON_BYTES
    _no_error_records(caplog)


async def test_a_flood_of_invalid_non_ascii_frames_closes_with_1008(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        for _ in range(11):  # the server's default tolerates 10
            await ws.send(json.dumps({"type": "ééééééééééé" * 20}))
        frames = await _frames_until_close(ws)
    assert len(_errors(frames)) == 11
    assert {e["code"] for e in _errors(frames)} == {"VALIDATION_ERROR"}
    assert ws.close_code == 1008
    assert ws.close_reason and len(ws.close_reason.encode()) <= MAX_CLOSE_REASON_BYTES
    _no_error_records(caplog)


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "a\udc00b"},
        {"sessionId": "\ud800"},
        {"systemPrompt": "ok \udfff"},
        {"tools": [{"name": "t\ud800", "description": "d", "inputSchema": {}}]},
    ],
)
async def test_a_lone_surrogate_in_init_is_a_validation_error(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, payload: dict[str, Any]
) -> None:
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "init", "payload": payload}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["payload"]["code"] == "VALIDATION_ERROR"
        assert "surrogate" in error["payload"]["message"]
        assert "sqlite" not in json.dumps(error) and "/" not in error["payload"]["message"]
        # The socket goes on: a valid init opens the session.
        await ws.send(json.dumps({"type": "init", "payload": {}}))
        info = json.loads(await ws.recv())
        assert info["payload"]["action"] == "session_info"
    _no_error_records(caplog)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "prompt", "payload": {"message": "echo hi", "model": "m\udc00"}},
        {"type": "prompt", "payload": {"message": "echo hi", "options": {"model": "\ud800"}}},
        {"type": "tool_result", "payload": {"callId": "\ud800", "result": {"content": []}}},
        {"type": "sdk_message", "payload": {"type": "user", "content": "hi", "x\ud800": 1}},
    ],
)
async def test_a_lone_surrogate_in_a_turn_option_or_id_is_refused_and_the_session_goes_on(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, frame: dict[str, Any]
) -> None:
    # Content may hold one (it round-trips as a JSON escape: tests/server/test_ws_turns.py).
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "init", "payload": {}}))
        await ws.recv()  # session_info
        await ws.send(json.dumps(frame))
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["payload"]["code"] == "VALIDATION_ERROR"
        assert "surrogate" in error["payload"]["message"]
        good = {"type": "user", "message": {"role": "user", "content": "echo hi"}}
        await ws.send(json.dumps(good))
        while (answer := json.loads(await ws.recv()))["type"] != "result":
            pass
        assert answer["result"] == "hi"
    _no_error_records(caplog)


async def test_a_store_failure_at_init_discloses_no_url_or_path(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = server.server.store
    secret_url = "sqlite+aiosqlite:////srv/secret/chucky.db"

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError(f"Database {secret_url} failed: UnicodeEncodeError at /srv/secret")

    monkeypatch.setattr(store, "create_session", broken)
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "init", "payload": {}}))
        frames = await _frames_until_close(ws)
    errors = _errors(frames)
    assert [e["code"] for e in errors] == ["INTERNAL_ERROR"]
    sent = json.dumps(frames) + (ws.close_reason or "")
    assert "secret" not in sent and "sqlite" not in sent
    # The operator still learns what failed.
    assert any(secret_url in (r.exc_text or "") + r.getMessage() for r in caplog.records) or any(
        r.exc_info and secret_url in str(r.exc_info[1]) for r in caplog.records
    )


def _tool_server(count: int, name_length: int = 60) -> dict[str, Any]:
    tools = [
        {"name": f"t{i:05d}".ljust(name_length, "x"), "inputSchema": {"type": "object"}}
        for i in range(count)
    ]
    return {"name": "s", "tools": tools}


async def test_an_init_whose_frames_would_pass_the_frame_limit_is_refused(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with connect(f"{server.url}?token={server.token()}", max_size=None) as ws:
        await ws.recv()  # ready
        init = {"type": "init", "payload": {"mcpServers": [_tool_server(20_000)]}}
        await ws.send(json.dumps(init))
        async with asyncio.timeout(30):
            first = json.loads(await ws.recv())
            assert first["type"] == "error", first["type"]
            frames = [first, *await _frames_until_close(ws)]
    errors = _errors(frames)
    assert [e["code"] for e in errors] == ["VALIDATION_ERROR"]
    assert errors[0]["details"] == {"reason": "invalid_options", "limit": 1024 * 1024}
    assert "1,048,576" in errors[0]["message"]
    assert all(len(json.dumps(f)) < 1024 * 1024 for f in frames)
    _no_error_records(caplog)


async def test_many_tools_within_the_limit_still_open_and_run(server: ScriptedServer) -> None:
    async with connect(f"{server.url}?token={server.token()}", max_size=None) as ws:
        await ws.recv()  # ready
        init = {"type": "init", "payload": {"mcpServers": [_tool_server(5_000, 20)]}}
        await ws.send(json.dumps(init))
        info = json.loads(await ws.recv())
        assert info["payload"]["action"] == "session_info"
        assert len(info["payload"]["data"]["tools"]) == 5_000
        await ws.send(
            json.dumps({"type": "user", "message": {"role": "user", "content": "echo k"}})
        )
        while (frame := json.loads(await ws.recv()))["type"] != "result":
            assert len(json.dumps(frame)) < 1024 * 1024
        assert frame["result"] == "k"
