"""The connection that sniffs the request head, then becomes websockets' or plain HTTP's.

Theory of operation
-------------------

Each accepted TCP connection starts in a *sniffing* phase, owned by :class:`SniffingConnection`
(a websockets :class:`~websockets.asyncio.server.ServerConnection`). It withholds
``connection_made`` from websockets, so no handshake task exists yet, and feeds the bytes it
receives to a :class:`~chucky.server.http.sniffer.RequestHeadSniffer` (pure: bytes in, verdict
out) until the blank line that ends the request head, under a size cap and the open timeout.
Then, once and for all:

``WEBSOCKET``  (``GET`` with ``Upgrade: websocket``, RFC 6455 section 4.1)
    websockets gets ``connection_made`` and the buffered bytes, and every later protocol
    callback; from here on the connection is exactly a websockets connection, with the
    caller's ``process_request``, ``open_timeout`` and handler. One difference: the upgrades
    websockets refuses itself (a missing ``Sec-WebSocket-Key``, a server shutting down) are
    answered with the JSON error body of every other answer
    (:func:`~chucky.server.http.interface.error_body`), not websockets' plain text; a
    response the caller's ``process_request`` makes with ``connection.respond`` stays as made.

``HTTP``  (anything else, including garbage and over-long heads)
    the transport is re-pointed at an :class:`~chucky.server.http.channel.HttpChannel`
    (``transport.set_protocol``). The channel is a thin asyncio shell around an
    ``h11.Connection``: callbacks only move bytes into an inbox and wake one task, which reads a
    request with its body, calls the :data:`~chucky.server.http.interface.HttpApp` and writes the
    response through h11.

::

    connection_made ──► SNIFFING ──head complete──► WEBSOCKET   (websockets from here on)
                           │   └─────────────────► HTTP        (HttpChannel from here on)
                           └─ timeout / EOF / close ──► CLOSED  (dropped; websockets never knew)
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Callable
from typing import Any, ClassVar, cast

from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.typing import StatusLike

from ..._redact import redacting_logger
from .channel import HttpChannel
from .exchanges import HttpFront
from .interface import error_body
from .sniffer import HeadKind, RequestHeadSniffer

__all__ = ["SniffingConnection"]

logger = redacting_logger("chucky.server.http")


class _Phase(enum.Enum):
    SNIFFING = "sniffing"
    WEBSOCKET = "websocket"
    HTTP = "http"
    CLOSED = "closed"


class SniffingConnection(ServerConnection):
    """A websockets connection that first decides whether it should be one (module docstring).

    :func:`serve_http_and_ws` derives one subclass per server, binding ``_front``.
    """

    _front: ClassVar[HttpFront]

    def __init__(self, protocol: ServerProtocol, server: Server, **kwargs: Any) -> None:
        super().__init__(protocol, server, **kwargs)
        # websockets builds its refusals with this method (while parsing the request, in
        # accept(), and for a server closing mid-handshake) and offers no hook for all three.
        protocol.reject = _json_reject(protocol.reject)  # type: ignore[method-assign,assignment]
        self._phase = _Phase.SNIFFING
        self._sniffer = RequestHeadSniffer(self._front.max_head_bytes)
        self._raw_transport: asyncio.Transport | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def respond(self, status: StatusLike, text: str) -> Response:
        """A plain-text response for ``process_request`` to return, as websockets documents it
        (the caller's own answer is left alone; only websockets' refusals become JSON)."""
        return ServerProtocol.reject(self.protocol, status, text)

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
        channel = HttpChannel(transport, self._front, self.server)
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


def _json_reject(
    reject: Callable[[StatusLike, str], Response],
) -> Callable[[StatusLike, str], Response]:
    """``ServerProtocol.reject`` answering with the JSON error body instead of plain text."""

    def json_reject(status: StatusLike, text: str) -> Response:
        response = reject(status, text)
        body = json.dumps(
            error_body(response.status_code, text.strip()), separators=(",", ":")
        ).encode()
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = "application/json"
        response.headers["Content-Length"] = str(len(body))
        response.body = body
        return response

    return json_reject
