"""Plain HTTP on the WebSocket port: sniff the request head, then hand it to websockets or h11.

websockets' HTTP parser refuses any request with a body and runs ``process_request`` under the
handshake's ``open_timeout``, so it can serve neither ``POST /prompt`` nor a long
``text/event-stream`` (PROTOCOL.md section 9). This module puts a small front in place, through
websockets' documented escape hatch ``serve(..., create_connection=...)``.

Theory of operation
-------------------

Each accepted TCP connection starts in a *sniffing* phase, owned by :class:`_SniffingConnection`
(a websockets :class:`~websockets.asyncio.server.ServerConnection`). It withholds
``connection_made`` from websockets, so no handshake task exists yet, and feeds the bytes it
receives to a :class:`RequestHeadSniffer` (pure: bytes in, verdict out) until the blank line that
ends the request head, under a size cap and the open timeout. Then, once and for all:

``WEBSOCKET``  (``GET`` with ``Upgrade: websocket``, RFC 6455 section 4.1)
    websockets gets ``connection_made`` and the buffered bytes, and every later protocol
    callback; from here on the connection is exactly a websockets connection, with the
    caller's ``process_request``, ``open_timeout`` and handler.

``HTTP``  (anything else, including garbage and over-long heads)
    the transport is re-pointed at an :class:`_HttpChannel` (``transport.set_protocol``). The
    channel is a thin asyncio shell around an ``h11.Connection``: callbacks only move bytes
    into an inbox and wake one task, which reads a request with its body, calls the
    :data:`HttpApp` and writes the response through h11.

::

    connection_made ──► SNIFFING ──head complete──► WEBSOCKET   (websockets from here on)
                           │   └─────────────────► HTTP        (_HttpChannel from here on)
                           └─ timeout / EOF / close ──► CLOSED  (dropped; websockets never knew)

HTTP/1.1 keep-alive is supported: after a complete exchange, h11's ``start_next_cycle`` starts
the next one; waiting for (and reading) each request is bounded by the open timeout, so an idle
keep-alive connection closes after that long. Errors that leave the stream in an unknown place
(400, 413, 431, 503) are answered with ``Connection: close`` followed by a *lingering close*:
half-close, discard input until the client closes or a short grace passes, so the kernel does not
turn unread input into a reset that destroys the answer (RFC 9112 section 9.6).

An end of file from the client counts as a disconnect (as in uvicorn): a half-closed client gets
no answer, and a streaming app learns at once that nobody is listening.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import http
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import SERVER
from websockets.server import ServerProtocol

from .. import errors

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEAD_BYTES",
    "DEFAULT_OPEN_TIMEOUT",
    "HeadKind",
    "HttpApp",
    "HttpExchanges",
    "HttpRequest",
    "HttpResponse",
    "RequestHeadSniffer",
    "serve_http_and_ws",
    "sse_event",
]

logger = logging.getLogger("chucky.server.http")

DEFAULT_MAX_HEAD_BYTES: Final = 80 * 1024
"""Request line plus headers: room for a 64 KiB URL (PROTOCOL.md section 1) and 16 KiB more."""

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""The largest request body accepted; longer ones are answered 413."""

DEFAULT_OPEN_TIMEOUT: Final = 10.0
"""Seconds a client has to send a complete request head (and, for HTTP, the body)."""

# Bytes of unread client input the channel holds before it pauses reading.
_INBOX_LIMIT: Final = 64 * 1024
# Seconds a lingering close waits for the client to close its side.
_LINGER_SECONDS: Final = 2.0

HttpApp = Callable[["HttpRequest", "HttpResponse"], Awaitable[None]]
"""The plain-HTTP application: called once per request; must answer through the response."""


# -- the request head sniffer (pure) -----------------------------------------------------------


class HeadKind(enum.Enum):
    """The verdict of :class:`RequestHeadSniffer` on what has arrived so far."""

    INCOMPLETE = "incomplete"
    """No blank line yet and still under the size cap: wait for more bytes."""
    WEBSOCKET = "websocket"
    """A complete head asking for a WebSocket upgrade: websockets handles the connection."""
    HTTP = "http"
    """A complete head of anything else (including malformed heads): plain HTTP handles it."""
    TOO_LARGE = "too_large"
    """The head is longer than the cap; plain HTTP answers 431."""


_HEAD_END: Final = re.compile(rb"\n\r?\n")


class RequestHeadSniffer:
    """Buffers the start of a connection until the request head is complete, then classifies it.

    Scanning is incremental, so a client that sends one byte at a time costs linear work.

    Args:
        max_head_bytes: The size cap of the head (request line plus headers).
    """

    def __init__(self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        self.max_head_bytes = max_head_bytes
        self._buffer = bytearray()
        # RFC 9112 section 2.2: a server SHOULD ignore empty lines before the request line.
        self._start = 0
        self._skipping = True
        self._scanned = 0

    @property
    def buffered(self) -> bytes:
        """Everything received, less the empty lines before the request line."""
        return bytes(self._buffer[self._start :])

    def feed(self, data: bytes) -> HeadKind:
        """Add received bytes and classify what has arrived so far."""
        self._buffer += data
        if self._skipping:
            while self._start < len(self._buffer) and self._buffer[self._start] in b"\r\n":
                self._start += 1
            if self._start < len(self._buffer):
                self._skipping = False
                self._scanned = self._start
        if not self._skipping:
            match = _HEAD_END.search(self._buffer, max(self._start, self._scanned - 2))
            self._scanned = len(self._buffer)
            if match is not None:
                if match.end() - self._start > self.max_head_bytes:
                    return HeadKind.TOO_LARGE
                head = bytes(self._buffer[self._start : match.start()])
                return HeadKind.WEBSOCKET if _asks_for_websocket(head) else HeadKind.HTTP
        if len(self._buffer) - self._start > self.max_head_bytes:
            return HeadKind.TOO_LARGE
        return HeadKind.INCOMPLETE


def _asks_for_websocket(head: bytes) -> bool:
    """Whether a request head is a WebSocket upgrade websockets would consider (RFC 6455 4.1)."""
    request_line, *header_lines = head.split(b"\n")
    if request_line.split(b" ", 1)[0] != b"GET":
        return False
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade":
            tokens = (token.strip().lower() for token in value.split(b","))
            if b"websocket" in tokens:
                return True
    return False


# -- the application interface -----------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One plain-HTTP request, read in full (head and body) before the app is called.

    Attributes:
        method: The method, e.g. ``"POST"``.
        path: The path of the request target, without the query; not percent-decoded.
        query: The query parameters (blank values kept), each name with all its values.
        headers: The request headers; lookups are case-insensitive.
        body: The request body (``b""`` when there is none).
        client: The client's IP address, when known.
    """

    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    client: str | None = None

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            ValidationError: The body is empty, or not JSON in UTF-8 (or UTF-16/32).
        """
        if not self.body.strip():
            raise errors.ValidationError("invalid request: the body is empty, expected JSON")
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as exc:
            raise errors.ValidationError(
                f"invalid request: the body is not valid JSON"
                f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from exc
        except UnicodeDecodeError as exc:
            raise errors.ValidationError(
                "invalid request: the body is not valid UTF-8 JSON"
            ) from exc


class HttpResponse(Protocol):
    """How an :data:`HttpApp` answers: one whole response, or one stream.

    Exactly one of :meth:`send_json`, :meth:`send_text` or :meth:`start_stream` may be called;
    after :meth:`start_stream`, :meth:`write` any number of times, then :meth:`end`.
    Every method raises :class:`~chucky.errors.ConnectionError` when the client went away and
    :class:`~chucky.errors.InvalidStateError` when called out of that order.
    """

    @property
    def started(self) -> bool:
        """Whether the status line has been sent (the response can no longer change)."""
        ...

    async def send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send ``body`` as ``application/json`` with a ``Content-Length``."""
        ...

    async def send_text(
        self,
        status: int,
        text: str,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send ``text`` encoded as UTF-8 with the given ``Content-Type``."""
        ...

    async def start_stream(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send the head of a response of unknown length (chunked), e.g. ``text/event-stream``."""
        ...

    async def write(self, data: str | bytes) -> None:
        """Send a piece of the stream; waits while the client reads slower than the app writes."""
        ...

    async def end(self) -> None:
        """Finish the stream (idempotent)."""
        ...

    async def wait_disconnected(self) -> None:
        """Return once the client has closed the connection (or it was lost)."""
        ...


def sse_event(data: str, event: str | None = "message", id: str | None = None) -> str:
    """The text of one server-sent event (HTML Living Standard, "Server-sent events").

    Args:
        data: The payload; each of its lines becomes a ``data:`` line, so a client
            reassembles it exactly (line breaks come back as ``\\n``).
        event: The ``event:`` field; ``None`` leaves it out (clients then see ``message``).
        id: The ``id:`` field, if any.

    Returns:
        The event, ending with the blank line that dispatches it.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break.
    """
    lines: list[str] = []
    for name, value in (("event", event), ("id", id)):
        if value is None:
            continue
        if "\n" in value or "\r" in value:
            raise ValueError(f"an SSE {name} field cannot contain a line break: {value!r}")
        lines.append(f"{name}: {value}")
    lines.extend(f"data: {line}" for line in re.split(r"\r\n|\r|\n", data))
    return "\n".join(lines) + "\n\n"


# -- in-flight exchanges and shutdown ----------------------------------------------------------


class HttpExchanges:
    """The plain-HTTP connections of one server, for a graceful shutdown.

    websockets' ``Server.close()`` knows nothing of them (nor of connections still being
    sniffed). Shut down in this order::

        ws_server.close()                   # stop listening, close WebSocket connections
        await exchanges.shutdown(grace)     # finish or cancel HTTP exchanges
        await ws_server.wait_closed()
    """

    def __init__(self) -> None:
        self._closing = False
        self._sniffing: set[_SniffingConnection] = set()
        self._channels: dict[_HttpChannel, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        """The number of plain-HTTP connections open now."""
        return len(self._channels)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    def close(self) -> None:
        """Stop accepting: drop connections still being sniffed and idle keep-alive ones.

        Exchanges in flight run on; their responses carry ``Connection: close``. Idempotent.
        """
        self._closing = True
        for connection in list(self._sniffing):
            connection.drop()
        for channel in list(self._channels):
            channel.close_if_idle()

    async def drain(self, grace: float | None) -> bool:
        """Wait for in-flight exchanges to finish.

        Args:
            grace: Seconds to wait at most; ``None`` waits for ever.

        Returns:
            Whether every exchange finished in time.
        """
        tasks = set(self._channels.values())
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=grace)
        return not pending

    def cancel_all(self) -> None:
        """Cancel every exchange (its app sees ``CancelledError``) and drop sniffed connections."""
        for connection in list(self._sniffing):
            connection.drop()
        for task in self._channels.values():
            task.cancel()

    async def shutdown(self, grace: float | None) -> None:
        """:meth:`close`, :meth:`drain` for ``grace`` seconds, then :meth:`cancel_all`.

        Returns once every plain-HTTP connection is closed.
        """
        self.close()
        if await self.drain(grace):
            return
        self.cancel_all()
        tasks = set(self._channels.values())
        if tasks:
            await asyncio.wait(tasks)

    # Called by the connections.

    def _add_sniffing(self, connection: _SniffingConnection) -> None:
        self._sniffing.add(connection)

    def _discard_sniffing(self, connection: _SniffingConnection) -> None:
        self._sniffing.discard(connection)

    def _add_channel(self, channel: _HttpChannel, task: asyncio.Task[None]) -> None:
        self._channels[channel] = task
        task.add_done_callback(lambda _: self._channels.pop(channel, None))


@dataclass(frozen=True)
class _HttpFront:
    """What every connection of one server shares."""

    app: HttpApp
    exchanges: HttpExchanges
    max_head_bytes: int
    max_body_bytes: int
    open_timeout: float | None
    server_header: str | None


# -- the sniffing connection -------------------------------------------------------------------


class _Phase(enum.Enum):
    SNIFFING = "sniffing"
    WEBSOCKET = "websocket"
    HTTP = "http"
    CLOSED = "closed"


class _SniffingConnection(ServerConnection):
    """A websockets connection that first decides whether it should be one (module docstring).

    :func:`serve_http_and_ws` derives one subclass per server, binding ``_front``.
    """

    _front: ClassVar[_HttpFront]

    def __init__(self, protocol: ServerProtocol, server: Server, **kwargs: Any) -> None:
        super().__init__(protocol, server, **kwargs)
        self._phase = _Phase.SNIFFING
        self._sniffer = RequestHeadSniffer(self._front.max_head_bytes)
        self._raw_transport: asyncio.Transport | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def drop(self) -> None:
        """Abort the connection if it is still being sniffed."""
        if self._phase is _Phase.SNIFFING and self._raw_transport is not None:
            self._end_sniffing(_Phase.CLOSED)
            self._raw_transport.abort()

    def _end_sniffing(self, phase: _Phase) -> None:
        self._phase = phase
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._front.exchanges._discard_sniffing(self)

    def _timed_out(self) -> None:
        self._timer = None
        logger.debug("dropping a connection that sent no complete request head in time")
        self.drop()

    def _decide(self, kind: HeadKind) -> None:
        transport = self._raw_transport
        assert transport is not None
        buffered = self._sniffer.buffered
        if kind is HeadKind.WEBSOCKET:
            self._end_sniffing(_Phase.WEBSOCKET)
            super().connection_made(transport)
            super().data_received(buffered)
            return
        self._end_sniffing(_Phase.HTTP)
        channel = _HttpChannel(transport, self._front, self.server)
        transport.set_protocol(channel)
        channel.start(buffered, self._deadline, head_too_large=kind is HeadKind.TOO_LARGE)

    # asyncio.Protocol callbacks: the parent's once the connection is a WebSocket, else ours.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw_transport = cast(asyncio.Transport, transport)
        front = self._front
        if front.exchanges.closing:
            self._phase = _Phase.CLOSED
            self._raw_transport.abort()
            return
        front.exchanges._add_sniffing(self)
        if front.open_timeout is not None:
            self._deadline = self.loop.time() + front.open_timeout
            self._timer = self.loop.call_at(self._deadline, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.WEBSOCKET:
            super().data_received(data)
        elif self._phase is _Phase.SNIFFING:
            kind = self._sniffer.feed(data)
            if kind is not HeadKind.INCOMPLETE:
                self._decide(kind)

    def eof_received(self) -> None:
        if self._phase is _Phase.WEBSOCKET:
            super().eof_received()
        # While sniffing, returning None lets asyncio close the transport: the client is gone.

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase is _Phase.WEBSOCKET:
            super().connection_lost(exc)
        elif self._phase is _Phase.SNIFFING:
            self._end_sniffing(_Phase.CLOSED)

    def pause_writing(self) -> None:
        if self._phase is _Phase.WEBSOCKET:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._phase is _Phase.WEBSOCKET:
            super().resume_writing()


# -- the plain-HTTP channel (asyncio shell around h11) -----------------------------------------


class _ChannelPhase(enum.Enum):
    IDLE = "idle"  # between requests; nothing of the next one received
    READING = "reading"  # a request head or body is arriving
    RESPONDING = "responding"  # the app owns the exchange
    LINGERING = "lingering"  # an error was answered; discarding input until the client closes
    CLOSED = "closed"


class _Rejected(Exception):
    """A request answered with an error before the app saw it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _HttpChannel(asyncio.Protocol):
    """Serves plain HTTP/1.1 on one connection: callbacks fill an inbox; one task does the rest."""

    def __init__(self, transport: asyncio.Transport, front: _HttpFront, server: Server) -> None:
        self._transport = transport
        self._front = front
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=front.max_head_bytes)
        self._phase = _ChannelPhase.READING
        self._inbox = bytearray()
        self._reading_paused = False
        self._eof = False
        self._reader: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._disconnected = asyncio.Event()
        peer = transport.get_extra_info("peername")
        self.client: str | None = str(peer[0]) if isinstance(peer, tuple) and peer else None

    def start(self, initial: bytes, deadline: float | None, *, head_too_large: bool) -> None:
        self._inbox += initial
        # Registered now, not inside the task, so a shutdown right after this sees it.
        task = self._loop.create_task(self._run(deadline, head_too_large=head_too_large))
        self._front.exchanges._add_channel(self, task)

    def close_if_idle(self) -> None:
        if self._phase is _ChannelPhase.IDLE and not self._inbox:
            self._transport.close()

    @property
    def gone(self) -> bool:
        return self._disconnected.is_set()

    # asyncio.Protocol callbacks

    def data_received(self, data: bytes) -> None:
        if self._phase in (_ChannelPhase.LINGERING, _ChannelPhase.CLOSED):
            return
        if self._phase is _ChannelPhase.IDLE:
            self._phase = _ChannelPhase.READING
        self._inbox += data
        if len(self._inbox) >= _INBOX_LIMIT and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> None:
        # The client is gone (module docstring); returning None lets asyncio close the transport.
        self._lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _ChannelPhase.CLOSED
        self._lost()
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self) -> None:
        self._eof = True
        self._disconnected.set()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    # Reading

    async def _receive(self) -> None:
        """Move the inbox into h11, waiting for bytes if there are none (h11 said NEED_DATA)."""
        while not self._inbox and not self._eof:
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        if self._inbox:
            self._h11.receive_data(bytes(self._inbox))
            self._inbox.clear()
            if self._reading_paused:
                self._reading_paused = False
                self._transport.resume_reading()
        else:
            self._h11.receive_data(b"")

    async def _next_event(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                if self._h11.they_are_waiting_for_100_continue:
                    await self._write(
                        self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                await self._receive()
                continue
            if event is h11.PAUSED:  # pragma: no cover - we never read past EndOfMessage
                raise _Rejected(400, "unexpected data")
            return cast(h11.Event, event)

    async def _read_request(self) -> HttpRequest | None:
        """The next request with its body; ``None`` when the client closed between requests."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)
        method = event.method.decode("ascii")
        if self._front.exchanges.closing or not self._server.is_serving():
            raise _Rejected(503, "server is shutting down")
        if method == "CONNECT":  # h11 would switch protocols on a 2xx answer
            raise _Rejected(405, "method not allowed")
        limit = self._front.max_body_bytes
        length = _content_length(event.headers)
        if length is not None and length > limit:
            raise _Rejected(413, f"request body too large (limit {limit} bytes)")
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > limit:
                    raise _Rejected(413, f"request body too large (limit {limit} bytes)")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # pragma: no cover - h11 yields only Data then EndOfMessage here
                raise _Rejected(400, "malformed request body")
        target = event.target.decode("latin-1")
        parts = urlsplit(target)
        return HttpRequest(
            method=method,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=Headers(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in event.headers.raw_items()
            ),
            body=bytes(body),
            client=self.client,
        )

    # Writing

    async def _write(self, data: bytes) -> None:
        if self.gone or self._transport.is_closing():
            raise errors.ConnectionError("the HTTP client went away")
        self._transport.write(data)
        while self._writing_paused and not self.gone:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)
        if self.gone:
            raise errors.ConnectionError("the HTTP client went away")

    def _encode(self, event: h11.Event) -> bytes:
        try:
            return self._h11.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise errors.InvalidStateError(f"cannot send this HTTP response: {exc}") from exc

    def response_head(
        self,
        status: int,
        content_type: str | None,
        headers: Mapping[str, str] | None,
        *,
        content_length: int | None,
        close: bool = False,
    ) -> bytes:
        pairs: list[tuple[str, str]] = []
        if self._front.server_header is not None:
            pairs.append(("Server", self._front.server_header))
        if content_type is not None:
            pairs.append(("Content-Type", content_type))
        if content_length is not None:
            pairs.append(("Content-Length", str(content_length)))
        if headers:
            pairs.extend(headers.items())
        if close or self._front.exchanges.closing or not self._server.is_serving():
            pairs.append(("Connection", "close"))
        try:
            reason = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            event = h11.Response(status_code=status, headers=pairs, reason=reason)
        except h11.LocalProtocolError as exc:
            raise errors.InvalidStateError(f"invalid HTTP response: {exc}") from exc
        return self._encode(event)

    # The exchange loop

    async def _run(self, deadline: float | None, *, head_too_large: bool) -> None:
        try:
            if head_too_large:
                limit = self._front.max_head_bytes
                await self._reject(431, f"request head too large (limit {limit} bytes)")
                return
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        request = await self._read_request()
                except TimeoutError:
                    logger.debug("closing an HTTP connection that sent no complete request in time")
                    self._transport.abort()
                    return
                except h11.RemoteProtocolError as exc:
                    await self._reject(exc.error_status_hint, f"bad request: {exc}")
                    return
                except _Rejected as exc:
                    await self._reject(exc.status, exc.message)
                    return
                if request is None:
                    return
                if not await self._respond(request):
                    return
                self._h11.start_next_cycle()
                self._phase = _ChannelPhase.READING if self._inbox else _ChannelPhase.IDLE
                if self._front.exchanges.closing:
                    return
                timeout = self._front.open_timeout
                deadline = None if timeout is None else self._loop.time() + timeout
        except builtins.ConnectionError:
            logger.debug("HTTP client went away")
        except asyncio.CancelledError:
            self._transport.abort()
            raise
        except Exception:
            logger.exception("HTTP connection failed")
            self._transport.abort()
        finally:
            self._phase = _ChannelPhase.CLOSED
            self._transport.close()

    async def _respond(self, request: HttpRequest) -> bool:
        """Run the app on one request; whether the connection may serve another."""
        self._phase = _ChannelPhase.RESPONDING
        response = _H11Response(self, head_only=request.method == "HEAD")
        try:
            await self._front.app(request, response)
        except Exception as exc:
            if isinstance(exc, builtins.ConnectionError) and self.gone:
                logger.debug("HTTP client went away during %s %s", request.method, request.path)
                return False
            logger.exception("HTTP app failed on %s %s", request.method, request.path)
            if response.started:
                return False
            await response.send_json(500, {"error": "internal error"})
        else:
            if not response.started:
                logger.error("HTTP app sent no response to %s %s", request.method, request.path)
                await response.send_json(500, {"error": "internal error"})
            else:
                await response.end()
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _reject(self, status: int, message: str) -> None:
        """Answer an error with ``Connection: close``, then close without losing the answer."""
        if self.gone or self._transport.is_closing():
            return
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"error": message}).encode()
        head = self.response_head(
            status, "application/json", None, content_length=len(body), close=True
        )
        data = head + self._encode(h11.Data(data=body)) + self._encode(h11.EndOfMessage())
        logger.debug("answered %d: %s", status, message)
        await self._linger(data)

    async def _linger(self, data: bytes) -> None:
        self._phase = _ChannelPhase.LINGERING
        self._inbox.clear()
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        self._transport.write(data)
        if not self._transport.can_write_eof():  # pragma: no cover - TCP can
            return
        self._transport.write_eof()
        try:
            async with asyncio.timeout(_LINGER_SECONDS):
                await self._disconnected.wait()
        except TimeoutError:
            self._transport.abort()


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            # h11 has validated it.
            return int(value)
    return None


class _ResponseState(enum.Enum):
    IDLE = "idle"
    STREAMING = "streaming"
    DONE = "done"


class _H11Response:
    """The :class:`HttpResponse` of one exchange on an :class:`_HttpChannel`."""

    def __init__(self, channel: _HttpChannel, *, head_only: bool) -> None:
        self._channel = channel
        self._head_only = head_only
        self._state = _ResponseState.IDLE

    @property
    def started(self) -> bool:
        return self._state is not _ResponseState.IDLE

    def _expect(self, state: _ResponseState, action: str) -> None:
        if self._state is not state:
            raise errors.InvalidStateError(f"cannot {action}: the response is {self._state.value}")

    async def send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        await self._send_whole(status, "application/json", data, headers)

    async def send_text(
        self,
        status: int,
        text: str,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        await self._send_whole(status, content_type, text.encode(), headers)

    async def _send_whole(
        self, status: int, content_type: str, data: bytes, headers: Mapping[str, str] | None
    ) -> None:
        self._expect(_ResponseState.IDLE, "send a response")
        channel = self._channel
        head = channel.response_head(status, content_type, headers, content_length=len(data))
        self._state = _ResponseState.DONE
        body = b"" if self._head_only else channel._encode(h11.Data(data=data))
        await channel._write(head + body + channel._encode(h11.EndOfMessage()))

    async def start_stream(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._expect(_ResponseState.IDLE, "start a stream")
        head = self._channel.response_head(status, content_type, headers, content_length=None)
        self._state = _ResponseState.STREAMING
        await self._channel._write(head)

    async def write(self, data: str | bytes) -> None:
        self._expect(_ResponseState.STREAMING, "write")
        if isinstance(data, str):
            data = data.encode()
        if data and not self._head_only:
            await self._channel._write(self._channel._encode(h11.Data(data=data)))
        elif self._channel.gone:
            raise errors.ConnectionError("the HTTP client went away")

    async def end(self) -> None:
        if self._state is _ResponseState.DONE:
            return
        self._expect(_ResponseState.STREAMING, "end the stream")
        self._state = _ResponseState.DONE
        await self._channel._write(self._channel._encode(h11.EndOfMessage()))

    async def wait_disconnected(self) -> None:
        await self._channel._disconnected.wait()


# -- the server --------------------------------------------------------------------------------


def serve_http_and_ws(
    ws_handler: Callable[[ServerConnection], Awaitable[None]],
    http_app: HttpApp,
    host: str | None = None,
    port: int | None = None,
    *,
    exchanges: HttpExchanges | None = None,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    **serve_kwargs: Any,
) -> Server:
    """A websockets server that also answers plain HTTP on the same port.

    WebSocket upgrades go to websockets exactly as with :func:`websockets.asyncio.server.serve`
    (``process_request`` is called for them, and only for them); every other request goes to
    ``http_app``.

    Args:
        ws_handler: The WebSocket connection handler, as for ``serve``.
        http_app: The plain-HTTP application.
        host: The address to listen on.
        port: The port to listen on; 0 picks a free one.
        exchanges: The registry to track plain-HTTP connections in, for shutdown.
        max_head_bytes: The size cap of a request head; larger ones are answered 431.
        max_body_bytes: The size cap of a request body; larger ones are answered 413.
        open_timeout: Seconds a client has to send a request head (and for plain HTTP, its
            body; also the keep-alive idle timeout); also websockets' handshake timeout.
        serve_kwargs: Passed on to ``serve`` (``process_request``, ``max_size``,
            ``server_header`` ...), except ``create_connection``.

    Returns:
        The server, to be awaited (or entered with ``async with``) to start listening.

    Raises:
        TypeError: ``create_connection`` was given.
    """
    if "create_connection" in serve_kwargs:
        raise TypeError("serve_http_and_ws() sets create_connection itself")
    front = _HttpFront(
        app=http_app,
        exchanges=exchanges if exchanges is not None else HttpExchanges(),
        max_head_bytes=max_head_bytes,
        max_body_bytes=max_body_bytes,
        open_timeout=open_timeout,
        server_header=serve_kwargs.get("server_header", SERVER),
    )

    class _BoundConnection(_SniffingConnection):
        _front = front

    return serve(
        ws_handler,
        host,
        port,
        open_timeout=open_timeout,
        create_connection=_BoundConnection,
        **serve_kwargs,
    )
