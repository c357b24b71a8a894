"""A local stand-in for Anthropic's Messages API: replays recorded SSE bodies on 127.0.0.1.

``chucky serve`` reaches it through the SDK's own ``ANTHROPIC_BASE_URL``, so a subprocess runs
its real Anthropic provider, SDK and HTTP stack against it without the network::

    with MessagesAPI([sse_text("Hi")]) as api:
        env = {"ANTHROPIC_API_KEY": "sk-ant-...", "ANTHROPIC_BASE_URL": api.url}

Each ``POST`` (any path: ``/v1/messages``, or ``/v1/chat/completions`` for the OpenAI SDK) gets
the next reply (the last one repeats): an SSE body (``bytes``, status 200) or a :class:`Reply`
with its own status and headers (the recorded errors :func:`rate_limited`, :func:`overloaded`;
:func:`sse_error` is an ``error`` event inside a 200 stream). :attr:`MessagesAPI.requests`
records each request's path, JSON body and API key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "MessagesAPI",
    "Recorded",
    "Reply",
    "overloaded",
    "rate_limited",
    "sse",
    "sse_error",
    "sse_text",
    "sse_tool_use",
]


@dataclass(frozen=True)
class Reply:
    """A whole HTTP response: status, body and headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _error_body(error_type: str, message: str) -> bytes:
    # The Messages API's error shape, as recorded (request_id also in a header).
    return json.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }
    ).encode()


def rate_limited(retry_after: str | None = "2") -> Reply:
    """A recorded 429: ``rate_limit_error``, with ``retry-after`` (seconds) when given."""
    headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    message = (
        "This request would exceed the rate limit for your organization of 50,000 input "
        "tokens per minute. Please retry after the time in the retry-after header."
    )
    return Reply(429, _error_body("rate_limit_error", message), headers)


def overloaded() -> Reply:
    """A recorded 529: ``overloaded_error``."""
    headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", "x-should-retry": "true"}
    return Reply(529, _error_body("overloaded_error", "Overloaded"), headers)


def sse_error(error_type: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    """A 200 stream whose only event is an ``error`` (the API overloaded mid-request)."""
    return sse({"type": "error", "error": {"type": error_type, "message": message}})


def sse(*events: dict[str, Any]) -> bytes:
    """An SSE body in the Messages API's format (``event:`` named after each event's type)."""
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _start(model: str, input_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_recorded",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }


def _end(stop_reason: str, output_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    )


def sse_text(
    *chunks: str, model: str = "claude-haiku-4-5-20251001", input_tokens: int = 12
) -> bytes:
    """A text answer streamed as ``chunks``."""
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}}
        for c in chunks
    ]
    return sse(
        _start(model, input_tokens),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *deltas,
        {"type": "content_block_stop", "index": 0},
        *_end("end_turn", 3 * len(chunks)),
    )


def sse_tool_use(
    name: str, arguments: dict[str, Any], *, model: str = "claude-haiku-4-5-20251001"
) -> bytes:
    """A ``tool_use`` answer, its input streamed in two JSON fragments."""
    text = json.dumps(arguments)
    half = len(text) // 2
    block = {"type": "tool_use", "id": "toolu_01recorded", "name": name, "input": {}}
    fragments = [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": part},
        }
        for part in (text[:half], text[half:])
    ]
    return sse(
        _start(model, 40),
        {"type": "content_block_start", "index": 0, "content_block": block},
        *fragments,
        {"type": "content_block_stop", "index": 0},
        *_end("tool_use", 20),
    )


Recorded = tuple[str, dict[str, Any], str]
"""A request: its path, its JSON body, its API key."""


class MessagesAPI:
    """The stand-in server (a context manager); :attr:`url` is its base URL."""

    def __init__(self, bodies: Sequence[bytes | Reply]) -> None:
        if not bodies:
            raise ValueError("give at least one body")
        self.requests: list[Recorded] = []
        self._bodies = [
            body if isinstance(body, Reply) else Reply(200, body, content_type="text/event-stream")
            for body in bodies
        ]
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                # The key, as whichever header this SDK version sends it in.
                key = self.headers.get("x-api-key") or self.headers.get("authorization", "")
                reply = api._record((self.path, body, key.removeprefix("Bearer ")))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._bodies.pop(0) if len(self._bodies) > 1 else self._bodies[0]

    def __enter__(self) -> MessagesAPI:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
