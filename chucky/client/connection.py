"""One client WebSocket: the asyncio shell around :class:`~chucky.protocol.client.ClientProtocol`.

A :class:`ClientConnection` owns three kinds of tasks, all cancelled by :meth:`close`:

* the **reader** reads every frame as it arrives and routes it: SDK messages and turn errors go
  to the bounded :class:`~chucky.client.inbox.Inbox` the session reads; ``tool_call`` frames go
  to the :class:`~chucky.tool_runner.ToolRunner`, which runs each handler in its own task, so a
  slow handler never holds up other frames or pings;
* the **tool calls** in flight, each in its own task. A call the server abandoned is cancelled
  and not answered (the server no longer waits for it): the one named by a ``control``
  ``tool_cancel`` (our extension, docs/protocol.md section 10); and every call still running when
  :meth:`ClientConnection.interrupt` is called, when the turn ends (its ``result``, or the
  ``error`` frame that ends it) and when the socket is lost. Every call in flight belongs to
  the running turn: a server runs one turn at a time and frames arrive in order, so a call of
  the next turn is only read after the previous turn's ``result``;
* the **keepalive** sends a JSON ``ping`` and a WebSocket ping every ``keepalive_interval``
  seconds; if neither a pong nor any other frame arrives within the next interval (and the
  application is not simply slow to read, which pauses reading on purpose), the server is
  declared gone: the inbox fails with :class:`~chucky.errors.ConnectionError` and the socket is
  aborted. A silent server is therefore detected within about twice the interval.

Every way the socket can end (closed by either side, reset, keepalive timeout) fails the inbox
with a typed error, so a consumer never waits forever and never sees an iterator end silently.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import time
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from .. import __version__
from .._redact import redact, redacting_logger
from ..errors import (
    AuthenticationError,
    ChuckyError,
    ConnectionError,
    HandshakeError,
    InvalidStateError,
    TimeoutError,
    ValidationError,
)
from ..messages import ErrorMessage, ResultMessage, SDKMessage, WireModel
from ..protocol.client import (
    ClientProtocol,
    HandshakeFailed,
    Ignored,
    Pong,
    Ready,
    ServerClosing,
    ServerError,
    SessionInfo,
    ToolCall,
    ToolCancelled,
    TurnFailed,
)
from ..tool_runner import ToolRunner
from ..tools import ToolRegistry, ToolResult
from .hooks import ToolHooks
from .inbox import Inbox

__all__ = ["ClientConnection", "ConnectionSettings"]

logger = redacting_logger("chucky.client")

USER_AGENT: Final = f"chucky-python/{__version__}"
MAX_INBOUND_FRAME: Final = 16 * 1024 * 1024


class ConnectionSettings:
    """Transport settings shared by every session of a client."""

    __slots__ = (
        "hooks",
        "keepalive_interval",
        "max_queue",
        "timeout",
        "token",
        "tool_timeout",
        "url",
    )

    def __init__(
        self,
        *,
        url: str,
        token: str,
        timeout: float | None,
        keepalive_interval: float | None,
        tool_timeout: float | None,
        max_queue: int,
        hooks: ToolHooks | None = None,
    ) -> None:
        self.hooks = hooks
        self.url = url
        self.token = token
        self.timeout = timeout
        self.keepalive_interval = keepalive_interval
        self.tool_timeout = tool_timeout
        self.max_queue = max_queue


def _url_with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValidationError(f"invalid url {url!r}: expected ws:// or wss://")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _refusal(body: bytes | bytearray | None) -> tuple[str, dict[str, Any]]:
    """The server's message and scalar details from a refused upgrade's body, if it is the
    error shape of docs/protocol.md section 9 (``{"error": {"message", "code", "details"?}}``; an
    older server's ``{"error": "text"}`` too); ``("", {})`` for any other body."""
    try:
        decoded = json.loads(body or b"")
    except (ValueError, RecursionError):
        return "", {}
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, str):
        return redact(error[:300]), {}
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return "", {}
    details = error.get("details")
    kept = {
        key: value
        for key, value in (details.items() if isinstance(details, dict) else ())
        if isinstance(key, str) and isinstance(value, str | int | float | bool)
    }
    return redact(error["message"][:300]), dict(list(kept.items())[:10])


def _handshake_error(exc: BaseException, url: str) -> ChuckyError:
    where = redact(url)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        said, details = _refusal(exc.response.body)
        message = f"server at {where} refused the WebSocket upgrade: HTTP {status}"
        if said:
            message = f"{message}: {said}"
        details["status"] = status
        if status in (401, 403):
            return AuthenticationError(f"Unauthorized: {message}", details=details)
        return HandshakeError(message, details=details)
    if isinstance(exc, InvalidURI):
        return ValidationError(f"invalid url {where}: {exc}")
    if isinstance(exc, InvalidHandshake):
        return HandshakeError(f"WebSocket handshake with {where} failed: {exc}")
    if isinstance(exc, builtins.TimeoutError):
        return TimeoutError(f"timed out connecting to {where}")
    return ConnectionError(f"cannot connect to {where}: {exc}")


class ClientConnection:
    """An open, initialised WebSocket to a Chucky server (see the module docstring)."""

    def __init__(
        self,
        settings: ConnectionSettings,
        init_payload: dict[str, Any],
        registry: ToolRegistry,
        *,
        session_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.proto = ClientProtocol(init_payload, session_id=session_id)
        self.inbox: Inbox[SDKMessage] = Inbox(settings.max_queue)
        self.session_info: dict[str, Any] = {}
        self._registry = registry
        self._ws: WebSocket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._runner = ToolRunner(
            registry,
            self._send_tool_result,
            timeout=settings.tool_timeout,
            hooks=settings.hooks,
            session_id=lambda: self.proto.session_id,
        )
        self._inbound = 0  # frames received; the keepalive compares counts
        self._last_error: ChuckyError | None = None
        self._closed = False

    @property
    def session_id(self) -> str | None:
        return self.proto.session_id

    # -- opening -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, send ``init``, and wait for ``ready``.

        Raises:
            AuthenticationError: the server refused the token.
            HandshakeError: the upgrade failed or the server refused the session.
            ConnectionError: the server cannot be reached.
            TimeoutError: no ``ready`` within ``timeout`` seconds.
        """
        settings = self.settings
        url = _url_with_token(settings.url, settings.token)
        try:
            async with asyncio.timeout(settings.timeout):
                self._ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {settings.token}"},
                    user_agent_header=USER_AGENT,
                    open_timeout=None,
                    ping_interval=None,  # the keepalive task pings (see the module docstring)
                    close_timeout=5,
                    max_size=MAX_INBOUND_FRAME,
                    proxy=None,
                    logger=redacting_logger("chucky.client.websockets"),
                )
        except (OSError, InvalidHandshake, InvalidURI, builtins.TimeoutError) as exc:
            raise _handshake_error(exc, url) from exc
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._reader = asyncio.create_task(self._read(), name="chucky-reader")
        try:
            await self._ws.send(self.proto.start())
            async with asyncio.timeout(settings.timeout):
                await asyncio.shield(self._ready)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, ChuckyError):
                raise
            if isinstance(exc, builtins.TimeoutError):
                raise TimeoutError(
                    f"no ready from {redact(url)} within {settings.timeout:g} s"
                ) from exc
            if isinstance(exc, ConnectionClosed):
                raise self._closed_error(exc) from exc
            raise
        if settings.keepalive_interval:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="chucky-keepalive")

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, text: str) -> None:
        if self._ws is None or self._closed:
            raise InvalidStateError("the connection is closed")
        try:
            # A lone surrogate cannot be UTF-8 and websockets would drop the connection; written
            # as its JSON escape it decodes back to the same string on the other side.
            await self._ws.send(text.encode("utf-8", "backslashreplace"), text=True)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def send_turn(self, content: str | list[dict[str, Any]]) -> None:
        """Start a turn.

        Raises:
            ConnectionError: the connection is gone.
            InvalidStateError: the connection is closing.
        """
        if self.inbox.error is not None:
            raise self.inbox.error
        await self._send(self.proto.send_turn(content))

    async def send_control(self, action: str) -> None:
        await self._send(self.proto.send_control(action))

    async def interrupt(self) -> None:
        """Cancel the tool calls still running (without answering them), then send ``control``
        ``interrupt``.

        Raises:
            ConnectionError: the connection is gone (the calls are cancelled all the same).
            InvalidStateError: the connection is closed.
        """
        # Cancelled first: a handler finishing while the frame is on its way must not answer.
        self._runner.cancel_all(reason="interrupted")
        await self.send_control("interrupt")

    async def _send_tool_result(self, call_id: str, result: ToolResult) -> None:
        await self._send(self.proto.send_tool_result(call_id, result.to_wire()))

    # -- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        proto = self.proto
        inbox = self.inbox
        error: ChuckyError | None = None
        try:
            async for text in ws:
                self._inbound += 1
                event = proto.receive(text)
                if isinstance(event, WireModel):
                    if isinstance(event, ResultMessage):
                        # The turn is over: the server waits for none of its calls any more.
                        self._runner.cancel_all(reason="turn_ended")
                        await self._runner.turn_ended(event)  # Stop hooks, before the app sees it
                    if not inbox.try_put(event):
                        await inbox.put(event)  # full: wait (backpressure)
                elif isinstance(event, ToolCall):
                    self._runner.submit(event.call_id, event.tool_name, event.input)
                elif isinstance(event, ToolCancelled):
                    self._runner.cancel(event.call_id, reason=event.reason)
                elif isinstance(event, TurnFailed):
                    self._runner.cancel_all(reason="turn_ended")
                    await inbox.put(ErrorMessage.from_exception(event.error, event.payload))
                else:
                    self._on_control(event)
        except ConnectionClosed as exc:
            error = self._closed_error(exc)
        except asyncio.CancelledError:
            error = ConnectionError("the connection was closed by the client")
            raise
        except Exception as exc:  # a bug; never leave the consumer waiting
            logger.exception("reader failed")
            error = ConnectionError(f"the connection failed: {exc}")
        finally:
            self.proto.connection_lost()
            # No answer can reach the server any more, and it abandons pending calls on close.
            self._runner.cancel_all(reason="connection_lost")
            if error is None:
                error = self._closed_error(None)
            self._fail(error)

    def _on_control(self, event: object) -> None:
        if isinstance(event, Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif isinstance(event, SessionInfo):
            self.session_info = event.data
        elif isinstance(event, HandshakeFailed):
            self._last_error = event.error
            self._refuse(event.error)
        elif isinstance(event, ServerError):
            logger.warning("server error outside a turn: %s", event.error.message)
            self._last_error = event.error
        elif isinstance(event, Ignored):
            logger.debug("ignored frame: %s", event.reason)
        elif isinstance(event, Pong | ServerClosing):
            pass

    def _closed_error(self, exc: ConnectionClosed | None) -> ChuckyError:
        if self._last_error is not None:
            return self._last_error
        if exc is None:
            return ConnectionError("the server closed the connection")
        rcvd = exc.rcvd
        if rcvd is None:
            return ConnectionError("the connection was lost (no close frame)")
        return ConnectionError(
            f"the server closed the connection (code {rcvd.code}"
            + (f": {rcvd.reason})" if rcvd.reason else ")"),
            details={"closeCode": rcvd.code, "closeReason": rcvd.reason},
        )

    def _refuse(self, error: ChuckyError) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            # Mark it retrieved: open() may learn of the failure from the closed socket first.
            self._ready.exception()

    def _fail(self, error: ChuckyError) -> None:
        self.inbox.fail(error)
        self._refuse(error)

    # -- keepalive -----------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        interval = self.settings.keepalive_interval
        assert interval
        assert self._ws is not None
        ws = self._ws
        while True:
            await asyncio.sleep(interval)
            if self.inbox.full:
                continue  # the application is slow to read; reading is paused on purpose
            seen = self._inbound
            try:
                await ws.send(self.proto.send_ping(int(time.time() * 1000)))
                pong = await ws.ping()
            except ConnectionClosed:
                return
            try:
                async with asyncio.timeout(interval):
                    await pong
                continue
            except builtins.TimeoutError:
                pass
            except ConnectionClosed:
                return
            if self._inbound != seen or self.inbox.full:
                continue
            error = ConnectionError(
                f"the server stopped answering: no pong and no frame for {interval:g} s",
                details={"reason": "keepalive_timeout"},
            )
            self._last_error = error
            self._fail(error)
            ws.transport.abort()
            return

    # -- closing -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the socket and stop every task. Idempotent; safe to call from any state."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        self._fail(InvalidStateError("the session is closed"))
        # Cleanup must finish even if the caller is being cancelled.
        await asyncio.shield(self._shutdown(ws))

    async def _shutdown(self, ws: WebSocket | None) -> None:
        await self._runner.aclose()
        tasks = [t for t in (self._keepalive, self._reader) if t is not None]
        if ws is not None:
            try:
                with contextlib.suppress(Exception):
                    await ws.close()
            finally:
                # A close handshake cut short (cancelled: a sync client's loop shutting down)
                # must not leave the socket open; after a completed close this does nothing.
                ws.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
