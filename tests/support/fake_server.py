"""A controllable WebSocket server for client tests: each test scripts the server side."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

Handler = Callable[["Peer"], Awaitable[None]]

READY = {"type": "control", "payload": {"action": "ready"}}


class Peer:
    """The server side of one connection, with JSON helpers and a record of what came in."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    @property
    def request(self) -> Request:
        assert self.ws.request is not None
        return self.ws.request

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            frame: dict[str, Any] = json.loads(await self.ws.recv())
        self.received.append(frame)
        return frame

    async def recv_type(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        """The next frame of type ``kind`` (answering JSON pings on the way)."""
        while True:
            frame = await self.recv(within)
            if frame.get("type") == kind:
                return frame
            if frame.get("type") == "ping":
                await self.send({"type": "pong", "payload": frame.get("payload", {})})

    async def handshake(self) -> dict[str, Any]:
        """Send ``ready``, read ``init``; returns the init payload."""
        await self.send(READY)
        init = await self.recv_type("init")
        payload: dict[str, Any] = init["payload"]
        return payload

    async def result(self, text: str = "ok", session_id: str = "sess-1") -> None:
        await self.send(
            {
                "type": "result",
                "subtype": "success",
                "uuid": "r1",
                "session_id": session_id,
                "is_error": False,
                "num_turns": 1,
                "duration_ms": 1,
                "duration_api_ms": 1,
                "total_cost_usd": 0.0,
                "usage": {"input_tokens": 1, "output_tokens": 1},
                "result": text,
            }
        )

    async def assistant(self, text: str, session_id: str = "sess-1") -> None:
        await self.send(
            {
                "type": "assistant",
                "uuid": "a1",
                "session_id": session_id,
                "parent_tool_use_id": None,
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            }
        )


class FakeServer:
    def __init__(self, url: str, peers: list[Peer]) -> None:
        self.url = url
        self.peers = peers


@asynccontextmanager
async def fake_server(
    handler: Handler,
    *,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> AsyncIterator[FakeServer]:
    """Serve ``handler`` on 127.0.0.1 (free port); yields the ws:// URL and the peers seen."""
    peers: list[Peer] = []
    handlers: set[asyncio.Task[None]] = set()

    async def run(ws: ServerConnection) -> None:
        peer = Peer(ws)
        peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(peer)
        except asyncio.CancelledError:
            ws.transport.abort()

    async with serve(
        run, "127.0.0.1", 0, process_request=process_request, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        try:
            yield FakeServer(f"ws://127.0.0.1:{port}/ws", peers)
        finally:
            # Handlers that wait on purpose (silent servers) must not hold up the shutdown.
            for task in handlers:
                task.cancel()


# -- the seq extension (docs/protocol.md section 10), scripted ------------------------------------


def assistant_frame(text: str, uuid: str, session_id: str = "sess-1") -> dict[str, Any]:
    return {
        "type": "assistant",
        "uuid": uuid,
        "session_id": session_id,
        "parent_tool_use_id": None,
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
    }


def delta_frame(text: str, uuid: str, session_id: str = "sess-1") -> dict[str, Any]:
    return {
        "type": "stream_event",
        "uuid": uuid,
        "session_id": session_id,
        "parent_tool_use_id": None,
        "event": {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        },
    }


def result_frame(text: str, uuid: str, session_id: str = "sess-1") -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "success",
        "uuid": uuid,
        "session_id": session_id,
        "is_error": False,
        "num_turns": 1,
        "duration_ms": 1,
        "duration_api_ms": 1,
        "total_cost_usd": 0.0,
        "usage": {"input_tokens": 1, "output_tokens": 1},
        "result": text,
    }


def tool_call_frame(call_id: str, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "payload": {"callId": call_id, "toolName": tool_name, "input": arguments},
    }


class SeqLog:
    """The server side of one ``seq`` session across its sockets: numbers the frames, keeps
    them all (an unbounded replay buffer), replays them on a resume.

    A frame "sent" into a socket that is gone is kept all the same, as a server's replay
    buffer keeps what it sent before it saw the socket die.
    """

    def __init__(self, session_id: str = "sess-1") -> None:
        self.session_id = session_id
        self.frames: list[dict[str, Any]] = []
        self.acks: list[int] = []
        self.resumes: list[dict[str, Any]] = []

    @property
    def last_seq(self) -> int:
        return len(self.frames)

    def number(self, frame: dict[str, Any]) -> dict[str, Any]:
        numbered = {**frame, "seq": len(self.frames) + 1}
        self.frames.append(numbered)
        return numbered

    async def send(self, peer: Peer | None, frame: dict[str, Any]) -> bool:
        """Number ``frame``, keep it, and send it on ``peer`` if it is still there; whether it
        went out."""
        numbered = self.number(frame)
        if peer is None:
            return False
        try:
            await peer.send(numbered)
        except ConnectionClosed:
            return False
        return True

    async def session_info(self, peer: Peer, **data: Any) -> None:
        await self.send(
            peer,
            {
                "type": "control",
                "payload": {
                    "action": "session_info",
                    "data": {
                        "sessionId": self.session_id,
                        "resume": {"graceSeconds": 30, "replayFrames": 4096, "replayBytes": 1},
                        **data,
                    },
                },
            },
        )

    async def resumed(
        self,
        peer: Peer,
        last_seq: int,
        *,
        overlap: int = 0,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """``control`` ``resumed``, then every frame after ``last_seq`` (and, with
        ``overlap``, that many before it again: a server that repeats itself); returns how
        many were replayed. ``then`` runs between the two (to read what the client sends
        once resumed, before the replay)."""
        replay = self.frames[max(0, last_seq - overlap) :]
        await peer.send(
            {
                "type": "control",
                "payload": {
                    "action": "resumed",
                    "data": {
                        "sessionId": self.session_id,
                        "lastSeq": last_seq,
                        "replayed": len(replay),
                    },
                },
            }
        )
        if then is not None:
            await then()
        for frame in replay:
            await peer.send(frame)
        return len(replay)

    async def replay_unavailable(self, peer: Peer, last_seq: int) -> None:
        """The non-fatal ``replay_unavailable`` error, then a new numbering from 1."""
        await peer.send(
            {
                "type": "error",
                "payload": {
                    "message": "session resumed from the store: replay unavailable",
                    "code": "SESSION_ERROR",
                    "details": {"reason": "replay_unavailable", "lastSeq": last_seq},
                },
            }
        )
        self.frames = []

    async def recv_resume(self, peer: Peer) -> dict[str, Any]:
        """Send ``ready`` and read the ``init`` of a resume (asserting it is one)."""
        init = await peer.handshake()
        assert init.get("sessionId") == self.session_id, init
        assert isinstance(init.get("lastSeq"), int), init
        self.resumes.append(init)
        return init

    def read_acks(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Record ``frame`` if it is an ``ack``; returns it."""
        payload = frame.get("payload") or {}
        if frame.get("type") == "control" and payload.get("action") == "ack":
            self.acks.append(payload["data"]["seq"])
        return frame
