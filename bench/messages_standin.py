"""A local stand-in of Anthropic's Messages API for the benchmarks: asyncio only, no chucky code.

Run as a subprocess by ``bench_server.py``; prints ``messages stand-in listening on
http://127.0.0.1:PORT`` first. HTTP/1.1 with keep-alive (every response has a
``Content-Length``), ``TCP_NODELAY`` on every accepted socket, and each response written in ONE
``write``, so the stand-in adds as little as it can to a call:

``POST /v1/messages`` with ``"stream": true``
    A short SSE stream (``message_start``, ``content_block_start``, two ``text_delta``
    ``content_block_delta``s, ``content_block_stop``, ``message_delta`` with the usage,
    ``message_stop``), answering ``hi``.
``POST /v1/messages`` without ``stream``
    The same answer as one JSON message.
``POST /v1/messages/count_tokens``
    ``{"input_tokens": 12}``.

Anything else is answered 404. The request body is read (by ``Content-Length``) but only its
``model`` and ``stream`` are looked at.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

INPUT_TOKENS = 12
OUTPUT_TOKENS = 2


def _sse(model: str) -> bytes:
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "h"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "i"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": OUTPUT_TOKENS},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
        for e in events
    )


def _message(model: str) -> bytes:
    return json.dumps(
        {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "hi"}],
            "model": model,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }
    ).encode()


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"content-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n"
        "request-id: req_bench\r\n"
        "connection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


# The answers depend on the model only; keep them per model.
_cache: dict[tuple[str, bool], bytes] = {}


def _answer(path: str, body: bytes) -> bytes:
    if path == "/v1/messages/count_tokens":
        return _response("200 OK", "application/json", b'{"input_tokens":12}')
    if path != "/v1/messages":
        return _response("404 Not Found", "application/json", b'{"type":"error"}')
    request = json.loads(body or b"{}")
    model, stream = str(request.get("model", "claude")), bool(request.get("stream"))
    key = (model, stream)
    if key not in _cache:
        if stream:
            _cache[key] = _response("200 OK", "text/event-stream", _sse(model))
        else:
            _cache[key] = _response("200 OK", "application/json", _message(model))
    return _cache[key]


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1].split("?", 1)[0]
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            writer.write(_answer(path, body))
            if close:
                await writer.drain()
                return
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"messages stand-in listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
