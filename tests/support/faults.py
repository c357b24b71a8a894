"""Fault injection over real sockets: drive a turn, break it at a chosen moment, check the ledger.

The invariants every fault test asserts afterwards (issue "a ledger that stays exact"):

* nothing stays reserved: :func:`ledger` shows ``reserved == 0`` for AI and compute;
* the ledger charges what the turns cost: the AI ``used`` equals the sum of the ``result`` costs
  the client received, plus -- for turns whose result could not be delivered (the socket was
  gone) -- what the session recorded for them (:func:`session_spent`);
* the history is consistent (:func:`check_history`): every ``tool_use`` is answered by a
  ``tool_result`` in the next message, and the session resumes with exactly the stored messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from chucky.server.store import Store
from chucky.testing import ScriptedServer
from chucky.tokens import decode_token
from support.raw import FRAME_TIMEOUT, Frame, http_get_url, send, user_frame
from support.timing import ticks

__all__ = [
    "TOOL_SERVER",
    "Fault",
    "TurnLog",
    "check_history",
    "drive_turn",
    "ledger",
    "session_spent",
    "settled",
]

Fault = Literal["interrupt", "close", "end_input", "drop", "none"]

TOOL_SERVER = {"name": "s", "tools": [{"name": "t", "inputSchema": {"type": "object"}}]}


@dataclass
class TurnLog:
    """What the client saw of one turn."""

    frames: list[Frame] = field(default_factory=list)
    closed: bool = False
    sent_at: float = 0.0
    """``time.monotonic()`` when the turn was sent."""
    arrived: list[float] = field(default_factory=list)
    """``time.monotonic()`` when each frame arrived."""

    @property
    def model_done(self) -> float:
        """Seconds from the send to the last ``assistant`` frame: the end of the turn's model
        output, after which there is nothing left to stop (0 without one)."""
        times = [
            t for f, t in zip(self.frames, self.arrived, strict=True) if f["type"] == "assistant"
        ]
        return times[-1] - self.sent_at if times else 0.0

    @property
    def result(self) -> Frame | None:
        return next((f for f in self.frames if f.get("type") == "result"), None)

    @property
    def errors(self) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == "error"]

    @property
    def ends(self) -> int:
        return sum(f.get("type") in ("result", "error") for f in self.frames)

    @property
    def cost(self) -> int:
        """The result's cost in microdollars (0 without a result)."""
        result = self.result
        return round(result["total_cost_usd"] * 1_000_000) if result is not None else 0


async def drive_turn(
    ws: ClientConnection,
    script: str,
    *,
    fault: Fault,
    delay: float,
    tool_delay: float = 0.0,
    timeout: float = FRAME_TIMEOUT,
) -> TurnLog:
    """Send a turn, inject ``fault`` after ``delay`` seconds, and read until the turn's end
    (or the socket's). Tool calls are answered after ``tool_delay`` seconds."""
    log = TurnLog()
    log.sent_at = time.monotonic()
    await send(ws, user_frame(script))

    async def inject() -> None:
        await asyncio.sleep(delay)
        if fault in ("interrupt", "close", "end_input"):
            with contextlib.suppress(ConnectionClosed):
                await send(ws, {"type": "control", "payload": {"action": fault}})
        elif fault == "drop":
            ws.transport.abort()  # the TCP connection dies: no close frame

    async def answer(call: Mapping[str, Any]) -> None:
        await asyncio.sleep(tool_delay)
        result = {"content": [{"type": "text", "text": f"ok {call['callId']}"}]}
        with contextlib.suppress(ConnectionClosed):
            await send(
                ws, {"type": "tool_result", "payload": {"callId": call["callId"], "result": result}}
            )

    injector = asyncio.create_task(inject())
    answers: set[asyncio.Task[None]] = set()
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    text = await ws.recv()
                except ConnectionClosed:
                    log.closed = True
                    break
                frame = json.loads(text)
                log.frames.append(frame)
                log.arrived.append(time.monotonic())
                if frame.get("type") == "tool_call":
                    task = asyncio.create_task(answer(frame["payload"]))
                    answers.add(task)
                if frame.get("type") in ("result", "error") and fault not in ("close", "end_input"):
                    break
    finally:
        if fault != "none":
            # The fault is part of the turn: let it happen even if the turn ended first.
            with contextlib.suppress(ConnectionClosed):
                await injector
        await _cancel(injector)
        for task in answers:
            await _cancel(task)
    return log


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def settled(server: ScriptedServer, timeout: float = ticks(100)) -> None:
    """Wait until the server has forgotten every connection and finished its store work."""
    chucky = server.server
    deadline = time.monotonic() + timeout
    while chucky._connections or chucky._pending:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"server not settled: {len(chucky._connections)} connections, "
                f"{len(chucky._pending)} store tasks"
            )
        await asyncio.sleep(ticks(0.5))


async def ledger(url: str, token: str) -> dict[str, Any]:
    """``GET /usage`` of the token's user (AI in microdollars, compute in seconds)."""
    status, _, body = await http_get_url(url, "/usage", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    usage: dict[str, Any] = json.loads(body)
    return usage


async def session_spent(store: Store, token: str, session_id: str) -> tuple[int, list[Any]]:
    """What the session recorded as spent, and its stored transcript."""
    claims = decode_token(token).claims
    record = await store.get_session(session_id, claims.iss, claims.sub)
    assert record is not None
    return record.spent_microdollars, record.transcript


def check_history(transcript: list[dict[str, Any]]) -> None:
    """Every assistant ``tool_use`` is answered, in the very next message, by ``tool_result``
    blocks for exactly its ids; uuids are unique."""
    uuids = [m["uuid"] for m in transcript]
    assert len(uuids) == len(set(uuids)), "duplicate message uuids"
    for index, message in enumerate(transcript):
        content = message["content"]
        if message["role"] != "assistant" or not isinstance(content, list):
            continue
        ids = [b["id"] for b in content if b.get("type") == "tool_use"]
        if not ids:
            continue
        assert index + 1 < len(transcript), f"tool_use {ids} without a result at the end"
        answer = transcript[index + 1]
        assert answer["role"] == "user"
        answered = [b["tool_use_id"] for b in answer["content"] if b.get("type") == "tool_result"]
        assert sorted(answered) == sorted(ids), (ids, answered)
