"""The ledger stays exact under every fault (in-process server, real sockets, real SQLite).

Each test drives many turns and breaks them -- ``interrupt``, ``close``, ``end_input``, a dropped
TCP connection -- at random moments across the whole turn (before admission, during the
reservations, mid-stream, during a tool call, during settlement), then checks the invariants of
:mod:`support.faults`: nothing reserved, the ledger equals what the results reported (plus what
the session recorded for results that could not be delivered), no ``INTERNAL_ERROR``, no log
line at ERROR, and a session that resumes with a consistent history.

The scripted model is priced like Sonnet, so the ledger works as in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import pytest
from support.faults import (
    TOOL_SERVER,
    Fault,
    TurnLog,
    check_history,
    drive_turn,
    ledger,
    session_spent,
    settled,
)
from support.raw import (
    check_result,
    init,
    open_raw,
    poll_until,
    recv,
    send,
    turn,
    user_frame,
)
from support.timing import ticks
from websockets.asyncio.client import connect

from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.sql import SqlStore
from chucky.server.store import Reservation, SessionRecord, TurnWrite, TurnWritten
from chucky.testing import ScriptedServer, scripted_server

TURNS = 60  # per kind and variant: 3 variants x 60 = 180 turns of each fault kind

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("stream 30", {}),
    "partial": ("stream 30", {"includePartialMessages": True}),
    "tools": ("echo using t; call t {}", {"mcpServers": [TOOL_SERVER]}),
}


def _error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _open(server: ScriptedServer, token: str, **options: Any) -> tuple[Any, Any, str]:
    context = open_raw(server, token=token)
    ws = await context.__aenter__()
    info = await init(ws, **options)
    return context, ws, info["sessionId"]


async def _check_invariants(
    server: ScriptedServer, token: str, session_id: str, logs: list[TurnLog], *, delivered: bool
) -> None:
    await settled(server)
    usage = await ledger(server.url, token)
    assert usage["ai"]["reserved"] == 0, usage
    assert usage["compute"]["reserved"] == 0, usage
    received = sum(log.cost for log in logs)
    spent, transcript = await session_spent(server.server.store, token, session_id)
    # Every microdollar the ledger charged, the session recorded; and the results reported
    # all of it, except for the turns whose result never reached the client.
    assert usage["ai"]["used"] == spent
    if delivered:
        assert usage["ai"]["used"] == received
    else:
        assert usage["ai"]["used"] >= received
    for log in logs:
        assert log.ends <= 1, log.frames
        assert all(e["payload"]["code"] != "INTERNAL_ERROR" for e in log.errors), log.errors
    check_history(transcript)
    # The session resumes with exactly its stored history, and works.
    async with open_raw(server, token=token) as ws:
        info = await init(ws, sessionId=session_id)
        assert info["messageCount"] == len(transcript)
        assert check_result(await turn(ws, "echo still here"))["result"] == "still here"


async def _turn_length(ws: Any, script: str, logs: list[TurnLog]) -> float:
    """The median time of three clean turns of ``script`` (logged in ``logs``) from the send to
    the end of their model output (the last ``assistant`` frame): the part of a turn a fault
    can stop. The whole turn, as the client sees it, also holds the reading of every frame
    after that (a ``stream`` turn's deltas), which would put most faults past the turn's work.
    """
    spans = []
    for _ in range(3):
        log = await drive_turn(ws, script, fault="none", delay=0)
        logs.append(log)
        spans.append(log.model_done)
    return sorted(spans)[1]


def _database(engine: str, request: pytest.FixtureRequest) -> str | None:
    """The database of a test: a fresh SQLite file (``None``), or a fresh PostgreSQL one."""
    if engine == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database")
    return url


ENGINES = ["sqlite", "postgresql"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fault", ["interrupt", "close", "end_input", "drop"])
async def test_faults_at_random_moments_keep_the_ledger_exact(
    fault: Fault,
    variant: str,
    engine: str,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.WARNING)
    script, options = VARIANTS[variant]
    rng = random.Random(f"{fault}-{variant}-{engine}")
    logs: list[TurnLog] = []
    turns = TURNS if engine == "sqlite" else TURNS // 2
    async with scripted_server(database_url=_database(engine, request)) as server:
        token = server.token("faulty", ai_dollars=100)
        context, ws, session_id = await _open(server, token, **options)
        # Faults land anywhere in a turn: from before admission to after the result. The span
        # follows the machine's pace: the median of the last turns that ran to their end
        # (a loaded machine slows turns down as the test goes).
        spans = [await _turn_length(ws, script, logs)]
        try:
            for _ in range(turns):
                span = sorted(spans[-9:])[len(spans[-9:]) // 2]
                if ws is None:
                    context, ws, _ = await _open(server, token, sessionId=session_id, **options)
                log = await drive_turn(
                    ws,
                    script,
                    fault=fault,
                    # Anywhere from before admission to after the result; half of the faults
                    # in the turn's first half, where it can still be stopped (the server's
                    # part of a turn is a fraction of what the client measures).
                    delay=rng.uniform(0, span * (1.2 if rng.random() < 0.5 else 0.5)),
                    tool_delay=rng.uniform(0, span / 4),
                )
                logs.append(log)
                if log.result is not None and not log.result["is_error"] and log.model_done:
                    spans.append(log.model_done)
                if fault == "interrupt":
                    assert log.ends == 1 and log.result is not None, log.frames
                    assert log.result["subtype"] in ("success", "error_during_execution")
                elif fault in ("close", "end_input"):
                    # The turn is answered before the socket closes (docs/protocol.md section 4).
                    assert log.ends == 1 and log.result is not None, log.frames
                    assert log.closed
                if fault != "interrupt":
                    await context.__aexit__(None, None, None)
                    ws = None
        finally:
            if ws is not None:
                await context.__aexit__(None, None, None)
        await _check_invariants(server, token, session_id, logs, delivered=fault != "drop")
    logs = logs[3:]
    if fault == "end_input":  # nothing was stopped: every turn ran to its end
        assert all(log.result and log.result["subtype"] == "success" for log in logs)
    if fault == "interrupt":
        stopped = sum(log.result is not None and log.result["is_error"] for log in logs)
        assert stopped > turns // 4, "the delays should stop many turns mid-way"
    assert _error_records(caplog) == []


async def _results(ws: Any, count: int) -> list[TurnLog]:
    """Read the next ``count`` turns' frames (each up to its result or error)."""
    logs: list[TurnLog] = []
    for _ in range(count):
        log = TurnLog()
        while log.ends == 0:
            log.frames.append(await recv(ws))
        logs.append(log)
    return logs


@pytest.mark.parametrize("engine", ENGINES)
async def test_interrupt_then_send_again_at_once(
    engine: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    # What a chat UI does: stop, then send the next message immediately. 100 of 100 work.
    caplog.set_level(logging.WARNING)
    async with scripted_server(database_url=_database(engine, request)) as server:
        token = server.token("chatty", ai_dollars=100)
        logs: list[TurnLog] = []
        async with open_raw(server, token=token) as ws:
            info = await init(ws)
            for i in range(100):
                await send(ws, user_frame(f"sleep {ticks(40)}; echo never"))
                await asyncio.sleep(random.Random(i).uniform(0, 0.01))
                await send(ws, {"type": "control", "payload": {"action": "interrupt"}})
                await send(ws, user_frame(f"echo next {i}"))
                stopped, following = await _results(ws, 2)
                assert stopped.result is not None, stopped.frames
                assert stopped.result["errors"] == ["interrupted"]
                assert following.result is not None, following.frames
                assert following.result["result"] == f"next {i}"
                logs += [stopped, following]
        await _check_invariants(server, token, info["sessionId"], logs, delivered=True)
    assert _error_records(caplog) == []


async def test_an_interrupt_right_after_the_turn_stops_it_before_it_runs() -> None:
    async with scripted_server() as server, open_raw(server) as ws:
        await init(ws)
        started = time.monotonic()
        await send(ws, user_frame(f"sleep {ticks(100)}; echo never"))
        await send(ws, {"type": "control", "payload": {"action": "interrupt"}})
        await send(ws, user_frame("echo next"))
        stopped, following = await _results(ws, 2)
        # Both answers came long before the sleep could have ended; the stopped turn never
        # reached the model (no system init: it never started).
        assert time.monotonic() - started < ticks(60)
        assert stopped.result is not None and stopped.result["errors"] == ["interrupted"]
        assert following.result is not None and following.result["result"] == "next"


# -- a fault at every store step of a turn -------------------------------------------------------


class SteppedStore(SqlStore):
    """A store that pauses at its ``pause_at``-th turn operation until released, so a test can
    inject a fault exactly there (the operation then completes, as a real one would)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls = 0
        self.pause_at: int | None = None
        self.paused = asyncio.Event()
        self.release = asyncio.Event()
        self.steps: list[str] = []

    async def _step(self, name: str) -> None:
        self.calls += 1
        self.steps.append(name)
        if self.calls == self.pause_at:
            self.paused.set()
            await self.release.wait()

    async def reserve(self, *args: Any, **kwargs: Any) -> Reservation | None:
        await self._step(f"reserve {args[1]}")
        return await super().reserve(*args, **kwargs)

    async def write_turn(self, write: TurnWrite) -> TurnWritten:
        await self._step(f"write_turn {len(write.reserve)}/{len(write.settle)}")
        return await super().write_turn(write)

    async def save_session(self, record: SessionRecord) -> None:
        await self._step("save_session")
        await super().save_session(record)

    async def count_turn(self, *args: Any, **kwargs: Any) -> Any:
        await self._step("count_turn")
        return await super().count_turn(*args, **kwargs)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fault", ["interrupt", "drop", "close"])
async def test_a_fault_at_every_store_step(
    fault: Fault,
    engine: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.WARNING)
    store = SteppedStore(_database(engine, request) or f"sqlite+aiosqlite:///{tmp_path}/stepped.db")
    config = ServerConfig(
        host="127.0.0.1", port=0, projects={"p": ["hk_live_" + "0" * 32]}, turns_per_minute=10_000
    )
    async with ChuckyServer(config, store=store) as chucky:
        server = ScriptedServer(chucky, "p", "hk_live_" + "0" * 32)
        token = server.token("stepper", ai_dollars=100)
        script, options = VARIANTS["tools"]
        # One clean turn counts the steps a turn takes.
        async with open_raw(server, token=token) as ws:
            session_id = (await init(ws, **options))["sessionId"]
            base = store.calls
            logs = [await drive_turn(ws, script, fault="none", delay=0)]
            steps = store.steps[base:]
        await settled(server)
        # Three transactions: the start (rate count, compute, first call, the user's message),
        # the second call's reservation (with the first call settled, the tool round saved),
        # the close (the second call and the compute settled, the answer saved).
        assert steps == ["write_turn 2/0", "write_turn 1/1", "write_turn 0/2"], steps
        for step in range(1, len(steps) + 1):
            store.paused.clear()
            store.release.clear()
            async with open_raw(server, token=token) as ws:
                await init(ws, sessionId=session_id, **options)
                store.pause_at = store.calls + step
                reader = asyncio.create_task(drive_turn(ws, script, fault="none", delay=0))
                async with asyncio.timeout(ticks(100)):
                    await store.paused.wait()
                if fault == "drop":
                    ws.transport.abort()
                else:
                    await send(ws, {"type": "control", "payload": {"action": fault}})
                await asyncio.sleep(ticks(1))
                store.release.set()
                log = await reader
                logs.append(log)
                if fault != "drop":
                    assert log.ends == 1, (steps[step - 1], log.frames)
            await settled(server)
        await _check_invariants(server, token, session_id, logs, delivered=fault != "drop")
    assert _error_records(caplog) == []


# -- a client that stops reading -----------------------------------------------------------------


async def test_a_client_that_never_reads_is_cut_off_and_its_turn_settled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    deadline = ticks(20)
    async with scripted_server(write_timeout=deadline, max_tokens=200_000) as server:
        token = server.token("lazy")
        # The client's library stops reading from the socket once one frame waits unread.
        ws = await connect(f"{server.url}?token={token}", max_queue=1, max_size=None)
        try:
            assert json.loads(await ws.recv())["payload"]["action"] == "ready"
            await ws.send(json.dumps({"type": "init", "payload": {"includePartialMessages": True}}))
            session_id = json.loads(await ws.recv())["payload"]["data"]["sessionId"]
            started = time.monotonic()
            await ws.send(json.dumps(user_frame("stream 100000")))  # ~20 MB of frames
            await poll_until(lambda: not server.server._connections, timeout=deadline + 30)
            # The deadline, plus the time to fill the socket buffers (a few MB on loopback).
            assert time.monotonic() - started < deadline + 5
        finally:
            ws.transport.abort()
        await settled(server)
        usage = await ledger(server.url, token)
        assert usage["ai"]["reserved"] == 0 and usage["compute"]["reserved"] == 0, usage
        spent, transcript = await session_spent(server.server.store, token, session_id)
        assert usage["ai"]["used"] == spent > 0
        check_history(transcript)
    assert _error_records(caplog) == []
