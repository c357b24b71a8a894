"""A local stand-in for Anthropic's Messages API: replays recorded SSE bodies on 127.0.0.1.

``chucky serve`` reaches it through the SDK's own ``ANTHROPIC_BASE_URL``, so a subprocess runs
its real Anthropic provider, SDK and HTTP stack against it without the network::

    with MessagesAPI([sse_text("Hi")]) as api:
        env = {"ANTHROPIC_API_KEY": "sk-ant-...", "ANTHROPIC_BASE_URL": api.url}

Each ``POST /v1/messages`` gets the next body (the last one repeats); :attr:`MessagesAPI.requests`
records each request's path, JSON body and API key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["MessagesAPI", "Recorded", "sse", "sse_text", "sse_tool_use"]


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

    def __init__(self, bodies: Sequence[bytes]) -> None:
        if not bodies:
            raise ValueError("give at least one body")
        self.requests: list[Recorded] = []
        self._bodies = list(bodies)
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                # The key, as whichever header this SDK version sends it in.
                key = self.headers.get("x-api-key") or self.headers.get("authorization", "")
                reply = api._record((self.path, body, key.removeprefix("Bearer ")))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, request: Recorded) -> bytes:
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
