"""A session's connection: the asyncio shell around
:class:`~chucky.protocol.client.ClientProtocol`.

A :class:`ClientConnection` owns four kinds of tasks, all cancelled by :meth:`close`:

* the **reader** reads every frame as it arrives and routes it: SDK messages and turn errors go
  to the bounded :class:`~chucky.client.inbox.Inbox` the session reads; ``tool_call`` frames go
  to the :class:`~chucky.tool_runner.ToolRunner`, which runs each handler in its own task, so a
  slow handler never holds up other frames or pings;
* the **tool calls** in flight, each in its own task. A call the server abandoned is cancelled
  and not answered (the server no longer waits for it): the one named by a ``control``
  ``tool_cancel`` (our extension, docs/protocol.md section 10); and every call still running when
  :meth:`ClientConnection.interrupt` is called, when the turn ends (its ``result``, or the
  ``error`` frame that ends it) and when the socket is lost for good (not when the session is
  resumed, below; a handler runs at most once per ``callId``). Every call in flight belongs to
  the running turn: a server runs one turn at a time and frames arrive in order, so a call of
  the next turn is only read after the previous turn's ``result``;
* the **keepalive** sends a JSON ``ping`` and a WebSocket ping every ``keepalive_interval``
  seconds; if neither a pong nor any other frame arrives within the next interval (and the
  application is not simply slow to read, which pauses reading on purpose), the server is
  declared gone: the socket is aborted, and the reader resumes the session or fails the inbox
  with :class:`~chucky.errors.ConnectionError`. A silent server is therefore detected within
  about twice the interval;
* the **reconnect**, while a lost socket is being replaced (below).

One connection may outlive its socket. When the client may reconnect (``reconnect=True``, it
announces our ``seq`` extension) and the server numbers its frames, a socket lost unexpectedly
(no close frame, a close code that says "try again", a keepalive timeout) does not end the
session: the connection is **detached** (tool handlers go on; their results wait), and a
:class:`~chucky.client.reconnect.Reconnector` opens new sockets until one resumes the session
(docs/protocol.md section 10). The inbox is the same throughout, so the consumer reads on; a new
reader serves each socket. Then the connection sends every turn not ended again (same
``turnId``) and the tool results produced meanwhile, and goes on.

Every other way the socket can end (closed by either side, reset without ``seq``, keepalive
timeout, a reconnect given up) fails the inbox with a typed error, so a consumer never waits
forever and never sees an iterator end silently.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from .._redact import redact, redacting_logger
from ..errors import ChuckyError, ConnectionError, InvalidStateError, TimeoutError
from ..messages import ErrorMessage, ResultMessage, SDKMessage, WireModel
from ..protocol.client import (
    ClientEvent,
    ClientProtocol,
    ClientState,
    HandshakeFailed,
    Ignored,
    Pong,
    Ready,
    ReplayUnavailable,
    Resumed,
    ResumeFailed,
    ServerClosing,
    ServerError,
    SessionInfo,
    ToolCall,
    ToolCancelled,
    TurnFailed,
)
from ..tool_runner import ToolRunner
from ..tools import ToolRegistry, ToolResult
from .dial import WebSocket, dial
from .hooks import ToolHooks
from .inbox import Inbox
from .reconnect import (
    RESUMABLE_CLOSE_CODES,
    Reconnector,
    ReconnectOutcome,
    ReconnectPolicy,
    TokenProvider,
    get_token,
)

__all__ = ["ClientConnection", "ConnectionSettings"]

logger = redacting_logger("chucky.client")


class ConnectionSettings:
    """Transport settings shared by every session of a client.

    ``reconnect`` is the reconnect policy, ``None`` when the client does not reconnect;
    ``token_provider`` (if given) supplies the token of every new socket.
    """

    __slots__ = (
        "hooks",
        "keepalive_interval",
        "max_queue",
        "reconnect",
        "timeout",
        "token",
        "token_provider",
        "tool_timeout",
        "url",
    )

    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        timeout: float | None,
        keepalive_interval: float | None,
        tool_timeout: float | None,
        max_queue: int,
        hooks: ToolHooks | None = None,
        reconnect: ReconnectPolicy | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        self.hooks = hooks
        self.url = url
        self.token = token
        self.timeout = timeout
        self.keepalive_interval = keepalive_interval
        self.tool_timeout = tool_timeout
        self.max_queue = max_queue
        self.reconnect = reconnect
        self.token_provider = token_provider

    async def get_token(self) -> str:
        """The token for a new socket (see :func:`~chucky.client.reconnect.get_token`)."""
        return await get_token(self.token, self.token_provider)


class ClientConnection:
    """A session's connection: one WebSocket, or with ``seq`` the successive sockets of a
    session that survives the network (see the module docstring)."""

    def __init__(
        self,
        settings: ConnectionSettings,
        init_payload: dict[str, Any],
        registry: ToolRegistry,
        *,
        session_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.proto = ClientProtocol(
            init_payload, session_id=session_id, seq=settings.reconnect is not None
        )
        self.inbox: Inbox[SDKMessage] = Inbox(settings.max_queue)
        self.session_info: dict[str, Any] = {}
        self._registry = registry
        # The current socket, its reader and keepalive, and its handshake: ``ready`` on the
        # first socket, the session back (resumed, or opened again) on a resume.
        self._ws: WebSocket | None = None
        self._handshake: asyncio.Future[ClientEvent] | None = None
        self._deadline: asyncio.Timeout | None = None
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
        self._reconnect: asyncio.Task[None] | None = None
        # Frames that could not go out while the socket was lost: tool results and controls,
        # in order, sent once the session is back.
        self._unsent: list[tuple[str, str]] = []

    @property
    def session_id(self) -> str | None:
        return self.proto.session_id

    @property
    def reconnecting(self) -> bool:
        """Whether the socket was lost and the session is being resumed."""
        return self._reconnect is not None and not self._reconnect.done()

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
        token = await settings.get_token()
        self._attach(await self._connect(token))
        assert self._handshake is not None
        try:
            await self._send(self.proto.start())
            async with asyncio.timeout(settings.timeout):
                await asyncio.shield(self._handshake)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, ChuckyError):
                raise
            if isinstance(exc, builtins.TimeoutError):
                raise TimeoutError(
                    f"no ready from {redact(settings.url)} within {settings.timeout:g} s"
                ) from exc
            if isinstance(exc, ConnectionClosed):
                raise self._closed_error(exc) from exc
            raise

    async def _connect(self, token: str) -> WebSocket:
        return await dial(self.settings.url, token, deadline=self.settings.timeout)

    def _attach(self, ws: WebSocket) -> None:
        self._ws = ws
        self._handshake = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ws), name="chucky-reader")
        if self.settings.keepalive_interval:
            self._keepalive = asyncio.create_task(self._keep_alive(ws), name="chucky-keepalive")

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None or self._closed:
            raise InvalidStateError("the connection is closed")
        try:
            # A lone surrogate cannot be UTF-8 and websockets would drop the connection; written
            # as its JSON escape it decodes back to the same string on the other side.
            await ws.send(text.encode("utf-8", "backslashreplace"), text=True)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def _send_or_keep(self, kind: str, text: str) -> None:
        """Send ``text`` now, or, while the session is being resumed, once it is back."""
        if self.proto.state is ClientState.OPEN or not self.proto.resumable:
            try:
                await self._send(text)
                return
            except ConnectionError:
                if self._closed or not self.proto.resumable:
                    raise
        self._unsent.append((kind, text))

    async def send_turn(self, content: str | list[dict[str, Any]]) -> None:
        """Start a turn (while the session is being resumed, it is sent once it is back).

        Raises:
            ConnectionError: the connection is gone.
            InvalidStateError: the connection is closing.
        """
        if self.inbox.error is not None:
            raise self.inbox.error
        text = self.proto.send_turn(content)
        if self.proto.state is not ClientState.OPEN:
            return  # resuming: every turn not ended is sent once the session is back
        try:
            await self._send(text)
        except ConnectionError:
            if self._closed or not self.proto.resumable:
                raise  # else it goes again with the others once the session is back

    async def send_control(self, action: str) -> None:
        await self._send(self.proto.send_control(action))

    async def interrupt(self) -> None:
        """Cancel the tool calls still running (without answering them), then send ``control``
        ``interrupt`` (while the session is being resumed: once it is back).

        Raises:
            ConnectionError: the connection is gone (the calls are cancelled all the same).
            InvalidStateError: the connection is closed.
        """
        # Cancelled first: a handler finishing while the frame is on its way must not answer.
        self._runner.cancel_all(reason="interrupted")
        await self._send_or_keep("control", self.proto.send_control("interrupt"))

    async def _send_tool_result(self, call_id: str, result: ToolResult) -> None:
        text = self.proto.send_tool_result(call_id, result.to_wire())
        await self._send_or_keep("tool_result", text)

    async def _ack(self) -> None:
        text = self.proto.ack()
        if text is not None:
            with contextlib.suppress(ChuckyError):
                await self._send(text)

    # -- the reader ----------------------------------------------------------------------------

    async def _read(self, ws: WebSocket) -> None:
        proto = self.proto
        error: ChuckyError | None = None
        failed = False
        try:
            async for text in ws:
                self._inbound += 1
                await self._route(proto.receive(text))
        except ConnectionClosed as exc:
            error = self._closed_error(exc)
        except asyncio.CancelledError:
            error = ConnectionError("the connection was closed by the client")
            raise
        except Exception as exc:  # a bug; never leave the consumer waiting
            logger.exception("reader failed")
            error = ConnectionError(f"the connection failed: {exc}")
            failed = True
        finally:
            self._socket_ended(ws, error or self._closed_error(None), failed=failed)

    async def _route(self, event: ClientEvent) -> None:
        inbox = self.inbox
        if isinstance(event, WireModel):
            if isinstance(event, ResultMessage):
                # The turn is over: the server waits for none of its calls any more.
                self._runner.cancel_all(reason="turn_ended")
                await self._runner.turn_ended(event)  # Stop hooks, before the app sees it
            if not inbox.try_put(event):
                await inbox.put(event)  # full: wait (backpressure)
            if isinstance(event, ResultMessage):
                await self._ack()
        elif isinstance(event, ToolCall):
            self._runner.submit(event.call_id, event.tool_name, event.input)
        elif isinstance(event, ToolCancelled):
            self._runner.cancel(event.call_id, reason=event.reason)
        elif isinstance(event, TurnFailed):
            self._runner.cancel_all(reason="turn_ended")
            await inbox.put(ErrorMessage.from_exception(event.error, event.payload))
            await self._ack()
        else:
            self._on_control(event)

    def _on_control(self, event: ClientEvent) -> None:
        if isinstance(event, Ready):
            if self.proto.state is ClientState.OPEN:  # on a resume, the session is not back yet
                self._settle(event)
        elif isinstance(event, Resumed):
            self._settle(event)
        elif isinstance(event, SessionInfo):
            self.session_info = event.data
            if event.reopened:
                self._settle(event)
        elif isinstance(event, ReplayUnavailable):
            logger.info("session %s: %s", self.session_id, event.error.message)
            if self._deadline is not None:
                # The server may wait for the session's turn to end elsewhere (section 10):
                # the keepalive watches the socket from here on.
                self._deadline.reschedule(None)
        elif isinstance(event, HandshakeFailed):
            self._last_error = event.error
            self._refuse(event.error)
        elif isinstance(event, ResumeFailed):
            self._refuse(event.error)
        elif isinstance(event, ServerError):
            logger.warning("server error outside a turn: %s", event.error.message)
            self._last_error = event.error
        elif isinstance(event, Ignored):
            logger.debug("ignored frame: %s", event.reason)
        elif isinstance(event, Pong | ServerClosing):
            pass

    def _settle(self, event: ClientEvent) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(event)

    def _socket_ended(self, ws: WebSocket, error: ChuckyError, *, failed: bool) -> None:
        if ws is not self._ws:
            return
        keepalive = self._keepalive
        if keepalive is not None and keepalive is not asyncio.current_task():
            keepalive.cancel()
        self._refuse(error)  # a handshake still pending fails with the loss
        if self._closed or self.reconnecting:
            # Closed: the inbox failed already. Reconnecting: the attempt sees it.
            self._fail(error)
            return
        rcvd = ws.protocol.close_rcvd
        unexpected = rcvd is None or rcvd.code in RESUMABLE_CLOSE_CODES
        if not failed and unexpected and self.proto.resumable:
            self.proto.detach()
            logger.info("session %s: connection lost (%s); reconnecting", self.session_id, error)
            self._reconnect = asyncio.create_task(
                self._resume_session(error), name="chucky-reconnect"
            )
            return
        self.proto.connection_lost()
        # No answer can reach the server any more, and it abandons pending calls on close.
        self._runner.cancel_all(reason="connection_lost")
        self._fail(error)

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
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(error)
            # Mark it retrieved: the waiter may learn of the failure from the socket first.
            self._handshake.exception()

    def _fail(self, error: ChuckyError) -> None:
        if self._closed or not self.reconnecting:  # while reconnecting, the attempt decides
            self.inbox.fail(error)
        self._refuse(error)

    # -- reconnecting (chucky.client.reconnect drives these) -------------------------------------

    async def _resume_session(self, cause: ChuckyError) -> None:
        policy = self.settings.reconnect
        assert policy is not None
        try:
            await Reconnector(policy).run(self, cause)
        except Exception as exc:  # a bug; never leave the consumer waiting
            logger.exception("reconnect failed")
            self.give_up(ConnectionError(f"the reconnect failed: {exc}"))

    async def attempt_resume(self) -> tuple[ReconnectOutcome, int]:
        """One attempt at resuming the session on a new socket (see
        :mod:`chucky.client.reconnect`): then the turns not ended and the frames kept are sent.

        Raises:
            ChuckyError: the attempt failed (:func:`~chucky.client.reconnect.retryable` says
                whether another may succeed).
        """
        proto = self.proto
        await self._drop_socket()
        if proto.state is not ClientState.DETACHED:
            proto.detach()
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeout):
                token = await settings.get_token()
        except builtins.TimeoutError as exc:
            if isinstance(exc, ChuckyError):
                raise
            raise TimeoutError(
                f"token_provider gave no token within {settings.timeout:g} s"
            ) from exc
        self._attach(await self._connect(token))
        assert self._handshake is not None
        try:
            async with asyncio.timeout(settings.timeout) as self._deadline:
                with contextlib.suppress(ChuckyError):
                    # A refusal may close the socket first: the reader tells why.
                    await self._send(proto.resume())
                event = await asyncio.shield(self._handshake)
        except BaseException as exc:
            await self._drop_socket()
            if isinstance(exc, builtins.TimeoutError) and not isinstance(exc, ChuckyError):
                raise TimeoutError(
                    f"no answer to the resume within {settings.timeout:g} s"
                ) from exc
            raise
        finally:
            self._deadline = None
        self._last_error = None
        if isinstance(event, Resumed):
            outcome: ReconnectOutcome = "resumed"
            replayed = event.replayed
        else:
            # Opened again from the store: the calls of the turn as it was are not waited for
            # there, and a result for a call this server never sent would be an error frame.
            outcome, replayed = "replay_unavailable", 0
            self._runner.cancel_all(reason="replay_unavailable")
            self._unsent = [item for item in self._unsent if item[0] != "tool_result"]
        try:
            for text in proto.resend():
                await self._send(text)
            while self._unsent:
                await self._send(self._unsent[0][1])
                del self._unsent[0]
        except ChuckyError:
            pass  # lost again: the Reconnector sees it (attached() is false)
        return outcome, replayed

    def attached(self) -> bool:
        """Whether the current socket is alive and its session open."""
        reader = self._reader
        return reader is not None and not reader.done() and self.proto.state is ClientState.OPEN

    def give_up(self, error: ChuckyError) -> None:
        """End the session with ``error``: no more attempts."""
        self.proto.connection_lost()
        self._runner.cancel_all(reason="connection_lost")
        self._unsent.clear()
        self.inbox.fail(error)
        self._refuse(error)
        if self._ws is not None:
            self._ws.transport.abort()

    async def _drop_socket(self) -> None:
        """Abort the current socket (an attempt that failed) and wait for its tasks."""
        ws, tasks = self._ws, [t for t in (self._keepalive, self._reader) if t is not None]
        if ws is not None:
            ws.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- keepalive -----------------------------------------------------------------------------

    async def _keep_alive(self, ws: WebSocket) -> None:
        interval = self.settings.keepalive_interval
        assert interval
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
            # The reader ends on the abort, and fails the inbox or resumes the session.
            self._last_error = ConnectionError(
                f"the server stopped answering: no pong and no frame for {interval:g} s",
                details={"reason": "keepalive_timeout"},
            )
            ws.transport.abort()
            return

    # -- closing -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the socket and stop every task. Idempotent; safe to call from any state."""
        if self._closed:
            return
        self._closed = True
        self._fail(InvalidStateError("the session is closed"))
        # Cleanup must finish even if the caller is being cancelled.
        await asyncio.shield(self._shutdown())

    async def _shutdown(self) -> None:
        reconnect = self._reconnect
        if reconnect is not None:
            reconnect.cancel()
            await asyncio.gather(reconnect, return_exceptions=True)
        await self._runner.aclose()
        ws = self._ws
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
