"""Plain HTTP on the WebSocket port: sniff the request head, then hand it to websockets or h11.

websockets' HTTP parser refuses any request with a body and runs ``process_request`` under the
handshake's ``open_timeout``, so it can serve neither ``POST /prompt`` nor a long
``text/event-stream`` (docs/protocol.md section 9). This package puts a small front in place,
through websockets' documented escape hatch ``serve(..., create_connection=...)``.

Modules, from the outside in:

* ``server`` -- :func:`serve_http_and_ws`, the entry point.
* ``connection`` -- the connection that sniffs each request head and becomes either a websockets
  connection or a plain-HTTP channel (the theory of operation, with its state diagram).
* ``sniffer`` -- :class:`RequestHeadSniffer`, the pure classifier of request heads.
* ``channel`` -- the asyncio shell around h11 that serves plain HTTP/1.1 (keep-alive, errors,
  lingering close).
* ``response`` -- the response writer of one exchange (whole or streamed).
* ``interface`` -- what an :data:`HttpApp` sees: :class:`HttpRequest`, :class:`HttpResponse`,
  :func:`sse_event`, and :func:`error_body` (the one shape of error bodies).
* ``exchanges`` -- :class:`HttpExchanges`, the registry a graceful shutdown drains.
* ``limits`` -- the default size caps and open timeout.

Everything is logged to the ``chucky.server.http`` logger.
"""

from __future__ import annotations

from .exchanges import HttpExchanges
from .interface import HttpApp, HttpRequest, HttpResponse, error_body, sse_event
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEAD_BYTES, DEFAULT_OPEN_TIMEOUT
from .server import serve_http_and_ws
from .sniffer import HeadKind, RequestHeadSniffer

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
    "error_body",
    "serve_http_and_ws",
    "sse_event",
]
