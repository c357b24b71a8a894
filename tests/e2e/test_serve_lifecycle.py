"""``chucky serve`` as a process: graceful shutdown, a crash and a restart, the project CLI.

Each test runs real ``chucky serve`` subprocesses on 127.0.0.1 (port 0) on a SQLite file in its
``tmp_path``, drives them over raw WebSockets and HTTP, and kills whatever still runs at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw import (
    FRAME_TIMEOUT,
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
    run_chucky,
    sqlite_url,
    token_for,
    until_system_init,
    usage,
)
from support.timing import ticks

PROJECT = "proj"
SECRET = "hk_live_5e1f0c2d3b4a59687766554433221100"
CLOSE = {"type": "control", "payload": {"action": "close"}}
TURN_TIMEOUT = ticks(200)
"""How long a turn's frames may take (the scripted turns here sleep up to a second)."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcesses]:
    with ServeProcesses(tmp_path) as processes:
        yield processes


async def _start(serve: ServeProcesses, *args: str) -> ServeProcess:
    return await serve.start_with(PROJECT, SECRET, *args)


async def _exit_code(node: ServeProcess) -> int:
    return await asyncio.to_thread(node.wait, ticks(200))


async def _assert_refused(url: str, token: str) -> None:
    with pytest.raises(OSError):
        async with open_url(url, token):
            pass


def _error(frame: Frame) -> dict[str, object]:
    assert frame["type"] == "error", frame
    payload = frame["payload"]
    assert isinstance(payload, dict)
    return payload


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_lets_the_running_turn_finish_within_the_grace(
    serve: ServeProcesses, signum: signal.Signals
) -> None:
    node = await _start(serve, "--shutdown-grace", "10")
    token = token_for("graceful", PROJECT, SECRET)
    async with open_url(node.url, token) as ws:
        await init(ws)
        await send(ws, user_frame("sleep 1; echo done"))
        system = await until_system_init(ws)
        node.send_signal(signum)
        frames = [system, *await collect_turn(ws, TURN_TIMEOUT)]
        result = check_result(frames)
        assert result["result"] == "done"
        assert [f["type"] for f in frames] == ["system", "assistant", "result"]
        # Only then is the session over: the close frame, then the close with 1001.
        assert await recv(ws, TURN_TIMEOUT) == CLOSE
        assert await closed_code(ws, TURN_TIMEOUT) == 1001
    assert await _exit_code(node) == 0
    await _assert_refused(node.url, token)


async def test_a_turn_longer_than_the_grace_is_interrupted_and_settled(
    serve: ServeProcesses,
) -> None:
    node = await _start(serve, "--shutdown-grace", "0.5")
    token = token_for("impatient", PROJECT, SECRET)
    async with open_url(node.url, token) as ws:
        info = await init(ws)
        await send(ws, user_frame("sleep 30"))
        system = await until_system_init(ws)
        node.send_signal(signal.SIGTERM)
        frames = [system, *await collect_turn(ws, TURN_TIMEOUT)]
        result = check_result(frames, subtype="error_during_execution")
        assert result["errors"] == ["server shutting down"]
        assert await recv(ws, TURN_TIMEOUT) == CLOSE
        assert await closed_code(ws, TURN_TIMEOUT) == 1001
    assert await _exit_code(node) == 0

    # The same database, a new process: the ledger was settled and the session stored.
    node = await _start(serve)
    report = await usage(node.url, token)
    assert report["compute"]["reserved"] == 0
    assert report["compute"]["used"] > 0  # the interrupted turn's wall-clock time
    assert report["ai"]["reserved"] == 0
    async with open_url(node.url, token) as ws:
        resumed_info = await init(ws, sessionId=info["sessionId"])
        assert resumed_info["sessionId"] == info["sessionId"]
        assert resumed_info["messageCount"] >= 1  # the interrupted turn's user message
        frames = await turn(ws, "recall", TURN_TIMEOUT)
        assert check_result(frames)["result"] == "sleep 30"


def _reservations(database: Path) -> list[tuple[str, str, int, int | None, int]]:
    """``(node_id, kind, amount, charged, settled)`` of every reservation in the SQLite file."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT node_id, kind, amount, charged, settled FROM reservations"
        )
        return [tuple(row) for row in rows]


async def _kill_mid_turn(node: ServeProcess, token: str) -> str:
    """Start a long turn on ``node``, ``kill -9`` it while the turn runs; the session id."""
    async with open_url(node.url, token) as ws:
        info = await init(ws)
        await send(ws, user_frame("sleep 30; echo x"))
        await until_system_init(ws)
        assert await asyncio.to_thread(node.kill) == -signal.SIGKILL
    session_id = info["sessionId"]
    assert isinstance(session_id, str)
    return session_id


async def _resumes_at_once(url: str, token: str, session_id: str) -> None:
    """``init`` with ``sessionId`` works on the first try, and the session goes on."""
    async with open_url(url, token) as ws:
        resumed_info = await init(ws, sessionId=session_id)  # a session_busy error fails here
        assert resumed_info["sessionId"] == session_id
        assert resumed_info["messageCount"] >= 1  # the killed turn's user message
        frames = await turn(ws, "recall", TURN_TIMEOUT)
        assert check_result(frames)["result"] == "sleep 30; echo x"


async def _settled_in_full(url: str, token: str, database: Path, dead: ServeProcess) -> None:
    """Nothing reserved any more: the killed process's model call and compute grant were
    charged at their full amounts (the worst case: a crash never lets a user over budget)."""
    report = await usage(url, token)
    ai, compute = report["ai"], report["compute"]
    assert (ai["reserved"], compute["reserved"]) == (0, 0), report
    rows = await asyncio.to_thread(_reservations, database)
    # Node ids are "<host>-<pid>-<random>".
    killed = {
        kind: (amount, charged)
        for node, kind, amount, charged, _ in rows
        if f"-{dead.pid}-" in node
    }
    assert set(killed) == {"ai", "compute"}, rows
    assert all(amount == charged for amount, charged in killed.values()), rows
    # The turn's compute grant: --compute-grant (60 s by default), though it ran a moment.
    assert killed["compute"][0] == 60_000
    # The call's reservation: its input and max_tokens of output, lowered to the budget.
    assert 0 < killed["ai"][0] <= ai["budget"]
    assert all(settled for *_, settled in rows), rows
    assert ai["used"] == sum(charged or 0 for _, kind, _, charged, _ in rows if kind == "ai")
    assert compute["used"] * 1000 == sum(
        charged or 0 for _, kind, _, charged, _ in rows if kind == "compute"
    )
    assert ai["used"] <= ai["budget"]
    assert ai["remaining"] == ai["budget"] - ai["used"]


async def test_a_restart_after_kill_resumes_the_session_at_once(serve: ServeProcesses) -> None:
    # A lease TTL far longer than the test: only the proof that the process is gone frees it.
    node = await _start(serve, "--lease-ttl", "600")
    token = token_for("crashed", PROJECT, SECRET, ai_dollars=0.5, compute_hours=1)
    session_id = await _kill_mid_turn(node, token)

    restarted = await _start(serve, "--lease-ttl", "600")
    await _settled_in_full(restarted.url, token, serve.data_dir / "chucky.db", node)
    await _resumes_at_once(restarted.url, token, session_id)


async def test_a_process_killed_beside_another_frees_its_sessions_there(
    serve: ServeProcesses,
) -> None:
    # Two processes on one host and one database; the one holding the session is killed.
    holder, other = await asyncio.gather(
        _start(serve, "--lease-ttl", "600"), _start(serve, "--lease-ttl", "600")
    )
    token = token_for("orphaned", PROJECT, SECRET, ai_dollars=0.5, compute_hours=1)
    session_id = await _kill_mid_turn(holder, token)

    await _resumes_at_once(other.url, token, session_id)
    await _settled_in_full(other.url, token, serve.data_dir / "chucky.db", holder)


async def _chucky(serve: ServeProcesses, *args: str) -> str:
    result = await asyncio.to_thread(run_chucky, *args, data_dir=serve.data_dir)
    return result.stdout


async def _accepted(url: str, token: str) -> None:
    async with open_url(url, token) as ws:
        await init(ws)
        frames = await turn(ws, "echo accepted", TURN_TIMEOUT)
        assert check_result(frames)["result"] == "accepted"


async def _refused(url: str, token: str) -> None:
    async with open_url(url, token) as ws:
        payload = _error(await recv(ws))
        assert payload["code"] == "AUTHENTICATION_ERROR", payload
        assert await closed_code(ws, FRAME_TIMEOUT) == 1008


async def test_project_cli_create_rotate_token_revoke(serve: ServeProcesses) -> None:
    db = sqlite_url(serve.data_dir / "projects.db")
    created = await _chucky(serve, "project", "create", "--name", "acme", "--db", db)
    match = re.fullmatch(r"project (\S+)\nsecret\s+(hk_live_[0-9a-f]{32})\n", created)
    assert match, created
    project, first_secret = match.groups()
    listed = await _chucky(serve, "project", "list", "--db", db)
    assert f"{project}\tacme\t1 secret(s): {first_secret[:12]}..." in listed.splitlines()

    rotated = await _chucky(serve, "project", "rotate", project, "--db", db)
    match = re.match(r"secret\s+(hk_live_[0-9a-f]{32})\n", rotated)
    assert match, rotated
    newest = match.group(1)
    assert newest != first_secret
    listed = await _chucky(serve, "project", "list", "--db", db)
    assert f"{project}\tacme\t2 secret(s)" in listed

    # No --secret: the newest secret of the project, read from the database.
    minted = await _chucky(serve, "token", "--project", project, "--user", "u", "--db", db)
    token = minted.strip()
    old_token = token_for("u", project, first_secret)

    # A server with no --project knows the projects of its database.
    node = await asyncio.to_thread(serve.start, "--db", db)
    await _accepted(node.url, token)
    await _accepted(node.url, old_token)  # rotation keeps the old secret working
    node.stop()

    revoked = await _chucky(
        serve, "project", "revoke", project, "--secret-prefix", newest[:20], "--db", db
    )
    assert revoked == "revoked 1 secret(s)\n"
    listed = await _chucky(serve, "project", "list", "--db", db)
    assert f"{project}\tacme\t1 secret(s): {first_secret[:12]}..." in listed.splitlines()

    # A new process (a running one caches secrets for a few seconds): the revoked secret's
    # tokens are refused, the other secret's still accepted.
    node = await asyncio.to_thread(serve.start, "--db", db)
    await _refused(node.url, token)
    await _accepted(node.url, old_token)
