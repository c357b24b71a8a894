"""Budgets that hold (issue 3, section 3): the token's AI and compute budget over real sockets.

The scripted model is priced like Sonnet: $3 per million input tokens ($3.75 as cache writes,
the worst case the server reserves), $15 per million output tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from support.raw import (
    Frame,
    check_result,
    collect_turn,
    http_get,
    init,
    open_raw,
    open_session,
    recv,
    send,
    turn,
    user_frame,
)
from support.timing import ticks

from chucky.server.budget import UserBudget
from chucky.server.store import LedgerKey
from chucky.testing import ScriptedServer, scripted_server
from chucky.tokens import create_budget, create_token, decode_token
from chucky.windows import format_utc


async def _ledger_key(server: ScriptedServer, token: str) -> LedgerKey:
    """The ledger key the server counts ``token``'s user in now (from the stored anchor)."""
    app = server.server
    budget = UserBudget(app.store, decode_token(token).claims, app.budget_settings, node_id="t")
    return await budget.key(time.time())


def _minted_ago(seconds: float) -> str:
    """A ``windowStart`` as ``create_budget`` writes it for a token minted ``seconds`` ago."""
    return format_utc(datetime.fromtimestamp(time.time() - seconds, UTC))


async def _usage(server: ScriptedServer, token: str) -> dict[str, Any]:
    status, _, body = await http_get(server, "/usage", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    usage = json.loads(body)
    assert isinstance(usage, dict)
    return usage


def _error(frames: list[Frame]) -> dict[str, Any]:
    assert frames[-1]["type"] == "error", [f.get("type") for f in frames]
    payload = frames[-1]["payload"]
    assert isinstance(payload, dict)
    return payload


async def test_a_zero_budget_gets_budget_exceeded_and_nothing_runs(server: ScriptedServer) -> None:
    token = server.token("broke", ai_dollars=0)
    async with open_raw(server, token=token) as ws:
        info = await init(ws)
        frames = await turn(ws, "echo never")
        # Nothing ran: no system init, no assistant, just the error.
        assert [f["type"] for f in frames] == ["error"]
        error = _error(frames)
        assert error["code"] == "BUDGET_EXCEEDED"
        assert "budget exceeded" in error["message"].lower()
        details = error["details"]
        assert details["reason"] == "user_budget_exhausted"
        assert (details["limit"], details["used"], details["remaining"]) == (0, 0, 0)
        assert details["windowEnd"].endswith("Z")
        # The socket stays usable: a ping still answers.
        await send(ws, {"type": "ping", "payload": {"timestamp": 7}})
        assert (await recv(ws))["payload"] == {"timestamp": 7}
    # The refused turn left no message behind.
    async with open_session(server, token=token, sessionId=info["sessionId"]) as (_, again):
        assert again["messageCount"] == 0


async def test_the_clamp_cuts_the_answer_and_the_spend_stays_under_the_budget(
    server: ScriptedServer,
) -> None:
    budget = 1_600  # microdollars: the input plus about 105 output tokens
    token = server.token("frugal", ai_dollars=budget / 1e6)
    async with open_raw(server, token=token) as ws:
        await init(ws)
        result = check_result(await turn(ws, "stream 1000"))  # 750 tokens unclamped
        assert result["stop_reason"] == "max_tokens"
        assert 16 <= result["usage"]["output_tokens"] <= 105
        assert result["total_cost_usd"] * 1e6 <= budget
        # What is left cannot pay for the input and 16 output tokens.
        error = _error(await turn(ws, "echo again"))
        assert error["code"] == "BUDGET_EXCEEDED"
    usage = await _usage(server, token)
    assert usage["ai"]["budget"] == budget
    assert usage["ai"]["used"] == round(result["total_cost_usd"] * 1e6)
    assert usage["ai"]["reserved"] == 0
    assert usage["ai"]["used"] <= budget


async def test_a_later_call_that_cannot_be_paid_ends_with_error_max_budget_usd(
    server: ScriptedServer,
) -> None:
    tools = {
        "mcpServers": [
            {
                "name": "t",
                "tools": [{"name": "get_time", "description": "now", "inputSchema": {}}],
            }
        ]
    }
    script = "call get_time {}"
    # Measure the first call on a rich token: its cost, from the assistant message's usage.
    async with open_session(server, user="rich", **tools) as (ws, _):
        await send(ws, user_frame(script))
        frames: list[Frame] = []
        while not frames or frames[-1]["type"] != "tool_call":
            frames.append(await recv(ws))
        usage = next(f for f in frames if f["type"] == "assistant")["message"]["usage"]
    # Just enough for the first call's input (at the cache-write rate) plus 16 output tokens;
    # what it leaves cannot pay for the second call's larger input plus 16 output tokens.
    budget = round(usage["input_tokens"] * 3.75 + 16 * 15) + 1
    token = server.token("tight", ai_dollars=budget / 1e6)
    async with open_raw(server, token=token) as ws:
        await init(ws, **tools)
        await send(ws, user_frame(script))
        call = await recv(ws)
        while call["type"] != "tool_call":
            call = await recv(ws)
        await send(
            ws,
            {
                "type": "tool_result",
                "payload": {
                    "callId": call["payload"]["callId"],
                    "result": {"content": [{"type": "text", "text": "noon"}]},
                },
            },
        )
        result = check_result(await collect_turn(ws), subtype="error_max_budget_usd")
        assert result["num_turns"] == 1
        assert result["total_cost_usd"] * 1e6 <= budget


async def test_max_budget_usd_caps_one_session_the_same_way(server: ScriptedServer) -> None:
    async with open_session(server, maxBudgetUsd=0.0016) as (ws, _):
        result = check_result(await turn(ws, "stream 1000"))
        assert result["stop_reason"] == "max_tokens"
        assert result["total_cost_usd"] <= 0.0016
        capped = check_result(await turn(ws, "echo more"), subtype="error_max_budget_usd")
        assert capped["num_turns"] == 0


async def test_no_compute_left_gets_compute_budget_exhausted(server: ScriptedServer) -> None:
    token = server.token("idle", compute_hours=0)
    async with open_raw(server, token=token) as ws:
        await init(ws)
        error = _error(await turn(ws, "echo hi"))
        assert error["code"] == "BUDGET_EXCEEDED"
        assert error["details"]["reason"] == "compute_budget_exhausted"


async def test_a_turn_that_outlives_its_compute_budget_is_ended_and_charged() -> None:
    async with scripted_server(compute_grant=0.2) as server:
        token = server.token("slow", compute_hours=1 / 3600)  # one second: budgets are whole
        async with open_raw(server, token=token) as ws:
            await init(ws)
            frames = await turn(ws, "sleep 30; echo late", timeout=ticks(20) + 2)
            result = check_result(frames, subtype="error_during_execution")
            assert result["errors"] == ["compute budget exhausted"]
        usage = await _usage(server, token)
        compute = usage["compute"]
        assert compute["reserved"] == 0
        assert compute["used"] <= compute["budget"]
        assert compute["used"] >= compute["budget"] * 0.9
        assert usage["allowed"] is False


async def test_compute_time_is_settled_per_turn(server: ScriptedServer) -> None:
    token = server.token("timed")
    async with open_raw(server, token=token) as ws:
        await init(ws)
        started = time.monotonic()
        check_result(await turn(ws, f"sleep {ticks(2)}; echo done"))
        elapsed = time.monotonic() - started
    usage = await _usage(server, token)
    assert usage["compute"]["reserved"] == 0, usage
    assert ticks(2) * 0.9 <= usage["compute"]["used"] <= elapsed + 0.01
    assert usage["allowed"] is True
    assert usage["window"]["type"] == "day"


@pytest.mark.parametrize("window", ["day", "lifetime"])
async def test_tokens_minted_at_different_times_share_one_budget(
    server: ScriptedServer, window: str
) -> None:
    # A backend minting a token per page load: windowStart = the minting time, each time.
    budget = 1_600  # microdollars: the input plus about 105 output tokens
    limits: dict[str, Any] = {"ai_dollars": budget / 1e6, "window": window}
    first = server.token("reloader", window_start=_minted_ago(90), **limits)
    async with open_raw(server, token=first) as ws:
        await init(ws)
        spent = check_result(await turn(ws, "stream 1000"))["total_cost_usd"]
    second = server.token("reloader", window_start=_minted_ago(0), **limits)
    assert decode_token(second).claims.budget.window_start != (
        decode_token(first).claims.budget.window_start
    )
    async with open_raw(server, token=second) as ws:
        await init(ws)
        error = _error(await turn(ws, "echo another budget?"))
        assert error["code"] == "BUDGET_EXCEEDED"
        assert error["details"]["reason"] == "user_budget_exhausted"
        assert error["details"]["used"] == round(spent * 1e6)
    reports = [await _usage(server, token) for token in (first, second)]
    assert reports[0] == reports[1]
    assert reports[0]["ai"]["used"] == round(spent * 1e6) <= budget
    # The window is the first token's: it starts at its windowStart.
    first_start = decode_token(first).claims.budget.window_start
    assert reports[1]["window"]["start"] == first_start
    assert (await _ledger_key(server, second)).window == (
        "lifetime" if window == "lifetime" else f"day:{first_start}"
    )


async def test_usage_needs_a_valid_bearer_token(server: ScriptedServer) -> None:
    status, _, body = await http_get(server, "/usage")
    assert status == 401
    assert json.loads(body)["error"]["code"] == "AUTHENTICATION_ERROR"
    status, _, _ = await http_get(server, "/usage", {"Authorization": "Bearer nope"})
    assert status == 401


async def test_usage_reports_the_window(server: ScriptedServer) -> None:
    token = server.token("fresh", ai_dollars=2, compute_hours=0.5, window="hour")
    usage = await _usage(server, token)
    assert usage["ai"] == {"used": 0, "reserved": 0, "remaining": 2_000_000, "budget": 2_000_000}
    assert usage["compute"]["budget"] == 1800
    assert usage["allowed"] is True
    assert usage["window"]["start"] < usage["window"]["end"]


async def _race(server: ScriptedServer, token: str, sessions: int) -> list[Frame]:

    async def one() -> Frame:
        async with open_raw(server, token=token) as ws:
            await init(ws)
            frames = await turn(ws, "stream 400")
            return frames[-1]

    return await asyncio.gather(*(one() for _ in range(sessions)))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_twenty_sessions_at_once_spend_at_most_the_budget(
    engine: str, request: pytest.FixtureRequest
) -> None:
    database_url = None if engine == "sqlite" else request.getfixturevalue("postgres_database")
    # max_tokens 100: a turn's worst case is its input plus 1,500 microdollars of output.
    async with scripted_server(max_tokens=100, database_url=database_url) as server:
        turn_cost = 12 + 100 * 15  # 3 input tokens at the cache-write rate, rounded up
        budget = 3 * turn_cost
        # One token: its windowStart names the window instance the ledger counts in.
        token = server.token("racer", ai_dollars=budget / 1e6)
        outcomes = await _race(server, token, 20)
        results = [f for f in outcomes if f["type"] == "result"]
        errors = [f["payload"] for f in outcomes if f["type"] == "error"]
        assert len(results) + len(errors) == 20
        assert all(e["code"] == "BUDGET_EXCEEDED" for e in errors), errors
        spent = sum(round(r["total_cost_usd"] * 1e6) for r in results)
        assert spent <= budget
        assert len(results) >= 3
        usage = await server.server.store.usage(await _ledger_key(server, token), "ai")
        assert usage.reserved == 0
        assert usage.used == spent


async def test_expired_and_future_tokens_are_typed_errors_at_reconnect(
    server: ScriptedServer,
) -> None:
    async with open_session(server, user="u") as (_, info):
        pass
    expired = create_token(
        "u", server.project_id, server.secret, create_budget(1, 1), now=time.time() - 7200
    )
    future = server.token("u", window_start="2999-01-01T00:00:00Z")
    for token, reason in ((expired, "token_expired"), (future, "invalid_token")):
        async with open_raw(server, token=token) as ws:
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["payload"]["code"] == "AUTHENTICATION_ERROR"
            assert error["payload"]["details"]["reason"] == reason
            assert info["sessionId"]  # the session exists; the token is what is refused
