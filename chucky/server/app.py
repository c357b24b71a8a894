"""The server: a WebSocket endpoint at ``/ws`` plus small HTTP routes.

The contract is docs/protocol.md, sections 1 and 9.

``GET /metrics`` is served on the main listener, or with ``metrics_port`` on a listener of its
own (only that route), to whom its :class:`~chucky.server.metrics.MetricsGate` lets in.

Usage::

    secret = "hk_live_" + secrets.token_hex(16)  # the form every project secret has
    async with ChuckyServer(ServerConfig(port=0, projects={"proj": [secret]})) as server:
        print(server.url)            # ws://127.0.0.1:<port>/ws
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http
import json
import os
import secrets
import signal
import socket
import sys
import time
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import websockets.http11
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__
from .._redact import redact, redact_library_loggers, redacting_logger
from ..errors import ChuckyError, InvalidStateError
from ..protocol.server import ServerProtocol
from ..tokens import TokenClaims
from .auth import authenticate, extract_token
from .budget import BudgetSettings, Settlement
from .config import DEFAULT_HOST, ServerConfig
from .connection import CLOSE_POLICY, Connection, FrameSocket
from .http import HttpExchanges, error_body, serve_http_and_ws
from .metrics import MetricsAccess, MetricsGate, ServerMetrics
from .nodes import is_dead, node_record
from .providers.scripted import ScriptedProvider
from .routes import Routes
from .routing import ModelRouter, RoutingConfig
from .store import NodeRecord, Store
from .turn_runner import public_error

__all__ = ["ChuckyServer"]

logger = redacting_logger("chucky.server")

WS_PATHS = frozenset({"/ws", "/ws/"})
SECRET_CACHE_SECONDS = 5.0

# docs/protocol.md section 1: URLs of at least 16 KiB (a token may carry a long system prompt).
# websockets reads this module constant at parse time; raise it, never lower it.
_MAX_URL = 64 * 1024
if websockets.http11.MAX_LINE_LENGTH < _MAX_URL:
    websockets.http11.MAX_LINE_LENGTH = _MAX_URL


class ChuckyServer:
    """A Chucky-compatible server.

    Args:
        config: Listening address, projects, limits and the database.
        router: Model routing; by default ``config.routing_file``, else every model is served
            by the scripted provider (``chucky serve`` passes
            :func:`~chucky.server.routing.default_routing` instead).
        store: The state store; by default a :class:`~chucky.server.sql.SqlStore` on
            ``config.database_url`` (a SQLite file in the user's data directory if unset).
            The server opens it at :meth:`start` and closes it at :meth:`close`.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        router: ModelRouter | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        if router is None and self.config.routing_file is not None:
            router = ModelRouter.from_config(RoutingConfig.from_toml(self.config.routing_file))
        self.router = router or ModelRouter(ScriptedProvider())
        if store is None:
            from .sql import SqlStore, default_database_url

            store = SqlStore(
                self.config.database_url or default_database_url(),
                sqlite_synchronous=self.config.sqlite_synchronous,
            )
        self.store = store
        self.metrics = ServerMetrics()
        self.node_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"
        self.node = node_record(self.node_id)
        self.budget_settings = BudgetSettings(
            min_output_tokens=self.config.min_output_tokens,
            compute_grant=self.config.compute_grant,
            reservation_ttl=self.config.lease_ttl,
        )
        self._server: Server | None = None
        self._http = HttpExchanges()
        self._metrics_server: Server | None = None
        self._metrics_http = HttpExchanges()
        self._connections: set[Connection] = set()
        self._pending: set[asyncio.Task[Any]] = set()
        self._unsettled: list[Settlement] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._secrets: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, then start listening.

        Raises:
            InvalidStateError: the server was already started.
            StoreError: the database cannot be used.
            OSError: the address is in use or not available.
        """
        if self._server is not None:
            raise InvalidStateError("server already started")
        redact_library_loggers()
        # One line per provider whose package is absent: its turns will fail, say so now.
        for missing in self.router.missing_providers():
            logger.warning("%s", missing.message)
        config = self.config
        await self.store.open()
        now = time.time()
        await self._warn_shadowed_projects()
        await self.store.register_node(self.node, now)
        separate = config.metrics_port is not None
        main_gate = (
            None if separate else MetricsGate.for_listener(config.host, config.metrics_token)
        )
        try:
            # Before listening: a client resuming a session of a process killed on this host
            # finds it free at once, not after --lease-ttl.
            await self.reclaim_dead_nodes(now)
            await self.store.recover(now)
            self._server = await serve_http_and_ws(
                self._handle,
                Routes(self, metrics=main_gate),
                config.host,
                config.port,
                exchanges=self._http,
                process_request=self._process_request,
                compression=None,
                max_size=config.max_frame_bytes,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                server_header=f"chucky/{__version__}",
                logger=redacting_logger("chucky.server.websockets"),
            )
            if config.metrics_port is not None:
                try:
                    self._metrics_server = await self._serve_metrics(config.metrics_port)
                except OSError as exc:
                    # Which listener failed: the command line names the right flag.
                    exc.filename = "--metrics-port"
                    raise
        except BaseException:
            await self._close_listeners()
            with contextlib.suppress(ChuckyError):
                await self.store.deregister_node(self.node_id)
            raise
        self._heartbeat = asyncio.create_task(self._beat(), name="chucky-heartbeat")
        logger.info("listening on %s (store %s, node %s)", self.url, self.store.url, self.node_id)
        if main_gate is not None:
            logger.info("GET /metrics on %s: %s", self.http_url, _ACCESS[main_gate.access])
        else:
            logger.info("GET /metrics on %s only", self.metrics_url)

    async def _serve_metrics(self, port: int) -> Server:
        """The listener of ``GET /metrics`` alone (``metrics_port``)."""
        host = self.config.metrics_host or DEFAULT_HOST
        gate = MetricsGate.for_listener(host, self.config.metrics_token)
        return await serve_http_and_ws(
            _no_websocket,
            Routes(self, metrics=gate, sessions=False),
            host,
            port,
            exchanges=self._metrics_http,
            process_request=_refuse_websocket,
            compression=None,
            server_header=f"chucky/{__version__}",
            logger=redacting_logger("chucky.server.websockets"),
        )

    async def _close_listeners(self) -> None:
        """Close the listeners at once (a start that failed half-way)."""
        for server in (self._server, self._metrics_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._server = self._metrics_server = None

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

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP routes (``/healthz``, ``/usage``, ``/prompt``, ``/metrics``)."""
        return self.url.removeprefix("ws").replace("://", "http://", 1).removesuffix("/ws")

    @property
    def metrics_url(self) -> str:
        """The URL of ``GET /metrics``: on its own listener with ``metrics_port``, else on the
        main one."""
        if self._metrics_server is None:
            return f"{self.http_url}/metrics"
        host = self.config.metrics_host or DEFAULT_HOST
        if ":" in host:
            host = f"[{host}]"
        port = next(iter(self._metrics_server.sockets)).getsockname()[1]
        return f"http://{host}:{port}/metrics"

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop without losing anything (issue: graceful shutdown).

        Stop accepting; let running turns finish within ``grace`` seconds (default
        ``config.shutdown_grace``); interrupt the rest, which still end with their ``result``;
        refuse queued turns with an ``error`` frame; close every socket with 1001; settle the
        ledger and release the leases (each connection does as it ends); close the store.
        """
        if self._closed:
            return
        self._closed = True
        grace = self.config.shutdown_grace if grace is None else grace
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=False)  # the listener only; sockets drain below
        self._http.close()
        await asyncio.gather(
            *(connection.drain(grace) for connection in list(self._connections)),
            self._http.shutdown(grace + 1.0),  # POST /prompt answers once its turn has ended
            return_exceptions=True,
        )
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:  # served until the sockets were drained
            metrics_server.close()
            self._metrics_http.close()
            await self._metrics_http.shutdown(1.0)
            await metrics_server.wait_closed()
        # Settlements and saves still in flight finish before the store closes.
        while self._pending:
            await asyncio.wait(set(self._pending))
        await self._settle_deferred()
        await self.router.aclose()
        if server is not None:  # started: registered
            try:
                await self.store.deregister_node(self.node_id)
            except ChuckyError:
                logger.exception("could not deregister node %s", self.node_id)
        await self.store.aclose()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` (a turn's store work) alive until it ends: :meth:`shutdown` waits for
        it before closing the store."""
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def defer_settlements(self, settlements: list[Settlement]) -> None:
        """Settlements the store refused (it was down): retried with every heartbeat. Until
        then the reservations stay held, so the budget still holds."""
        self._unsettled.extend(settlements)

    async def _settle_deferred(self) -> None:
        pending, self._unsettled = self._unsettled, []
        now = time.time()
        for index, (reservation, actual) in enumerate(pending):
            try:
                await self.store.settle(reservation, actual, now)
            except ChuckyError:
                self._unsettled.extend(pending[index:])
                logger.warning("settling %d reservations failed; retrying", len(pending) - index)
                return

    async def close(self) -> None:
        """Shut down at once: running turns are interrupted (each still gets its ``result``)."""
        await self.shutdown(grace=0)

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

    async def _beat(self) -> None:
        """Keep this node's leases and reservations alive; take back those of dead nodes (at
        once on this host, when they expire elsewhere)."""
        ttl = self.config.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                now = time.time()
                await self.store.heartbeat(self.node_id, now, ttl)
                await self.reclaim_dead_nodes(now)
                await self.store.recover(now)
                await self._settle_deferred()
            except ChuckyError:
                logger.exception("heartbeat failed")

    async def reclaim_dead_nodes(self, now: float) -> int:
        """Take back the leases and reservations of the nodes of this host whose process is
        provably gone (:mod:`chucky.server.nodes`); returns how many nodes."""
        reclaimed = await self.store.reclaim_nodes(self.node.host, self._is_dead, now)
        if reclaimed.nodes:
            logger.warning(
                "reclaimed %d dead node(s) of this host: %d lease(s) released, %d open "
                "reservation(s) charged in full",
                reclaimed.nodes,
                reclaimed.leases,
                reclaimed.reservations,
            )
        return reclaimed.nodes

    def _is_dead(self, node: NodeRecord) -> bool:
        return node.node_id != self.node_id and is_dead(node.pid, node.process_start)

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down."""
        return self._closed

    def holds_live(self, session_id: str) -> bool:
        """Whether a socket of this node that is not closing serves ``session_id`` (or the
        session waits, detached, for its client to resume it)."""
        return any(
            c.session is not None
            and c.session.session_id == session_id
            and (c.detached or not c.closing)
            for c in self._connections
        )

    def holder_of(self, session_id: str, claims: TokenClaims) -> Connection | None:
        """The connection of this node that serves ``session_id`` for this user (attached to
        a socket or detached), if it has not ended."""
        for c in self._connections:
            if (
                c.session is not None
                and c.session.session_id == session_id
                and (c.claims.iss, c.claims.sub) == (claims.iss, claims.sub)
                and not c.ended.is_set()
            ):
                return c
        return None

    def forget(self, connection: Connection) -> None:
        """``connection`` ended: its session is settled and released."""
        self._connections.discard(connection)

    def releasing(self, claims: TokenClaims) -> bool:
        """Whether a socket of this node of the same user is closing with a lease still held."""
        return any(
            c.closing
            and not c.detached
            and c.opened is not None
            and (c.claims.iss, c.claims.sub) == (claims.iss, claims.sub)
            for c in self._connections
        )

    async def _warn_shadowed_projects(self) -> None:
        """Say so when the database holds secrets for a project the configuration defines:
        this process does not accept them (:meth:`secrets_of`)."""
        for project_id in self.config.projects:
            stored = await self.store.get_project(project_id)
            if stored is not None and stored.secrets:
                logger.warning(
                    "project %s is configured (--project/CHUCKY_PROJECTS): this server "
                    "accepts only the configured secrets, not the %d the database holds for it",
                    project_id,
                    len(stored.secrets),
                )

    async def secrets_of(self, project_id: str) -> tuple[str, ...]:
        """The project's active secrets.

        A project of ``config.projects`` (``--project``, ``CHUCKY_PROJECTS``) has exactly the
        configured secrets, which live in this process only: never written to the database,
        so a secret that was once passed stops working when the process that was given it
        ends, and a restart with a new secret revokes the old one. The database's secrets for
        that id are ignored. Any other project's secrets come from the database, cached for a
        few seconds (a revoked secret stops working within ``SECRET_CACHE_SECONDS``).
        """
        configured = self.config.projects.get(project_id)
        if configured is not None:
            return tuple(configured)
        now = time.monotonic()
        cached = self._secrets.get(project_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        project = await self.store.get_project(project_id)
        found = project.secrets if project is not None else ()
        if len(self._secrets) > 10_000:
            self._secrets.clear()
        self._secrets[project_id] = (now + SECRET_CACHE_SECONDS, found)
        return found

    # -- HTTP and WebSocket --------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """WebSocket upgrades only (plain HTTP goes to :class:`~chucky.server.routes.Routes`)."""
        path = urlsplit(request.path).path
        if path in WS_PATHS:
            return None
        status = http.HTTPStatus.NOT_FOUND
        return _json_response(status, error_body(status, f"no WebSocket at {path[:200]}"))

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        token = extract_token(request.path, request.headers)
        try:
            claims = await authenticate(token, self.secrets_of)
        except ChuckyError as failure:
            # Section 1: accept the upgrade, send one error frame, close with 1008.
            exc = public_error(failure)
            logger.info("rejected connection to %s: %s", redact(request.path), redact(exc.message))
            self.metrics.error_sent(exc.code or "INTERNAL_ERROR")
            try:
                await ws.send(ServerProtocol.error(exc))
                await ws.close(CLOSE_POLICY, "unauthorized")
            except ConnectionClosed:
                pass
            return
        await self.run_connection(ws, claims)

    async def run_connection(self, socket: FrameSocket, claims: TokenClaims) -> None:
        """Serve one authenticated socket (a WebSocket, or a ``POST /prompt``) to its end."""
        connection = Connection(self, socket, claims)
        self._connections.add(connection)
        self.metrics.connection_opened()
        try:
            await connection.run()
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
            raise
        finally:
            # The connection leaves _connections when it ends (forget): a session detached
            # for its client to resume it outlives this socket.
            if connection.ended.is_set():
                self._connections.discard(connection)
            self.metrics.connection_closed()


_ACCESS: Final = {
    MetricsAccess.OPEN: "open (a loopback address)",
    MetricsAccess.TOKEN: "with the metrics token",
    MetricsAccess.OFF: "off (403): the server listens beyond localhost and no metrics token is set",
}


async def _no_websocket(ws: ServerConnection) -> None:  # pragma: no cover - never upgraded
    await ws.close()


def _refuse_websocket(connection: ServerConnection, request: Request) -> Response:
    """The metrics listener upgrades nothing."""
    status = http.HTTPStatus.NOT_FOUND
    path = urlsplit(request.path).path
    return _json_response(status, error_body(status, f"no WebSocket at {path[:200]}"))


def _json_response(status: http.HTTPStatus, body: object) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


_GC_THRESHOLDS: Final = (20_000, 10, 50)


async def run_server(
    config: ServerConfig, *, router: ModelRouter | None = None, announce: bool = True
) -> None:
    """Run a server until SIGTERM or SIGINT, then shut it down gracefully.

    When ``announce``, the first line printed is the listening URL, the second the database,
    and with ``metrics_port`` a third the URL of ``GET /metrics``; a signal that arrives during
    the shutdown is answered with one line on stderr (the shutdown goes on: it is bounded by the
    grace). ``router``: as for :class:`ChuckyServer`.

    Raises:
        OSError: the address is in use or not available.
        StoreError: the database cannot be used.
    """
    server = ChuckyServer(config, router=router)
    try:
        await server.start()
    except BaseException:
        await server.shutdown(grace=0)  # what a failed start opened (the store) is closed
        raise
    # The cyclic collector, tuned for a server (measured in docs/benchmarks.md: with 500 busy
    # sessions its pauses were most of the p99 latency). What is alive now (modules, the model
    # catalog, the store's engines) lives as long as the process: frozen, out of its sight.
    # Young collections every 20,000 allocations instead of 700, full ones 5x rarer: a turn
    # allocates thousands of short-lived objects that reference counting frees anyway.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    if announce:
        print(f"chucky serve listening on {server.url}", flush=True)
        print(f"chucky serve database {server.store.url}", flush=True)
        if config.metrics_port is not None:
            print(f"chucky serve metrics on {server.metrics_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and announce:
            # A second Ctrl-C: the shutdown already runs, and ends within its bound.
            print(
                f"chucky serve: already shutting down (running turns have up to "
                f"{config.shutdown_grace:g} s to finish)",
                file=sys.stderr,
                flush=True,
            )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await stop.wait()
        logger.info("shutting down (grace %g s)", config.shutdown_grace)
    finally:
        await server.shutdown()  # the handlers stay: a signal now must not interrupt it
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
