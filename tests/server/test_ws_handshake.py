"""Connection, authentication and handshake over a raw WebSocket (docs/protocol.md 1, 2, 7, 9)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any

import pytest
from support.raw import (
    assert_no_frame,
    closed_code,
    collect_turn,
    http_get,
    init,
    open_raw,
    recv,
    send,
    turn,
    user_frame,
)
from websockets.exceptions import ConnectionClosed

import chucky
from chucky.testing import ScriptedServer, scripted_server
from chucky.tokens import create_budget, create_token

READY = {"type": "control", "payload": {"action": "ready"}}
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def _b64(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(server: ScriptedServer, **kwargs: Any) -> str:
    budget = create_budget(1.0, 1.0, "day")
    return create_token(
        "u", kwargs.pop("project", server.project_id), server.secret, budget, **kwargs
    )


def _alg_none(server: ScriptedServer) -> str:
    payload = create_token("u", server.project_id, server.secret, create_budget(1.0, 1.0))
    claims = payload.split(".")[1]
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{claims}."


def _wrong_signature(server: ScriptedServer) -> str:
    other = "hk_live_" + "0" * 32
    return create_token("u", server.project_id, other, create_budget(1.0, 1.0))


# -- ready and init ----------------------------------------------------------------------------


async def test_ready_is_the_first_frame_and_comes_before_init(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        # P waits for ready before it sends anything.
        assert await recv(ws) == READY
        await send(ws, {"type": "init", "payload": {}})
        info = await recv(ws)
        assert info["type"] == "control"
        assert info["payload"]["action"] == "session_info"
        data = info["payload"]["data"]
        assert isinstance(data["sessionId"], str)
        assert data["sessionId"]
        assert isinstance(data["model"], str)
        assert data["model"]
        assert data["tools"] == []
        assert type(data["messageCount"]) is int
        assert data["messageCount"] == 0
        for key in ("createdAt", "lastActivityAt"):
            time.strptime(data[key], ISO_UTC)  # raises if not ISO 8601 UTC
        frames = await turn(ws, "echo hi")
        assert frames[-1]["type"] == "result"
        assert frames[-1]["session_id"] == data["sessionId"]


async def test_t_dialect_sends_init_and_a_turn_before_reading(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        # T sends init and its first turn at once; nothing may be dropped.
        await send(ws, {"type": "init", "payload": {"model": "t-model"}})
        await send(ws, user_frame("echo first", uuid="c0ffee", session_id="invented-by-t"))
        assert await recv(ws) == READY
        info = await recv(ws)
        assert info["payload"]["action"] == "session_info"
        assert info["payload"]["data"]["model"] == "t-model"
        frames = await collect_turn(ws)
        assert frames[0]["type"] == "system"
        assert frames[-1]["type"] == "result"
        assert frames[-1]["result"] == "first"
        # The client's invented session id is ignored.
        assert frames[-1]["session_id"] == info["payload"]["data"]["sessionId"]


async def test_ready_is_never_repeated(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        await init(ws)
        seen: list[dict[str, Any]] = []
        for text in ("echo one", "echo two", "echo three"):
            seen += await turn(ws, text)
        await send(ws, {"type": "ping", "payload": {"timestamp": 1}})
        seen.append(await recv(ws))
        assert all(f.get("type") != "control" for f in seen), seen
        await assert_no_frame(ws)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"type": "prompt"}, id="type-prompt"),
        pytest.param({"vessel": "x"}, id="vessel"),
        pytest.param({"utm_source": "z", "empty": ""}, id="unknown"),
        pytest.param({"pad": "p" * 20_000}, id="url-over-16KiB"),
    ],
)
async def test_query_params_are_accepted(server: ScriptedServer, query: dict[str, str]) -> None:
    async with open_raw(server, query=query) as ws:
        await init(ws)
        frames = await turn(ws, "echo ok")
        assert frames[-1]["result"] == "ok"


async def test_token_in_the_bearer_header_only(server: ScriptedServer) -> None:
    async with open_raw(server, bearer=True) as ws:
        assert ws.request is not None
        assert "token=" not in ws.request.path
        await init(ws)
        frames = await turn(ws, "echo bearer")
        assert frames[-1]["result"] == "bearer"


async def test_any_origin_is_accepted(server: ScriptedServer) -> None:
    async with open_raw(server, headers={"Origin": "https://app.example.com"}) as ws:
        await init(ws)
        assert (await turn(ws, "echo browser"))[-1]["result"] == "browser"


# -- authentication failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        pytest.param(lambda s: "", "invalid_token", id="no-token"),
        pytest.param(lambda s: "garbage", "invalid_token", id="garbage"),
        pytest.param(lambda s: "a.b.c", "invalid_token", id="three-garbage-segments"),
        pytest.param(
            lambda s: _token(s, now=time.time() - 7200, expires_in=3600),
            "token_expired",
            id="expired",
        ),
        pytest.param(_wrong_signature, "invalid_token", id="wrong-signature"),
        # Answered as a wrong signature: the server never says whether a project exists.
        pytest.param(lambda s: _token(s, project="nope"), "invalid_token", id="unknown-project"),
        pytest.param(_alg_none, "invalid_token", id="alg-none"),
    ],
)
@pytest.mark.parametrize("bearer", [False, True], ids=["query", "bearer"])
async def test_authentication_failure(
    server: ScriptedServer, make_token: Any, reason: str, bearer: bool
) -> None:
    token = make_token(server)
    async with open_raw(server, token=token, bearer=bearer) as ws:
        frame = await recv(ws)  # nothing before the verdict: the error is the first frame
        assert frame["type"] == "error"
        payload = frame["payload"]
        assert payload["code"] == "AUTHENTICATION_ERROR"
        assert payload["details"]["reason"] == reason
        assert "nauthorized" in payload["message"] or "expired" in payload["message"].lower()
        assert await closed_code(ws) == 1008


async def test_authentication_failure_ignores_frames_sent_early(server: ScriptedServer) -> None:
    async with open_raw(server, token="garbage") as ws:
        # The verdict may already be on its way: a send may find the socket closing.
        with contextlib.suppress(ConnectionClosed):
            await send(ws, {"type": "init", "payload": {}})
            await send(ws, user_frame("echo never"))
        frame = await recv(ws)
        assert frame["payload"]["code"] == "AUTHENTICATION_ERROR"
        assert await closed_code(ws) == 1008


async def test_every_secret_of_a_rotated_project_is_accepted() -> None:
    # Key rotation: a project with two secrets accepts tokens signed by either. (A project of
    # the database: a configured one is rotated by configuring both secrets.)
    old, new = "hk_live_" + "1" * 32, "hk_live_" + "2" * 32
    async with scripted_server() as server:
        store = server.server.store
        await store.create_project("rotated", new, 0.0, project_id="rotated")
        await store.add_secret("rotated", old, 0.0)
        for secret in (old, new):
            token = create_token("u", "rotated", secret, create_budget(1.0, 1.0))
            async with open_raw(server, token=token) as ws:
                await init(ws)
                assert (await turn(ws, "echo rotated"))[-1]["result"] == "rotated"


# -- HTTP --------------------------------------------------------------------------------------


async def test_healthz(server: ScriptedServer) -> None:
    status, headers, body = await http_get(server, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "version": chucky.__version__}


@pytest.mark.parametrize("path", ["/", "/nope", "/healthz/extra", "/wss"])
async def test_unknown_paths_are_404(server: ScriptedServer, path: str) -> None:
    status, _, body = await http_get(server, path)
    assert status == 404
    assert "error" in json.loads(body)


async def test_ws_without_upgrade_is_426(server: ScriptedServer) -> None:
    status, _, body = await http_get(server, "/ws?token=" + server.token())
    assert status == 426
    assert "error" in json.loads(body)
