"""A raw WebSocket client for driving the server frame by frame (no chucky client involved).

Every wait is bounded by a few :data:`support.timing.TICK`; a frame that does not come in time
fails the test with the frames seen so far.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chucky.testing import ScriptedServer
from support.timing import ticks

__all__ = [
    "FRAME_TIMEOUT",
    "Frame",
    "assert_no_frame",
    "check_result",
    "closed_code",
    "collect_turn",
    "http_get",
    "http_post",
    "init",
    "open_raw",
    "open_session",
    "poll_until",
    "recv",
    "send",
    "turn",
    "user_frame",
    "wait_closed",
]

Frame = dict[str, Any]

FRAME_TIMEOUT = ticks(20)
"""How long one expected frame may take (loopback; generous for a loaded machine)."""


@asynccontextmanager
async def open_raw(
    server: ScriptedServer,
    *,
    user: str = "test-user",
    token: str | None = None,
    bearer: bool = False,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    max_size: int | None = 64 * 1024 * 1024,
) -> AsyncIterator[ClientConnection]:
    """Connect to ``server``: the token goes in ``?token=`` or (``bearer``) only in a header.

    ``token=""`` connects with no token at all.
    """
    token = server.token(user) if token is None else token
    async with open_url(
        server.url, token, bearer=bearer, query=query, headers=headers, max_size=max_size
    ) as ws:
        yield ws


@asynccontextmanager
async def open_url(
    url: str,
    token: str,
    *,
    bearer: bool = False,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    max_size: int | None = 64 * 1024 * 1024,
) -> AsyncIterator[ClientConnection]:
    """:func:`open_raw` for a server known by its URL (``chucky serve`` in a subprocess).

    ``token=""`` connects with no token at all.
    """
    params: dict[str, str] = {}
    extra_headers = dict(headers or {})
    if bearer:
        extra_headers["Authorization"] = f"Bearer {token}"
    elif token:
        params["token"] = token
    params.update(query or {})
    url = url + (f"?{urlencode(params)}" if params else "")
    async with connect(
        url,
        additional_headers=extra_headers,
        max_size=max_size,
        open_timeout=FRAME_TIMEOUT,
        close_timeout=FRAME_TIMEOUT,
    ) as ws:
        yield ws


async def send(ws: ClientConnection, frame: Mapping[str, Any] | Sequence[Any] | str) -> None:
    """Send one frame: a JSON value, or raw text as is."""
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> Frame:
    """The next frame, decoded; it must be a JSON object and arrive within ``timeout``."""
    async with asyncio.timeout(timeout):
        text = await ws.recv()
    assert isinstance(text, str), f"expected a text frame, got {type(text).__name__}"
    frame = json.loads(text)
    assert isinstance(frame, dict), f"a frame must be an object: {text[:200]}"
    return frame


async def assert_no_frame(ws: ClientConnection, wait: float = ticks(4)) -> None:
    """Nothing arrives for ``wait`` seconds (the socket stays open)."""
    try:
        async with asyncio.timeout(wait):
            text = await ws.recv()
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {str(text)[:300]}")


async def collect_turn(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> list[Frame]:
    """Every frame up to and including the next ``result`` or ``error``."""
    frames: list[Frame] = []
    while True:
        try:
            frame = await recv(ws, timeout)
        except TimeoutError:
            kinds = [f.get("type") for f in frames]
            raise AssertionError(f"no result/error within the timeout; got {kinds}") from None
        frames.append(frame)
        if frame.get("type") in ("result", "error"):
            return frames


async def closed_code(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> int | None:
    """Wait for the server to close; no frame may arrive first. Returns the close code."""
    try:
        async with asyncio.timeout(timeout):
            text = await ws.recv()
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError(f"expected the close, got a frame: {str(text)[:300]}")


async def wait_closed(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> list[Frame]:
    """The frames that arrive before the server closes (the close must come in time)."""
    frames: list[Frame] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                text = await ws.recv()
                frames.append(json.loads(text))
        except ConnectionClosed:
            return frames


def user_frame(content: str | list[dict[str, Any]], **extra: Any) -> Frame:
    """T's turn form."""
    return {
        "type": "user",
        "session_id": extra.pop("session_id", "unknown"),
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        **extra,
    }


async def init(ws: ClientConnection, **options: Any) -> Frame:
    """Send ``init`` (P order: ``ready`` first) and return the ``session_info`` data."""
    ready = await recv(ws)
    assert ready == {"type": "control", "payload": {"action": "ready"}}, ready
    await send(ws, {"type": "init", "payload": options})
    info = await recv(ws)
    assert info["type"] == "control", info
    assert info["payload"]["action"] == "session_info", info
    data = info["payload"]["data"]
    assert isinstance(data, dict)
    return data


@asynccontextmanager
async def open_session(
    server: ScriptedServer, *, user: str = "test-user", token: str | None = None, **options: Any
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A connection with its session open: ``(ws, session_info data)``."""
    async with open_raw(server, user=user, token=token) as ws:
        info = await init(ws, **options)
        yield ws, info


async def turn(
    ws: ClientConnection, content: str | list[dict[str, Any]], timeout: float = FRAME_TIMEOUT
) -> list[Frame]:
    """Send a ``user`` turn and collect its frames up to the ``result`` or ``error``."""
    await send(ws, user_frame(content))
    return await collect_turn(ws, timeout)


def _get(url: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=FRAME_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def http_get(
    server: ScriptedServer, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP GET on the server's port: ``(status, headers, body)``."""
    return await http_get_url(server.url, path, headers)


async def http_get_url(
    url: str, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """:func:`http_get` for a server known by its WebSocket URL (``ws://HOST:PORT/ws``)."""
    base = url.removesuffix("/ws").replace("ws://", "http://", 1)
    return await asyncio.to_thread(_get, base + path, headers or {})


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=FRAME_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def http_post(
    server: ScriptedServer,
    path: str,
    body: bytes | object,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP POST on the server's port: ``(status, headers, body)``.

    ``body`` is sent as is when it is ``bytes``, else as JSON (``Content-Type:
    application/json`` unless ``headers`` name one).
    """
    sent = dict(headers or {})
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
        if not any(name.lower() == "content-type" for name in sent):
            sent["Content-Type"] = "application/json"
    return await asyncio.to_thread(_post, server.http_url + path, body, sent)


USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def check_result(frames: Sequence[Frame], *, subtype: str = "success") -> Frame:
    """The turn's ``result``: exactly one, last, with the wire types of docs/protocol.md section 4.

    Also checks it belongs to the session named by the turn's ``system`` init (if one came).
    """
    results = [f for f in frames if f.get("type") == "result"]
    assert len(results) == 1, [f.get("type") for f in frames]
    result = frames[-1]
    assert result["type"] == "result", [f.get("type") for f in frames]
    assert "payload" not in result  # bare, never wrapped
    assert result["subtype"] == subtype, result
    assert result["is_error"] is (subtype != "success"), result
    for key in ("num_turns", "duration_ms", "duration_api_ms"):
        assert type(result[key]) is int, (key, result[key])
        assert result[key] >= 0
    assert type(result["total_cost_usd"]) is float, result["total_cost_usd"]
    assert set(USAGE_KEYS) <= set(result["usage"]), result["usage"]
    for key in USAGE_KEYS:
        assert type(result["usage"][key]) is int, (key, result["usage"][key])
    assert isinstance(result["uuid"], str)
    assert result["uuid"]
    inits = [f for f in frames if f.get("type") == "system" and f.get("subtype") == "init"]
    if inits:
        assert result["session_id"] == inits[0]["session_id"]
    if subtype == "success":
        assert isinstance(result["result"], str)
    else:
        assert "result" not in result or result["result"] is None
        assert isinstance(result["errors"], list)
    return result


async def poll_until(predicate: Callable[[], bool], timeout: float = ticks(20)) -> None:
    """Wait until ``predicate()`` holds (server internals with no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing to await but time
            await asyncio.sleep(ticks(1))
