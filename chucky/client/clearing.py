"""``clear_session``: one small HTTP request beside the WebSocket (docs/protocol.md section 9).

The client keeps to its light dependencies (no HTTP library): the request is one HTTP/1.1
``POST /sessions/clear`` written on an asyncio stream, ``Connection: close``, its answer read to
the end. The URL is the client's WebSocket URL with ``ws``/``wss`` made ``http``/``https`` and
the path ``/ws`` replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    ChuckyError,
    ConnectionError,
    ProtocolError,
    ValidationError,
    error_from_payload,
)
from ..errors import TimeoutError as ChuckyTimeoutError

__all__ = ["clear_session_request"]

_MAX_ANSWER = 1024 * 1024


def _target(url: str) -> tuple[str, int, bool, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValidationError(f"invalid url {url!r}: expected ws:// or wss://")
    secure = parts.scheme == "wss"
    path = parts.path or "/"
    base = path[: -len("/ws")] if path.rstrip("/").endswith("/ws") else path.rstrip("/")
    base = base.rstrip("/")
    return parts.hostname, parts.port or (443 if secure else 80), secure, base + "/sessions/clear"


async def _exchange(url: str, token: str, session_id: str) -> tuple[int, bytes]:
    host, port, secure, path = _target(url)
    body = json.dumps({"sessionId": session_id}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    context = ssl.create_default_context() if secure else None
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except OSError as exc:
        raise ConnectionError(f"could not reach {host}:{port}: {exc.strerror or exc}") from exc
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await reader.read(_MAX_ANSWER)
        while chunk := await reader.read(_MAX_ANSWER):
            answer += chunk
            if len(answer) > _MAX_ANSWER:
                raise ProtocolError("the server's answer to /sessions/clear is too large")
    except OSError as exc:
        raise ConnectionError(f"connection to {host}:{port} failed: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ProtocolError("the server's answer to /sessions/clear is not HTTP") from None
    return status, payload


async def clear_session_request(
    url: str, token: str, session_id: str, *, deadline: float | None
) -> bool:
    """Ask the server to delete ``session_id``; returns whether there was one to delete.

    Raises:
        SessionError: ``session_busy``: the session is open on a connection.
        AuthenticationError: the token was refused.
        TimeoutError: no answer within ``deadline`` seconds.
        ConnectionError: the server could not be reached.
        ProtocolError: the answer is not the documented one (a server without the route).
    """
    try:
        status, payload = await asyncio.wait_for(_exchange(url, token, session_id), deadline)
    except TimeoutError as exc:
        raise ChuckyTimeoutError(
            f"no answer to clear_session within {deadline} s", details={"reason": "timeout"}
        ) from exc
    try:
        decoded: Any = json.loads(payload) if payload else None
    except ValueError:
        decoded = None
    if status == 200 and isinstance(decoded, dict) and isinstance(decoded.get("deleted"), bool):
        return bool(decoded["deleted"])
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
        error: ChuckyError = error_from_payload(decoded["error"], session_id=session_id)
        raise error
    raise ProtocolError(
        f"the server answered /sessions/clear with HTTP {status}: it may not support "
        "clearing sessions (a chucky server does)",
        details={"status": status},
    )
