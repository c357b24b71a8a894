"""The entry point: a websockets server that also answers plain HTTP on the same port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import SERVER

from .connection import SniffingConnection
from .exchanges import HttpExchanges, HttpFront
from .interface import HttpApp
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEAD_BYTES, DEFAULT_OPEN_TIMEOUT

__all__ = ["serve_http_and_ws"]


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
    front = HttpFront(
        app=http_app,
        exchanges=exchanges if exchanges is not None else HttpExchanges(),
        max_head_bytes=max_head_bytes,
        max_body_bytes=max_body_bytes,
        open_timeout=open_timeout,
        server_header=serve_kwargs.get("server_header", SERVER),
    )

    class _BoundConnection(SniffingConnection):
        _front = front

    return serve(
        ws_handler,
        host,
        port,
        open_timeout=open_timeout,
        create_connection=_BoundConnection,
        **serve_kwargs,
    )
