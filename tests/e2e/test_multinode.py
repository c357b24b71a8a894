"""Two ``chucky serve`` processes on one database (PostgreSQL, or a SQLite file) behave as one
server.

Sessions, budgets and leases live in the database: a session moves from node to node, one
user's budget holds across both, and a session live on one node is busy on the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw import (
    Frame,
    check_result,
    closed_code,
    collect_turn,
    init,
    open_url,
    recv,
    send,
    turn,
    user_frame,
)
from support.serve import (
    ServeProcess,
    ServeProcesses,
    resumed,
    token_for,
    until_system_init,
    usage,
)
from support.timing import ticks

PROJECT = "multi"
SECRET = "hk_live_00112233445566778899aabbccddeeff"
TURN_TIMEOUT = ticks(200)


@pytest.fixture(params=["postgresql", "sqlite"])
def nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ServeProcesses, str]]:
    """The process starter and the test's database (the processes end first): a fresh
    PostgreSQL database, or one SQLite file both processes open (each runs its transactions on
    its event loop while the other leaves the file alone, and waits in its store's thread while
    the other writes)."""
    if request.param == "postgresql":
        database: str = request.getfixturevalue("postgres_database")
    else:
        database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    with ServeProcesses(tmp_path) as processes:
        yield processes, database


async def _two_nodes(
    nodes: tuple[ServeProcesses, str], *options: str
) -> tuple[ServeProcess, ServeProcess]:
    """Nodes A and B, started at once on the fresh database (both create its schema)."""
    processes, database = nodes
    args = ("--db", database, "--project", f"{PROJECT}:{SECRET}", *options)
    a, b = await asyncio.gather(
        asyncio.to_thread(processes.start, *args), asyncio.to_thread(processes.start, *args)
    )
    assert a.database == b.database
    assert a.url != b.url
    return a, b


async def test_a_session_started_on_one_node_resumes_on_the_other(
    nodes: tuple[ServeProcesses, str],
) -> None:
    a, b = await _two_nodes(nodes)
    token = token_for("traveller", PROJECT, SECRET)
    async with open_url(a.url, token) as ws:
        info = await init(ws)
        assert check_result(await turn(ws, "echo one", TURN_TIMEOUT))["result"] == "one"
        assert check_result(await turn(ws, "echo two", TURN_TIMEOUT))["result"] == "two"
        await send(ws, {"type": "control", "payload": {"action": "close"}})
        assert await closed_code(ws, TURN_TIMEOUT) == 1000
    async with open_url(b.url, token) as ws:
        moved = await init(ws, sessionId=info["sessionId"])
        assert moved["sessionId"] == info["sessionId"]
        assert moved["messageCount"] == 4
        assert check_result(await turn(ws, "recall", TURN_TIMEOUT))["result"] == "echo one"


async def _one_turn(url: str, token: str, content: str) -> Frame:
    """A new session with one turn: its ``result`` or ``error`` frame."""
    async with open_url(url, token) as ws:
        await init(ws)
        await send(ws, user_frame(content))
        frames = await collect_turn(ws, TURN_TIMEOUT)
        if frames[-1]["type"] == "result":
            check_result(frames)
        return frames[-1]


async def test_one_users_budget_holds_across_both_nodes(
    nodes: tuple[ServeProcesses, str],
) -> None:
    a, b = await _two_nodes(nodes)
    # A "stream 400" turn costs 4,509 microdollars (3 input tokens at $3/M, 300 output tokens
    # at $15/M), but reserves its worst case first: the input at the cache-write rate plus
    # max_tokens of output, lowered to what is left. 10,000 pays for two turns and a bit.
    budget = 10_000
    token = token_for("racer", PROJECT, SECRET, ai_dollars=budget / 1e6)
    outcomes = await asyncio.gather(
        *(_one_turn((a, b)[i % 2].url, token, "stream 400") for i in range(10))
    )
    results = [f for f in outcomes if f["type"] == "result"]
    errors = [f["payload"] for f in outcomes if f["type"] == "error"]
    assert len(results) + len(errors) == 10
    assert all(e["code"] == "BUDGET_EXCEEDED" for e in errors), errors
    assert results, "the budget pays for at least one turn"
    spent = sum(round(r["total_cost_usd"] * 1e6) for r in results)
    assert spent <= budget
    report_a, report_b = await asyncio.gather(usage(a.url, token), usage(b.url, token))
    for report in (report_a, report_b):
        assert report["ai"]["used"] == spent, report
        assert report["ai"]["reserved"] == 0, report
        assert report["ai"]["budget"] == budget
    assert report_a["ai"] == report_b["ai"]


async def test_a_session_live_on_one_node_is_busy_on_the_other(
    nodes: tuple[ServeProcesses, str],
) -> None:
    a, b = await _two_nodes(nodes)
    token = token_for("holder", PROJECT, SECRET)
    async with open_url(a.url, token) as live:
        info = await init(live)
        async with open_url(b.url, token) as ws:
            assert (await recv(ws))["payload"] == {"action": "ready"}
            await send(ws, {"type": "init", "payload": {"sessionId": info["sessionId"]}})
            # Node B waits a moment for a lease that may be on its way out, then answers.
            error = await recv(ws, TURN_TIMEOUT)
            assert error["type"] == "error", error
            assert error["payload"]["code"] == "SESSION_ERROR", error
            assert error["payload"]["details"]["reason"] == "session_busy", error
            assert await closed_code(ws, TURN_TIMEOUT) == 1008
        # The live session on A is untouched.
        assert check_result(await turn(live, "echo still here", TURN_TIMEOUT))["result"] == (
            "still here"
        )
    # Closed on A, it is free on B.
    async with resumed(b.url, token, info["sessionId"]) as (ws, moved):
        assert moved["messageCount"] == 2


async def test_a_node_killed_mid_turn_frees_its_session_on_the_other_at_once(
    nodes: tuple[ServeProcesses, str],
) -> None:
    # Both nodes on this host: B proves A dead, so the lease TTL (far longer) never matters.
    a, b = await _two_nodes(nodes, "--lease-ttl", "600")
    token = token_for("crashed", PROJECT, SECRET)
    async with open_url(a.url, token) as ws:
        info = await init(ws)
        await send(ws, user_frame("sleep 30; echo x"))
        await until_system_init(ws)
        await asyncio.to_thread(a.kill)
    async with open_url(b.url, token) as ws:
        moved = await init(ws, sessionId=info["sessionId"])  # not session_busy
        assert moved["sessionId"] == info["sessionId"]
        assert check_result(await turn(ws, "recall", TURN_TIMEOUT))["result"] == "sleep 30; echo x"
    report = await usage(b.url, token)
    assert (report["ai"]["reserved"], report["compute"]["reserved"]) == (0, 0), report
    # A's call and compute grant were charged in full: at least the 60 s grant.
    assert report["compute"]["used"] >= 60.0
    assert 0 < report["ai"]["used"] <= report["ai"]["budget"]
