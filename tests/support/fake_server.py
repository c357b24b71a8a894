"""A controllable WebSocket server for client tests: each test scripts the server side."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
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
