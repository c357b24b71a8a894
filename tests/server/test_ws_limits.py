"""Concurrency and rate limits (issue 3, section 4) over real sockets."""

from __future__ import annotations

import pytest
from support.raw import (
    Frame,
    check_result,
    closed_code,
    init,
    open_raw,
    open_session,
    recv,
    send,
    turn,
)

from chucky.testing import ScriptedServer, scripted_server


async def _refused_init(server: ScriptedServer, user: str) -> dict[str, object]:
    async with open_raw(server, user=user) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": {}})
        error: Frame = await recv(ws)
        assert error["type"] == "error", error
        assert await closed_code(ws) == 1008
        payload = error["payload"]
        assert isinstance(payload, dict)
        return payload


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_live_sessions_per_user_are_limited_and_released_at_once(
    engine: str, request: pytest.FixtureRequest
) -> None:
    database_url = None if engine == "sqlite" else request.getfixturevalue("postgres_database")
    async with scripted_server(max_sessions_per_user=2, database_url=database_url) as server:
        async with open_session(server, user="ann"), open_session(server, user="ann"):
            error = await _refused_init(server, "ann")
            assert error["code"] == "CONCURRENCY_LIMIT"
            assert "concurrency limit" in str(error["message"]).lower()
            assert error["details"] == {
                "reason": "concurrent_limit_reached",
                "scope": "user",
                "limit": 2,
                "active": 2,
            }
            # Another user is not affected.
            async with open_session(server, user="bob") as (ws, _):
                check_result(await turn(ws, "echo hi"))
        # Both closed: the slots came back at once.
        async with open_session(server, user="ann"), open_session(server, user="ann"):
            pass


async def test_live_sessions_per_project_are_limited() -> None:
    async with (
        scripted_server(max_sessions_per_project=2) as server,
        open_session(server, user="a"),
        open_session(server, user="b"),
    ):
        error = await _refused_init(server, "c")
        assert error["code"] == "CONCURRENCY_LIMIT"
        assert error["details"]["scope"] == "project"  # type: ignore[index]


async def test_a_dropped_socket_releases_its_slot() -> None:
    async with scripted_server(max_sessions_per_user=1) as server:
        async with open_raw(server, user="drop") as ws:
            await init(ws)
            ws.transport.abort()  # no close handshake: the server sees the TCP connection go
        async with open_session(server, user="drop") as (ws, _):
            check_result(await turn(ws, "echo back"))


async def test_turns_per_minute_are_limited_with_retry_after() -> None:
    async with scripted_server(turns_per_minute=2) as server:
        async with open_session(server, user="fast") as (ws, _):
            check_result(await turn(ws, "echo 1"))
            check_result(await turn(ws, "echo 2"))
            frames = await turn(ws, "echo 3")
            assert [f["type"] for f in frames] == ["error"]
            error = frames[0]["payload"]
            assert error["code"] == "RATE_LIMIT"
            assert "rate limit" in error["message"].lower()
            assert error["details"]["reason"] == "rate_limited"
            assert isinstance(error["details"]["retryAfter"], int)
            assert 1 <= error["details"]["retryAfter"] <= 60
        # The limit is per user.
        async with open_session(server, user="slow") as (ws, _):
            check_result(await turn(ws, "echo 1"))
