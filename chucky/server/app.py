"""The server: a WebSocket endpoint at ``/ws`` plus small HTTP routes (PROTOCOL.md 1 and 9).

Usage::

    async with ChuckyServer(ServerConfig(port=0, projects={"proj": ["hk_live_..."]})) as server:
        print(server.url)            # ws://127.0.0.1:<port>/ws
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from types import TracebackType
from urllib.parse import urlsplit

import websockets.http11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__
from .._redact import redact, redacting_logger
from ..errors import ChuckyError, InvalidStateError, SessionError
from ..protocol.server import ServerProtocol
from .auth import authenticate, extract_token
from .config import ServerConfig
from .connection import CLOSE_POLICY, Connection
from .providers.scripted import ScriptedProvider
from .routing import ModelRouter
from .store import MemoryStore, SessionStore

__all__ = ["ChuckyServer"]

logger = logging.getLogger("chucky.server")

WS_PATHS = frozenset({"/ws", "/ws/"})

# PROTOCOL.md section 1: URLs of at least 16 KiB (a token may carry a long system prompt).
# websockets reads this module constant at parse time; raise it, never lower it.
_MAX_URL = 64 * 1024
if websockets.http11.MAX_LINE_LENGTH < _MAX_URL:
    websockets.http11.MAX_LINE_LENGTH = _MAX_URL


class ChuckyServer:
    """A Chucky-compatible server.

    Args:
        config: Listening address, projects and limits.
        router: Model routing; by default every model is served by the scripted provider.
        store: Session storage; by default in memory.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        router: ModelRouter | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.router = router or ModelRouter(ScriptedProvider())
        self.store = store or MemoryStore(max_sessions=self.config.max_sessions)
        self._server: Server | None = None
        self._active: dict[str, Connection] = {}
        self._connections: set[Connection] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.

        Raises:
            InvalidStateError: the server was already started.
            OSError: the address is in use or not available.
        """
        if self._server is not None:
            raise InvalidStateError("server already started")
        config = self.config
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            compression=None,
            max_size=config.max_frame_bytes,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            server_header=f"chucky/{__version__}",
            logger=redacting_logger("chucky.server.websockets"),
        )
        logger.info("listening on %s", self.url)

    @property
    def port(self) -> int:
        if self._server is None:
            raise InvalidStateError("server not started")
        sockname = next(iter(self._server.sockets)).getsockname()
        return int(sockname[1])

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/ws"

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close every connection, release the provider and store."""
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        await self.router.aclose()
        await self.store.aclose()

    async def __aenter__(self) -> ChuckyServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sessions held by live connections (node-local) ----------------------------------------

    def claim_session(self, session_id: str, connection: Connection) -> None:
        """Mark ``session_id`` as served by ``connection``.

        Raises:
            SessionError: another live connection serves it (``session_busy``).
        """
        holder = self._active.get(session_id)
        if holder is not None and holder is not connection:
            raise SessionError(
                "Session busy: it is open on another connection",
                details={"reason": "session_busy"},
            )
        self._active[session_id] = connection

    def release_session(self, session_id: str, connection: Connection) -> None:
        if self._active.get(session_id) is connection:
            del self._active[session_id]

    # -- HTTP and WebSocket --------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in WS_PATHS:
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return _json_response(
                    http.HTTPStatus.UPGRADE_REQUIRED,
                    {"error": "this endpoint speaks WebSocket"},
                )
            return None
        if path == "/healthz":
            return _json_response(http.HTTPStatus.OK, {"status": "ok", "version": __version__})
        return _json_response(http.HTTPStatus.NOT_FOUND, {"error": f"no route for {path}"})

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        token = extract_token(request.path, request.headers)
        try:
            claims = authenticate(token, self.config.projects)
        except ChuckyError as exc:
            # Section 1: accept the upgrade, send one error frame, close with 1008.
            logger.info("rejected connection to %s: %s", redact(request.path), redact(exc.message))
            try:
                await ws.send(ServerProtocol.error(exc))
                await ws.close(CLOSE_POLICY, "unauthorized")
            except ConnectionClosed:
                pass
            return
        connection = Connection(self, ws, claims)
        self._connections.add(connection)
        try:
            await connection.run()
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
            raise
        finally:
            self._connections.discard(connection)


def _json_response(status: http.HTTPStatus, body: object) -> Response:
    data = json.dumps(body).encode()
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


async def run_server(config: ServerConfig, *, announce: bool = True) -> None:
    """Run a server until cancelled; print the listening URL first when ``announce``."""
    server = ChuckyServer(config)
    await server.start()
    if announce:
        print(f"chucky serve listening on {server.url}", flush=True)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        pass
    finally:
        await server.close()
