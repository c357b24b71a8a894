"""The plain-HTTP application interface: the request an app gets, the response it answers with.

Also :func:`sse_event`, the text of one server-sent event, for apps that stream
``text/event-stream``, and :func:`error_body`, the one shape of every error body (docs/protocol.md
section 9): ``{"error": {"message", "code", "details"?}}``, the payload of an ``error`` frame.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from websockets.datastructures import Headers

from ... import errors

__all__ = ["HttpApp", "HttpRequest", "HttpResponse", "error_body", "sse_event"]

HttpApp = Callable[["HttpRequest", "HttpResponse"], Awaitable[None]]
"""The plain-HTTP application: called once per request; must answer through the response."""


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


# docs/protocol.md section 9: the code and fine reason of an error answered by status alone.
_ERROR_BY_STATUS: Final[dict[int, tuple[str, str | None]]] = {
    400: (errors.ErrorCode.VALIDATION_ERROR, "bad_request"),
    401: (errors.ErrorCode.AUTHENTICATION_ERROR, "invalid_token"),
    404: (errors.ErrorCode.VALIDATION_ERROR, "not_found"),
    405: (errors.ErrorCode.VALIDATION_ERROR, "method_not_allowed"),
    413: (errors.ErrorCode.VALIDATION_ERROR, "body_too_large"),
    426: (errors.ErrorCode.VALIDATION_ERROR, "upgrade_required"),
    431: (errors.ErrorCode.VALIDATION_ERROR, "head_too_large"),
    503: (errors.ErrorCode.SESSION_ERROR, "server_shutdown"),
}


def error_body(
    status: int, message: str, *, code: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """The body of an HTTP error answer: ``{"error": {"message", "code", "details"?}}``.

    Args:
        status: The HTTP status; it gives the ``code`` and ``details.reason`` unless given.
        message: What went wrong, for a person.
        code: The protocol error code (docs/protocol.md section 8); by default the status's
            (``VALIDATION_ERROR`` for a bad request, ``INTERNAL_ERROR`` for a 5xx ...).
        reason: The fine code in ``details.reason``; by default the status's, if any (and
            ``code`` is the status's).

    Returns:
        The JSON-ready body.
    """
    default_code, default_reason = _ERROR_BY_STATUS.get(
        status,
        (
            errors.ErrorCode.INTERNAL_ERROR if status >= 500 else errors.ErrorCode.VALIDATION_ERROR,
            None,
        ),
    )
    if code is None or code == default_code:
        code, reason = default_code, reason or default_reason
    payload: dict[str, Any] = {"message": message, "code": code}
    if reason is not None:
        payload["details"] = {"reason": reason}
    return {"error": payload}
