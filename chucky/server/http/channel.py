"""The plain-HTTP channel: a thin asyncio shell around an ``h11.Connection``, one per connection.

A :class:`~chucky.server.http.connection.SniffingConnection` hands the transport over once the
request head says it is not a WebSocket upgrade. Callbacks only move bytes into an inbox and wake
one task, which reads a request with its body (under the body cap), calls the app with an
:class:`~chucky.server.http.response.H11Response` and writes the response through h11.

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
from collections.abc import Mapping, Sequence
from typing import Final, cast
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.asyncio.server import Server
from websockets.datastructures import Headers

from ... import errors
from ..._redact import redacting_logger
from .exchanges import HttpFront
from .interface import HttpRequest, error_body
from .response import H11Response

__all__ = ["HttpChannel"]

logger = redacting_logger("chucky.server.http")

# Bytes of unread client input the channel holds before it pauses reading.
_INBOX_LIMIT: Final = 64 * 1024
# Seconds a lingering close waits for the client to close its side.
_LINGER_SECONDS: Final = 2.0


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


class HttpChannel(asyncio.Protocol):
    """Serves plain HTTP/1.1 on one connection: callbacks fill an inbox; one task does the rest."""

    def __init__(self, transport: asyncio.Transport, front: HttpFront, server: Server) -> None:
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

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

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
                    await self.write(
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

    # Writing (also used by the exchange's H11Response)

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the transport's buffer is full (flow control)."""
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

    def encode(self, event: h11.Event) -> bytes:
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
        return self.encode(event)

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
        response = H11Response(self, head_only=request.method == "HEAD")
        try:
            await self._front.app(request, response)
        except Exception as exc:
            if isinstance(exc, builtins.ConnectionError) and self.gone:
                logger.debug("HTTP client went away during %s %s", request.method, request.path)
                return False
            logger.exception("HTTP app failed on %s %s", request.method, request.path)
            if response.started:
                return False
            await response.send_json(500, error_body(500, "internal error"))
        else:
            if not response.started:
                logger.error("HTTP app sent no response to %s %s", request.method, request.path)
                await response.send_json(500, error_body(500, "internal error"))
            else:
                await response.end()
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _reject(self, status: int, message: str) -> None:
        """Answer an error with ``Connection: close``, then close without losing the answer."""
        if self.gone or self._transport.is_closing():
            return
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(error_body(status, message), separators=(",", ":")).encode()
        head = self.response_head(
            status, "application/json", None, content_length=len(body), close=True
        )
        data = head + self.encode(h11.Data(data=body)) + self.encode(h11.EndOfMessage())
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
