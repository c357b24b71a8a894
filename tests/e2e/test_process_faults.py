"""``chucky serve`` as a process under faults: SIGTERM at any moment of many turns, clients that
never read, a socket that floods the turn queue. Real subprocesses on 127.0.0.1, real SQLite.

The ledger invariants are those of :mod:`support.faults`; memory is the server's resident set,
read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.faults import TOOL_SERVER, TurnLog, check_history, drive_turn
from support.raw import init, open_url, send, user_frame
from support.serve import ServeProcess, ServeProcesses, sqlite_url, token_for, usage
from support.timing import ticks
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chucky.server.sql import SqlStore
from chucky.tokens import decode_token

PROJECT = "proj"
SECRET = "hk_live_0f1e2d3c4b5a69788796a5b4c3d2e1f0"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's memory from /proc"
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcesses]:
    with ServeProcesses(tmp_path) as processes:
        yield processes


async def _start(serve: ServeProcesses, *args: str) -> ServeProcess:
    return await serve.start_with(PROJECT, SECRET, *args)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _assert_no_errors(node: ServeProcess) -> None:
    """The server logged nothing at ERROR and no traceback."""
    log = node.stderr()
    assert " ERROR " not in log and "Traceback" not in log, log


# -- SIGTERM at random moments ---------------------------------------------------------------


async def _client(url: str, token: str, script: str, options: dict[str, Any]) -> list[TurnLog]:
    """Run turns back to back until the server closes the socket."""
    logs: list[TurnLog] = []
    try:
        async with open_url(url, token) as ws:
            await init(ws, **options)
            while True:
                log = await drive_turn(ws, script, fault="none", delay=0, timeout=ticks(400))
                logs.append(log)
                if log.ends == 0 or log.errors:
                    return logs  # the socket closed, or the server refused the turn
    except (ConnectionClosed, OSError, InvalidHandshake):
        return logs  # the server went away between two turns (or before the first)


@pytest.mark.parametrize("variant", ["plain", "tools"])
async def test_sigterm_at_random_moments_keeps_the_ledger_exact(
    serve: ServeProcesses, variant: str
) -> None:
    script, options = {
        "plain": ("stream 30", {"includePartialMessages": True}),
        "tools": ("call t {}", {"mcpServers": [TOOL_SERVER]}),
    }[variant]
    rng = random.Random(variant)
    users = [f"u{i}" for i in range(4)]
    tokens = {user: token_for(user, PROJECT, SECRET, ai_dollars=100) for user in users}
    received = dict.fromkeys(users, 0)
    turns = 0
    for _ in range(6):
        node = await _start(serve, "--shutdown-grace", str(rng.choice([0, 0.05, 0.5])))
        clients = [
            asyncio.create_task(_client(node.url, tokens[user], script, options)) for user in users
        ]
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.wait, ticks(200)) == 0
        assert time.monotonic() - started < 10
        _assert_no_errors(node)
        for user, client in zip(users, clients, strict=True):
            for log in await client:
                assert log.ends <= 1
                for error in log.errors:
                    assert error["payload"]["details"]["reason"] == "server_shutdown", error
                received[user] += log.cost
                turns += 1
    assert turns > 40  # the signal lands at random moments of many turns
    # A new process on the same database: nothing reserved, and every microdollar charged was
    # reported to the client in a result (a shutdown never leaves a turn unanswered).
    node = await _start(serve)
    for user in users:
        report = await usage(node.url, tokens[user])
        assert report["ai"]["reserved"] == 0, report
        assert report["compute"]["reserved"] == 0, report
        assert report["ai"]["used"] == received[user], (user, report)


# -- clients that never read -----------------------------------------------------------------


async def _never_reading(url: str, token: str, turns: int) -> Any:
    """A client that starts ``turns`` long streamed turns and never reads again."""
    ws = await connect(f"{url}?token={token}", max_queue=1, max_size=None)
    await ws.recv()  # ready
    await ws.send(json.dumps({"type": "init", "payload": {"includePartialMessages": True}}))
    await ws.recv()  # session_info
    for _ in range(turns):
        await ws.send(json.dumps(user_frame("stream 100000")))
    return ws


async def test_sigterm_with_clients_that_never_read_exits_within_the_grace(
    serve: ServeProcesses,
) -> None:
    grace = 2.0
    node = await _start(serve, "--shutdown-grace", str(grace), "--write-timeout", "120")
    tokens = [token_for(f"lazy{i}", PROJECT, SECRET, ai_dollars=100) for i in range(3)]
    lazy = [await _never_reading(node.url, token, turns=8) for token in tokens]
    await asyncio.sleep(1.0)  # the server fills their sockets and blocks on them
    started = time.monotonic()
    node.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.wait, grace + 10) == 0
    assert time.monotonic() - started < grace + 5
    _assert_no_errors(node)
    for ws in lazy:
        ws.transport.abort()
    node = await _start(serve)
    for token in tokens:
        report = await usage(node.url, token)
        assert report["ai"]["reserved"] == 0 and report["compute"]["reserved"] == 0, report


# -- a flood of turns on one socket ----------------------------------------------------------


@pytest.mark.parametrize("dollars", [10.0, 0.0], ids=["budget", "no-budget"])
async def test_a_thousand_queued_megabyte_turns_stay_bounded(
    serve: ServeProcesses, dollars: float
) -> None:
    node = await _start(serve)
    token = token_for("flood", PROJECT, SECRET, ai_dollars=dollars)
    peak = [_rss_mb(node.pid)]
    base = peak[0]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], _rss_mb(node.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    frames: list[dict[str, Any]] = []
    try:
        async with open_url(node.url, token, max_size=None) as ws:
            await init(ws)

            async def read() -> None:
                try:
                    async for text in ws:
                        frames.append(json.loads(text))
                except ConnectionClosed:
                    pass

            reader = asyncio.create_task(read())
            await send(ws, user_frame("sleep 3600"))  # holds the session (or is refused)
            megabyte = "x" * (1 << 20)
            for _ in range(1000):
                await send(ws, user_frame(megabyte))
            while sum(f["type"] == "error" for f in frames) < 990:  # noqa: ASYNC110
                await asyncio.sleep(ticks(2))
            reader.cancel()
    finally:
        sampling = False
        await asyncio.to_thread(sampler.join)
    errors = [f["payload"] for f in frames if f["type"] == "error"]
    full = [e for e in errors if e["details"].get("reason") == "queue_full"]
    if dollars:
        assert full, errors[:3]  # the first turn holds the session: the queue fills up
    else:
        # Refused at its start (one transaction), a turn ends faster than a megabyte arrives:
        # the queue may never fill. Every turn is answered, none runs.
        assert len(errors) >= 990, errors[:3]
    for error in full:
        assert error["code"] == "RATE_LIMIT"
        assert error["details"]["limit"] == 16
    assert {e["code"] for e in errors} <= {"RATE_LIMIT", "BUDGET_EXCEEDED"}
    assert peak[0] - base < 50, f"server RSS grew from {base:.0f} MB to {peak[0]:.0f} MB"


# -- kill -9 at random moments ---------------------------------------------------------------


def _open_ai_reservations(database: Path) -> dict[str, int]:
    """Unsettled AI reservations by user (what a crash leaves held)."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT user_id, SUM(amount) FROM reservations "
            "WHERE kind = 'ai' AND NOT settled GROUP BY user_id"
        )
        return {user: int(total) for user, total in rows}


async def _session(database: Path, token: str, session_id: str) -> tuple[int, list[Any]]:
    """The session's recorded spend and its transcript, read from the database."""
    store = SqlStore(sqlite_url(database))
    await store.open()
    try:
        claims = decode_token(token).claims
        record = await store.get_session(session_id, claims.iss, claims.sub)
        assert record is not None
        return record.spent_microdollars, record.transcript
    finally:
        await store.aclose()


async def test_kill_9_at_random_moments_then_restart_keeps_the_ledger_exact(
    serve: ServeProcesses,
) -> None:
    """A crash charges the turn in flight its open reservations in full (documented: the
    worst case, so a crash never lets a user over budget); everything else is exact: the ledger
    holds what the sessions recorded (each charge is written with its session in one
    transaction) plus those reservations, and the clients saw all of it but the results the
    kill cut off the wire."""
    rng = random.Random(9)
    database = serve.data_dir / "chucky.db"
    users = [f"k{i}" for i in range(3)]
    tokens = {user: token_for(user, PROJECT, SECRET, ai_dollars=100) for user in users}
    received = dict.fromkeys(users, 0)
    crashed = dict.fromkeys(users, 0)
    sessions: dict[str, str] = {}
    for _ in range(4):
        node = await _start(serve, "--lease-ttl", "600")

        async def client(user: str, url: str) -> list[TurnLog]:
            logs: list[TurnLog] = []
            options: dict[str, Any] = {"mcpServers": [TOOL_SERVER]}
            if user in sessions:
                options["sessionId"] = sessions[user]
            try:
                async with open_url(url, tokens[user]) as ws:
                    sessions[user] = (await init(ws, **options))["sessionId"]
                    while True:
                        script = rng.choice(["stream 30", "echo a; call t {}"])
                        log = await drive_turn(ws, script, fault="none", delay=0)
                        logs.append(log)
                        if log.ends == 0:
                            return logs
            except (ConnectionClosed, OSError, InvalidHandshake):
                return logs

        clients = [asyncio.create_task(client(user, node.url)) for user in users]
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        assert await asyncio.to_thread(node.kill) == -signal.SIGKILL
        for user, task in zip(users, clients, strict=True):
            received[user] += sum(log.cost for log in await task)
        held = await asyncio.to_thread(_open_ai_reservations, database)
        for user, amount in held.items():
            crashed[user] += amount
    node = await _start(serve, "--lease-ttl", "600")
    for user in users:
        report = await usage(node.url, tokens[user])
        assert report["ai"]["reserved"] == 0 and report["compute"]["reserved"] == 0, report
        _assert_no_errors(node)
        spent, transcript = await _session(database, tokens[user], sessions[user])
        assert report["ai"]["used"] == spent + crashed[user], (user, report)
        assert received[user] <= spent
        check_history(transcript)
        async with open_url(node.url, tokens[user]) as ws:  # resumes at once, and works
            await init(ws, sessionId=sessions[user])
            frames = await drive_turn(ws, "echo back", fault="none", delay=0)
            assert frames.result is not None and frames.result["result"] == "back"
