"""The HTTP routes beside the WebSocket (docs/protocol.md section 9).

* ``GET /healthz`` -- ``{"status": "ok", "version": ...}``, no auth.
* ``GET /usage`` -- the Bearer token's budget in the current window (``?token=`` also works).
* ``POST /prompt`` -- one turn without a WebSocket: JSON ``{"result", "messages",
  "sessionId"}``, or with ``Accept: text/event-stream`` an ``event: message`` per frame.
* ``POST /sessions/clear`` -- delete one of the Bearer token's user's sessions
  (:mod:`chucky.server.clearing`).
* ``GET /metrics`` -- Prometheus text format, to whom its
  :class:`~chucky.server.metrics.MetricsGate` lets in (a listener of its own with
  ``--metrics-port``: there, the only route).

``POST /prompt`` runs through the very same :class:`~chucky.server.connection.Connection` as a
WebSocket, over an in-process :class:`PromptSocket`: the token, its policy, budgets, limits,
persistence and shutdown behave identically. It has no client to run client-side tools, so a
``tool_call`` is answered at once with an error result the model can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

from .. import __version__
from .._redact import redacting_logger
from ..errors import ChuckyError, ConnectionError, ValidationError
from ..messages import WireModel
from ..options import SessionOptions
from ..protocol.client import (
    ClientProtocol,
    HandshakeFailed,
    Ready,
    ServerError,
    ToolCall,
    TurnFailed,
)
from ..protocol.server_frames import ErrorFrame
from ..tools import error_result
from .auth import authenticate, extract_token
from .budget import UserBudget
from .clearing import clear_session
from .http import HttpRequest, HttpResponse, error_body, sse_event
from .metrics import MetricsGate
from .turn_runner import public_error

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["PromptSocket", "Routes"]

logger = redacting_logger("chucky.server.http")

_STATUS = {
    "AUTHENTICATION_ERROR": http.HTTPStatus.UNAUTHORIZED,
    "BUDGET_EXCEEDED": http.HTTPStatus.PAYMENT_REQUIRED,
    "CONCURRENCY_LIMIT": http.HTTPStatus.TOO_MANY_REQUESTS,
    "RATE_LIMIT": http.HTTPStatus.TOO_MANY_REQUESTS,
    "VALIDATION_ERROR": http.HTTPStatus.BAD_REQUEST,
    "PROVIDER_ERROR": http.HTTPStatus.BAD_GATEWAY,
}
_NO_CLIENT_TOOLS = (
    "Tool {name} runs on the client, and this turn came over HTTP (POST /prompt), which has no "
    "client to run it. Answer without it."
)


def error_status(payload: dict[str, Any]) -> int:
    """The HTTP status of an ``error`` frame's payload."""
    code = payload.get("code")
    reason = (payload.get("details") or {}).get("reason")
    if code == "SESSION_ERROR":
        return http.HTTPStatus.CONFLICT if reason == "session_busy" else http.HTTPStatus.NOT_FOUND
    if reason == "metrics_disabled":
        return http.HTTPStatus.FORBIDDEN
    return _STATUS.get(str(code), http.HTTPStatus.INTERNAL_SERVER_ERROR)


def _error_headers(payload: dict[str, Any]) -> dict[str, str]:
    if error_status(payload) == http.HTTPStatus.UNAUTHORIZED:
        # RFC 9110 section 15.5.2: a 401 carries the challenge (RFC 6750 section 3).
        return {"WWW-Authenticate": 'Bearer realm="chucky"'}
    retry = (payload.get("details") or {}).get("retryAfter")
    return {"Retry-After": str(retry)} if isinstance(retry, int) else {}


class PromptSocket:
    """The socket of a ``POST /prompt`` turn, driven by a real
    :class:`~chucky.protocol.client.ClientProtocol`: it plays the client's frames (``init``,
    the turn once ``ready`` came, ``end_input``), answers every ``tool_call`` with an error
    result, and hands each message or ``error`` the server sends to ``sink`` as its wire dict."""

    def __init__(
        self,
        options: dict[str, Any],
        content: str | list[Any],
        sink: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._sink = sink
        self._content = content
        self._proto = ClientProtocol(options)
        self._inbox.put_nowait(self._proto.start())
        self.closed = False

    async def recv(self) -> str | bytes:
        text = await self._inbox.get()
        if text is None:
            raise ConnectionClosedOK(None, None)
        return text

    async def send(self, message: str | bytes, *, text: bool | None = None) -> None:
        if self.closed:
            raise ConnectionClosedOK(None, None)
        proto = self._proto
        event = proto.receive(message)
        frame: dict[str, Any] | None = None
        if isinstance(event, Ready):
            self._inbox.put_nowait(proto.send_turn(self._content))
            self._inbox.put_nowait(proto.send_control("end_input"))
        elif isinstance(event, ToolCall):
            answer = error_result(_NO_CLIENT_TOOLS.format(name=event.tool_name))
            self._inbox.put_nowait(proto.send_tool_result(event.call_id, answer.to_wire()))
        elif isinstance(event, WireModel):
            frame = dict(event)
        elif isinstance(event, TurnFailed):
            frame = ErrorFrame(payload=event.payload).model_dump(mode="json")
        elif isinstance(event, HandshakeFailed | ServerError):
            frame = ErrorFrame(payload=event.error.to_payload()).model_dump(mode="json")
        if frame is None:
            return
        try:
            await self._sink(frame)
        except ConnectionError as exc:  # the HTTP client went away
            self.closed = True
            self._inbox.put_nowait(None)
            raise ConnectionClosedError(None, None) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self._inbox.put_nowait(None)


Handler = Callable[[HttpRequest, HttpResponse], Awaitable[int]]


class Routes:
    """The HTTP application of a :class:`~chucky.server.app.ChuckyServer`.

    Args:
        server: The server whose state the routes serve.
        metrics: Who may read ``GET /metrics`` here; ``None``: not served here (404).
        sessions: Whether to serve ``/healthz``, ``/usage`` and ``/prompt`` (the main
            listener) or ``/metrics`` alone (a metrics listener).
    """

    def __init__(
        self, server: ChuckyServer, *, metrics: MetricsGate | None, sessions: bool = True
    ) -> None:
        self.server = server
        self._metrics_gate = metrics
        self._handlers: dict[tuple[str, str], Handler] = {}
        if sessions:
            self._handlers[("GET", "/healthz")] = self.healthz
            self._handlers[("GET", "/usage")] = self.usage
            self._handlers[("POST", "/prompt")] = self.prompt
            self._handlers[("POST", "/sessions/clear")] = self.clear_session
        if metrics is not None:
            self._handlers[("GET", "/metrics")] = self.metrics
        self._paths = {path: method for method, path in self._handlers}
        self._websocket_here = sessions

    async def __call__(self, request: HttpRequest, response: HttpResponse) -> None:
        route = (request.method, request.path.rstrip("/") or "/")
        handler = self._handlers.get(route)
        status = await self._dispatch(handler, request, response)
        self.server.metrics.http_request(route[1] if handler else "other", status)

    async def _dispatch(
        self, handler: Handler | None, request: HttpRequest, response: HttpResponse
    ) -> int:
        if handler is not None:
            try:
                return await handler(request, response)
            except ChuckyError as exc:
                payload = public_error(exc).to_payload()
                status = error_status(payload)
                await response.send_json(status, {"error": payload}, _error_headers(payload))
                return status
        path = request.path
        allowed = self._paths.get(path.rstrip("/") or "/")
        if allowed is not None:
            status = http.HTTPStatus.METHOD_NOT_ALLOWED
            message = f"{request.method[:20]} not allowed on {path}"
            await response.send_json(status, error_body(status, message), {"Allow": allowed})
            return status
        if self._websocket_here and path in ("/ws", "/ws/"):
            status = http.HTTPStatus.UPGRADE_REQUIRED
            body = error_body(status, "this endpoint speaks WebSocket")
            await response.send_json(status, body, {"Upgrade": "websocket"})
            return status
        status = http.HTTPStatus.NOT_FOUND
        await response.send_json(status, error_body(status, f"no route for {path[:200]}"))
        return status

    async def healthz(self, request: HttpRequest, response: HttpResponse) -> int:
        await response.send_json(200, {"status": "ok", "version": __version__})
        return 200

    async def metrics(self, request: HttpRequest, response: HttpResponse) -> int:
        assert self._metrics_gate is not None  # routed only with a gate
        self._metrics_gate.check(request.headers.get("Authorization"))
        body, content_type = self.server.metrics.render()
        await response.send_text(200, body.decode(), content_type)
        return 200

    async def usage(self, request: HttpRequest, response: HttpResponse) -> int:
        claims = await authenticate(_request_token(request), self.server.secrets_of)
        budget = UserBudget(
            self.server.store,
            claims,
            self.server.budget_settings,
            node_id=self.server.node_id,
        )
        await response.send_json(200, await budget.report(time.time()))
        return 200

    async def clear_session(self, request: HttpRequest, response: HttpResponse) -> int:
        claims = await authenticate(_request_token(request), self.server.secrets_of)
        body = request.json()
        session_id = body.get("sessionId") if isinstance(body, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise ValidationError(
                "Invalid request: the body must be a JSON object with a 'sessionId' string",
                details={"reason": "invalid_frame"},
            )
        deleted = await clear_session(self.server, claims, session_id)
        await response.send_json(200, {"sessionId": session_id, "deleted": deleted})
        return 200

    async def prompt(self, request: HttpRequest, response: HttpResponse) -> int:
        body = request.json()
        if not isinstance(body, dict):
            raise ValidationError(
                "Invalid request: the body must be a JSON object",
                details={"reason": "invalid_frame"},
            )
        options = body.get("options")
        options = dict(options) if isinstance(options, dict) else {}
        token = options.pop("token", None) or body.get("token")
        if not isinstance(token, str) or not token:
            token = _request_token(request)
        claims = await authenticate(token, self.server.secrets_of)
        content = body.get("message", body.get("prompt"))
        if not isinstance(content, str | list) or not content:
            raise ValidationError(
                "Invalid request: 'message' must be a non-empty string or a list of content blocks",
                details={"reason": "invalid_frame"},
            )
        for key, value in body.items():  # flat options beside the message, as P's prompt frame
            if key not in ("message", "prompt", "options", "token"):
                options.setdefault(key, value)
        try:
            SessionOptions.model_validate(options)  # a bad option is a 400, before any work
        except (PydanticValidationError, RecursionError) as exc:
            raise ValidationError(
                f"Invalid options: {str(exc)[:300]}", details={"reason": "invalid_options"}
            ) from exc
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await self._stream(claims, options, content, response)
        return await self._collect(claims, options, content, response)

    async def _run(self, socket: PromptSocket, claims: Any, response: HttpResponse) -> None:
        """Run the turn; a client that goes away ends it, as a WebSocket that closes does."""

        async def watch() -> None:
            await response.wait_disconnected()
            await socket.close()

        watcher = asyncio.create_task(watch())
        try:
            await self.server.run_connection(socket, claims)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _collect(
        self, claims: Any, options: dict[str, Any], content: Any, response: HttpResponse
    ) -> int:
        frames: list[dict[str, Any]] = []

        async def sink(frame: dict[str, Any]) -> None:
            frames.append(frame)

        await self._run(PromptSocket(options, content, sink), claims, response)
        result = next((f for f in reversed(frames) if f.get("type") == "result"), None)
        error = next((f for f in frames if f.get("type") == "error"), None)
        if result is None:
            payload = (error or {}).get("payload") or {
                "message": "Internal error: the turn ended without a result",
                "code": "INTERNAL_ERROR",
            }
            status = error_status(payload)
            await response.send_json(status, {"error": payload}, _error_headers(payload))
            return status
        messages = [f for f in frames if f.get("type") not in ("result", "error")]
        await response.send_json(
            200, {"result": result, "messages": messages, "sessionId": result.get("session_id")}
        )
        return 200

    async def _stream(
        self, claims: Any, options: dict[str, Any], content: Any, response: HttpResponse
    ) -> int:
        await response.start_stream(
            200, "text/event-stream", {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

        async def sink(frame: dict[str, Any]) -> None:
            await response.write(sse_event(json.dumps(frame), event="message"))

        await self._run(PromptSocket(options, content, sink), claims, response)
        with contextlib.suppress(ConnectionError):
            await response.end()
        return 200


def _request_token(request: HttpRequest) -> str | None:
    """The Bearer token, else ``?token=`` (as for the WebSocket upgrade)."""
    values = request.query.get("token") or [""]
    return extract_token(request.path, request.headers) or values[0] or None
