"""Opening one client WebSocket: the URL with its token, the headers, and a refused upgrade
translated into the :mod:`chucky.errors` tree (docs/protocol.md sections 1 and 9)."""

from __future__ import annotations

import asyncio
import builtins
import json
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from .. import __version__
from .._redact import redact, redacting_logger
from ..errors import (
    AuthenticationError,
    ChuckyError,
    ConnectionError,
    HandshakeError,
    TimeoutError,
    ValidationError,
)

__all__ = ["MAX_INBOUND_FRAME", "USER_AGENT", "WebSocket", "dial"]

USER_AGENT: Final = f"chucky-python/{__version__}"
MAX_INBOUND_FRAME: Final = 16 * 1024 * 1024


async def dial(url: str, token: str, *, deadline: float | None) -> WebSocket:
    """Open a WebSocket to ``url`` with ``token`` (query parameter and Bearer header).

    Raises:
        AuthenticationError: the upgrade was refused with 401 or 403.
        HandshakeError: the upgrade was refused otherwise, or failed.
        ValidationError: ``url`` is not a ws:// or wss:// URL.
        ConnectionError: the server cannot be reached.
        TimeoutError: no upgrade within ``deadline`` seconds.
    """
    full = _url_with_token(url, token)
    try:
        async with asyncio.timeout(deadline):
            return await connect(
                full,
                additional_headers={"Authorization": f"Bearer {token}"},
                user_agent_header=USER_AGENT,
                open_timeout=None,
                ping_interval=None,  # the connection's keepalive task pings
                close_timeout=5,
                max_size=MAX_INBOUND_FRAME,
                proxy=None,
                logger=redacting_logger("chucky.client.websockets"),
            )
    except (OSError, InvalidHandshake, InvalidURI, builtins.TimeoutError) as exc:
        raise _handshake_error(exc, full) from exc


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
