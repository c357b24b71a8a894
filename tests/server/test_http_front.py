"""Plain HTTP and WebSocket on one port (chucky.server.http), over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from support.timing import ticks
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

from chucky.errors import ConnectionError as ChuckyConnectionError
from chucky.errors import InvalidStateError, ValidationError
from chucky.server.http import (
    HeadKind,
    HttpExchanges,
    HttpRequest,
    HttpResponse,
    RequestHeadSniffer,
    serve_http_and_ws,
    sse_event,
)

WAIT = ticks(40)
MAX_BODY = 4096
MAX_HEAD = 16 * 1024


# -- a tiny app ---------------------------------------------------------------------------------


@dataclass
class AppState:
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    saw_disconnect: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    flood_writes: int = 0
    flood_done: bool = False
    requests: list[HttpRequest] = field(default_factory=list)
    ws_paths: list[str] = field(default_factory=list)


FLOOD_CHUNK = 64 * 1024
FLOOD_CHUNKS = 512  # 32 MiB: far more than loopback socket buffers hold


def make_app(state: AppState) -> Any:
    async def app(request: HttpRequest, response: HttpResponse) -> None:
        state.requests.append(request)
        path = request.path
        if path == "/hello":
            await response.send_json(
                200,
                {"method": request.method, "query": request.query, "client": request.client},
                headers={"X-Test": "yes"},
            )
        elif path == "/echo":
            try:
                body = request.json()
            except ValidationError as exc:
                await response.send_json(400, {"error": exc.message})
                return
            await response.send_json(200, {"echo": body, "length": len(request.body)})
        elif path == "/text":
            await response.send_text(200, "héllo", "text/plain; charset=utf-8")
        elif path == "/sse":
            await response.start_stream(200, "text/event-stream")
            await response.write(sse_event(json.dumps({"n": 1})))
            state.first_sent.set()
            await state.gate.wait()
            await response.write(sse_event(json.dumps({"n": 2})))
            await response.end()
        elif path == "/forever":
            await response.start_stream(200, "text/event-stream")
            try:
                n = 0
                while True:
                    n += 1
                    await response.write(sse_event(str(n)))
                    await asyncio.sleep(ticks(1))
            except ChuckyConnectionError:
                state.saw_disconnect.set()
                raise
        elif path == "/flood":
            await response.start_stream(200, "application/octet-stream")
            for _ in range(FLOOD_CHUNKS):
                await response.write(b"x" * FLOOD_CHUNK)
                state.flood_writes += 1
            state.flood_done = True
        elif path == "/gate":
            await state.gate.wait()
            await response.send_json(200, {"gate": "open"})
        elif path == "/slow":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                state.cancelled.set()
                raise
        elif path == "/wait":
            await response.wait_disconnected()
            state.saw_disconnect.set()
            with contextlib.suppress(ChuckyConnectionError):
                await response.send_json(200, {"too": "late"})
            state.gate.set()
        elif path == "/boom":
            raise RuntimeError("app bug")
        elif path == "/boom-late":
            await response.start_stream(200, "text/event-stream")
            await response.write(sse_event("one"))
            raise RuntimeError("app bug after start")
        elif path == "/silent":
            return
        elif path == "/twice":
            await response.send_json(200, {"first": True})
            try:
                await response.send_json(200, {"second": True})
            except InvalidStateError:
                state.gate.set()
        else:
            await response.send_json(404, {"error": f"no route for {path}"})

    return app


@dataclass
class Front:
    server: Server
    exchanges: HttpExchanges
    state: AppState
    port: int


@contextlib.asynccontextmanager
async def running_front(**kwargs: Any) -> AsyncIterator[Front]:
    state = AppState()
    exchanges = HttpExchanges()

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        state.ws_paths.append(request.path)
        if not request.path.startswith("/ws"):
            return connection.respond(404, "not here\n")
        return None

    kwargs.setdefault("max_body_bytes", MAX_BODY)
    kwargs.setdefault("max_head_bytes", MAX_HEAD)
    server = await serve_http_and_ws(
        echo,
        make_app(state),
        "127.0.0.1",
        0,
        exchanges=exchanges,
        process_request=process_request,
        max_size=2**21,
        compression=None,
        **kwargs,
    )
    port = int(next(iter(server.sockets)).getsockname()[1])
    try:
        yield Front(server, exchanges, state, port)
    finally:
        state.gate.set()
        server.close()
        await exchanges.shutdown(ticks(4))
        await server.wait_closed()


@pytest_asyncio.fixture
async def front() -> AsyncIterator[Front]:
    async with running_front() as running:
        yield running


# -- a raw HTTP client --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
    size = int(size_line.strip().split(b";")[0], 16)
    data = await asyncio.wait_for(reader.readexactly(size), WAIT)
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    return data


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), WAIT)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while chunk := await read_chunk(reader):
            body += chunk
        return body
    return await asyncio.wait_for(reader.read(), WAIT)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await read_head(reader)
    return status, headers, await read_body(reader, headers)


async def request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    async with raw(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_response(reader)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The server closed (or reset) the connection, with nothing more to read."""
    try:
        rest = await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return
    assert rest == b""


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


# -- the pure parts -----------------------------------------------------------------------------


def test_sniffer_waits_for_the_blank_line_one_byte_at_a_time() -> None:
    head = get("/ws", "Upgrade: WebSocket", "Connection: Upgrade")
    sniffer = RequestHeadSniffer()
    kinds = [sniffer.feed(head[i : i + 1]) for i in range(len(head))]
    assert kinds[:-1] == [HeadKind.INCOMPLETE] * (len(head) - 1)
    assert kinds[-1] is HeadKind.WEBSOCKET
    assert sniffer.buffered == head


def test_sniffer_classifies_heads() -> None:
    def kind(data: bytes, cap: int = 1024) -> HeadKind:
        return RequestHeadSniffer(cap).feed(data)

    assert kind(get("/ws", "upgrade: websocket")) is HeadKind.WEBSOCKET
    assert kind(get("/ws", "Upgrade: foo, WebSocket")) is HeadKind.WEBSOCKET
    assert kind(get("/ws")) is HeadKind.HTTP
    assert kind(get("/ws", "Upgrade: h2c")) is HeadKind.HTTP
    assert kind(post("/ws", b"", "Upgrade: websocket")) is HeadKind.HTTP
    assert kind(b"GARBAGE\r\n\r\n") is HeadKind.HTTP
    assert kind(b"GET / HTTP/1.1\nUpgrade: websocket\n\n") is HeadKind.WEBSOCKET
    assert kind(b"GET / HTTP/1.1\r\nHost: x\r\n") is HeadKind.INCOMPLETE
    assert kind(b"GET /" + b"a" * 2000) is HeadKind.TOO_LARGE
    assert kind(get("/" + "a" * 2000)) is HeadKind.TOO_LARGE  # complete, but over the cap


def test_sniffer_skips_empty_lines_before_the_request_line() -> None:
    sniffer = RequestHeadSniffer()
    assert sniffer.feed(b"\r\n\r\n") is HeadKind.INCOMPLETE
    assert sniffer.feed(get("/", "Upgrade: websocket")) is HeadKind.WEBSOCKET
    assert sniffer.buffered == get("/", "Upgrade: websocket")


def test_sse_event_splits_lines() -> None:
    assert sse_event("hi") == "event: message\ndata: hi\n\n"
    assert sse_event("a\nb\r\nc", event=None, id="7") == "id: 7\ndata: a\ndata: b\ndata: c\n\n"
    assert sse_event("", event="done") == "event: done\ndata: \n\n"
    with pytest.raises(ValueError):
        sse_event("x", event="a\nb")


def test_request_json_errors_are_readable() -> None:
    assert HttpRequest("POST", "/", body=b'{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(ValidationError, match="empty"):
        HttpRequest("POST", "/").json()
    with pytest.raises(ValidationError, match=r"not valid JSON .*line 1 column 2"):
        HttpRequest("POST", "/", body=b"{nope").json()
    with pytest.raises(ValidationError, match="UTF-8"):
        HttpRequest("POST", "/", body=b"\xff\xfe\xfd").json()


# -- requests and responses ---------------------------------------------------------------------


async def test_get_with_query(front: Front) -> None:
    status, headers, body = await request(front.port, get("/hello?a=1&a=2&empty=&t=x%20y"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-test"] == "yes"
    assert "server" in headers
    assert json.loads(body) == {
        "method": "GET",
        "query": {"a": ["1", "2"], "empty": [""], "t": ["x y"]},
        "client": "127.0.0.1",
    }
    assert front.state.requests[0].path == "/hello"
    assert front.state.ws_paths == []  # plain HTTP never reaches process_request


async def test_post_json(front: Front) -> None:
    status, _, body = await request(front.port, post("/echo", b'{"x": [1, 2]}'))
    assert status == 200
    assert json.loads(body) == {"echo": {"x": [1, 2]}, "length": 13}
    request_seen = front.state.requests[0]
    assert request_seen.headers["content-type"] == "application/json"
    assert request_seen.headers["CONTENT-TYPE"] == "application/json"


async def test_post_bad_json_is_for_the_app_to_answer(front: Front) -> None:
    status, _, body = await request(front.port, post("/echo", b"{oops"))
    assert status == 400
    assert "not valid JSON" in json.loads(body)["error"]


async def test_text_response(front: Front) -> None:
    status, headers, body = await request(front.port, get("/text"))
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.decode() == "héllo"


async def test_body_in_several_tcp_chunks(front: Front) -> None:
    payload = json.dumps({"text": "z" * 3000}).encode()
    data = post("/echo", payload)
    async with raw(front.port) as (reader, writer):
        for start in range(0, len(data), 700):
            writer.write(data[start : start + 700])
            await writer.drain()
            await asyncio.sleep(ticks(0.2))
        status, _, body = await read_response(reader)
    assert status == 200
    assert json.loads(body)["echo"] == {"text": "z" * 3000}


async def test_chunked_request_body(front: Front) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\n[1, 2\r\n4\r\n, 3]\r\n0\r\n\r\n"
    status, _, answer = await request(front.port, head + body)
    assert status == 200
    assert json.loads(answer)["echo"] == [1, 2, 3]


async def test_expect_100_continue(front: Front) -> None:
    payload = b'{"big": true}'
    head = post("/echo", b"", "Expect: 100-continue").replace(
        b"Content-Length: 0", f"Content-Length: {len(payload)}".encode()
    )
    async with raw(front.port) as (reader, writer):
        writer.write(head)
        status, _ = await read_head(reader)
        assert status == 100
        writer.write(payload)
        status, _, body = await read_response(reader)
    assert status == 200
    assert json.loads(body)["echo"] == {"big": True}


async def test_head_request_has_no_body(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/hello").replace(b"GET", b"HEAD", 1) + get("/text"))
        status, headers = await read_head(reader)
        assert status == 200
        assert int(headers["content-length"]) > 0
        status, _, body = await read_response(reader)  # the next response follows at once
    assert status == 200
    assert body.decode() == "héllo"


async def test_long_url_under_the_cap(front: Front) -> None:
    status, _, body = await request(front.port, get("/hello?t=" + "a" * (MAX_HEAD - 200)))
    assert status == 200
    assert len(json.loads(body)["query"]["t"][0]) == MAX_HEAD - 200


# -- keep-alive ---------------------------------------------------------------------------------


async def test_keep_alive_sequential_and_pipelined(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/hello?n=1"))
        status, headers, body = await read_response(reader)
        assert status == 200
        assert "connection" not in headers
        assert json.loads(body)["query"] == {"n": ["1"]}
        writer.write(post("/echo", b"[2]"))
        status, _, body = await read_response(reader)
        assert json.loads(body)["echo"] == [2]
        writer.write(get("/hello?n=3") + get("/hello?n=4"))
        for n in ("3", "4"):
            _, _, body = await read_response(reader)
            assert json.loads(body)["query"] == {"n": [n]}
    assert len(front.state.requests) == 4


async def test_connection_close_is_honoured(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/hello", "Connection: close"))
        status, headers, _ = await read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        await assert_closed(reader)


async def test_http_1_0_closes_after_the_response(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200
        assert json.loads(body)["method"] == "GET"
        await assert_closed(reader)


async def test_idle_keep_alive_connection_closes_after_the_open_timeout() -> None:
    async with running_front(open_timeout=ticks(4)) as front, raw(front.port) as (reader, writer):
        writer.write(get("/hello"))
        status, _, _ = await read_response(reader)
        assert status == 200
        started = asyncio.get_running_loop().time()
        await assert_closed(reader)
        assert asyncio.get_running_loop().time() - started >= ticks(3)


# -- errors -------------------------------------------------------------------------------------


async def test_body_over_the_cap_by_content_length(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(
            post("/echo", b"x" * 100).replace(b"Content-Length: 100", b"Content-Length: 99999")
        )
        status, headers, body = await read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        assert "too large" in json.loads(body)["error"]["message"]
        await assert_closed(reader)
    assert front.state.requests == []


async def test_body_over_the_cap_sent_in_full_still_gets_its_answer(front: Front) -> None:
    # The client writes its whole body before reading: the 413 must survive (lingering close).
    body = b"x" * (256 * 1024)
    async with raw(front.port) as (reader, writer):
        writer.write(post("/echo", body))
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.drain(), WAIT)
        status, _, _ = await read_response(reader)
        assert status == 413
        await assert_closed(reader)


async def test_large_body_under_a_raised_cap() -> None:
    payload = json.dumps(["y" * 1000] * 1000).encode()  # about 1 MiB
    async with running_front(max_body_bytes=2 * 1024 * 1024) as front:
        status, _, body = await request(front.port, post("/echo", payload))
        assert status == 200
        assert json.loads(body)["length"] == len(payload)


async def test_requests_after_the_server_stops_serving_get_503(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/hello"))
        status, _, _ = await read_response(reader)
        assert status == 200
        front.server.close()  # websockets stops listening; the keep-alive connection is open
        writer.write(get("/hello"))
        status, headers, body = await read_response(reader)
        assert status == 503
        assert headers["connection"] == "close"
        assert "shutting down" in json.loads(body)["error"]["message"]
        await assert_closed(reader)


async def test_chunked_body_over_the_cap(front: Front) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"400\r\n" + b"x" * 0x400 + b"\r\n"
    async with raw(front.port) as (reader, writer):
        writer.write(head + chunk * 5)
        status, _, _ = await read_response(reader)
        assert status == 413
        await assert_closed(reader)
    assert front.state.requests == []


async def test_malformed_request_line(front: Front) -> None:
    status, headers, body = await request(front.port, b"GARBAGE\r\n\r\n")
    assert status == 400
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["message"].startswith("bad request")


async def test_malformed_header(front: Front) -> None:
    status, _, _ = await request(front.port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status == 400


async def test_header_block_over_the_cap_without_end(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\n")
        for i in range(MAX_HEAD // 1000 + 2):
            writer.write(f"X-Filler-{i}: {'y' * 1000}\r\n".encode())
        status, _, body = await read_response(reader)
        assert status == 431
        assert "too large" in json.loads(body)["error"]["message"]
        await assert_closed(reader)


async def test_complete_header_block_over_the_cap(front: Front) -> None:
    status, _, _ = await request(front.port, get("/hello", "X-Big: " + "b" * (MAX_HEAD + 10)))
    assert status == 431


async def test_app_raising_gives_500(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "chucky.server.http"):
        async with raw(front.port) as (reader, writer):
            writer.write(get("/boom"))
            status, _, body = await read_response(reader)
            assert status == 500
            assert json.loads(body) == {
                "error": {"message": "internal error", "code": "INTERNAL_ERROR"}
            }
            writer.write(get("/hello"))  # the connection still serves
            status, _, _ = await read_response(reader)
            assert status == 200
    records = [r for r in caplog.records if r.name == "chucky.server.http"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert "app bug" in str(records[0].exc_info[1])


async def test_app_raising_after_start_closes_the_stream(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "chucky.server.http"):
        async with raw(front.port) as (reader, writer):
            writer.write(get("/boom-late"))
            status, headers = await read_head(reader)
            assert status == 200
            assert headers["transfer-encoding"] == "chunked"
            assert b"data: one" in await read_chunk(reader)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await read_chunk(reader)  # no terminating chunk: the client sees a truncation
    records = [r for r in caplog.records if r.name == "chucky.server.http"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert "app bug after start" in str(records[0].exc_info[1])


async def test_app_sending_nothing_gives_500(front: Front) -> None:
    status, _, body = await request(front.port, get("/silent"))
    assert status == 500
    assert json.loads(body) == {"error": {"message": "internal error", "code": "INTERNAL_ERROR"}}


async def test_second_response_is_refused(front: Front) -> None:
    status, _, body = await request(front.port, get("/twice"))
    assert status == 200
    assert json.loads(body) == {"first": True}
    assert front.state.gate.is_set()


async def test_connect_method_is_refused(front: Front) -> None:
    status, _, _ = await request(front.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405


# -- streaming ----------------------------------------------------------------------------------


async def test_sse_is_read_incrementally(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/sse", "Accept: text/event-stream"))
        status, headers = await read_head(reader)
        assert status == 200
        assert headers["content-type"] == "text/event-stream"
        assert headers["transfer-encoding"] == "chunked"
        first = await read_chunk(reader)
        assert first.decode() == 'event: message\ndata: {"n": 1}\n\n'
        assert not front.state.gate.is_set()  # the app has not sent the second event yet
        front.state.gate.set()
        assert (await read_chunk(reader)).decode() == 'event: message\ndata: {"n": 2}\n\n'
        assert await read_chunk(reader) == b""  # the terminating chunk
        writer.write(get("/hello"))  # keep-alive after a stream
        status, _, _ = await read_response(reader)
        assert status == 200


async def test_client_disconnect_mid_stream(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "chucky.server.http"):
        async with raw(front.port) as (reader, writer):
            writer.write(get("/forever"))
            status, _ = await read_head(reader)
            assert status == 200
            assert b"data: 1" in await read_chunk(reader)
        await asyncio.wait_for(front.state.saw_disconnect.wait(), WAIT)
        status, _, _ = await request(front.port, get("/hello"))
        assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for _ in range(20):
        if not front.exchanges:
            break
        await asyncio.sleep(ticks(1))
    assert len(front.exchanges) == 0


async def test_app_can_wait_for_the_client_to_leave(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, "chucky.server.http"):
        async with raw(front.port) as (_, writer):
            writer.write(get("/wait"))
            await writer.drain()
            await asyncio.sleep(ticks(2))
            assert not front.state.saw_disconnect.is_set()
        await asyncio.wait_for(front.state.saw_disconnect.wait(), WAIT)
        await asyncio.wait_for(front.state.gate.wait(), WAIT)  # its late answer raised
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_create_connection_is_ours() -> None:
    async def app(request: HttpRequest, response: HttpResponse) -> None:
        raise AssertionError

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError

    with pytest.raises(TypeError):
        serve_http_and_ws(handler, app, "127.0.0.1", 0, create_connection=ServerConnection)


async def test_slow_reader_applies_backpressure(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/flood"))
        status, _ = await read_head(reader)
        assert status == 200
        await asyncio.sleep(ticks(4))
        stalled_at = front.state.flood_writes
        await asyncio.sleep(ticks(4))
        assert front.state.flood_writes == stalled_at
        assert stalled_at < FLOOD_CHUNKS
        received = 0
        while chunk := await read_chunk(reader):
            received += len(chunk)
        assert received == FLOOD_CHUNK * FLOOD_CHUNKS
    assert front.state.flood_done


# -- WebSocket on the same port -----------------------------------------------------------------


async def test_websocket_upgrade_still_works(front: Front) -> None:
    big = "w" * (1024 * 1024)
    async with connect(f"ws://127.0.0.1:{front.port}/ws?token=t", max_size=2**21) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), WAIT) == "hello"
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), WAIT) == big
    assert front.state.ws_paths == ["/ws?token=t"]
    # and plain HTTP right after, on the same port
    status, _, _ = await request(front.port, get("/hello"))
    assert status == 200


async def test_websocket_process_request_can_refuse(front: Front) -> None:
    status, _, body = await request(
        front.port,
        get(
            "/elsewhere",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ),
    )
    assert status == 404
    assert body == b"not here\n"
    assert front.state.ws_paths == ["/elsewhere"]
    assert front.state.requests == []


# -- timeouts -----------------------------------------------------------------------------------


async def test_silent_client_is_dropped_after_the_open_timeout() -> None:
    async with running_front(open_timeout=ticks(4)) as front, raw(front.port) as (reader, _):
        started = asyncio.get_running_loop().time()
        await assert_closed(reader)
        assert asyncio.get_running_loop().time() - started >= ticks(3)


async def test_slowloris_partial_headers_are_dropped() -> None:
    async with running_front(open_timeout=ticks(4)) as front, raw(front.port) as (reader, writer):
        started = asyncio.get_running_loop().time()
        writer.write(b"GET / HTTP/1.1\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(40):
                writer.write(f"X-{i}: y\r\n".encode())
                await writer.drain()
                await asyncio.sleep(ticks(0.5))
                if reader.at_eof():
                    break
        await assert_closed(reader)
        elapsed = asyncio.get_running_loop().time() - started
        assert ticks(3) <= elapsed < ticks(15)


async def test_slow_body_is_dropped() -> None:
    async with running_front(open_timeout=ticks(4)) as front, raw(front.port) as (reader, writer):
        writer.write(post("/echo", b"[1, 2, 3]")[:-3])  # the head and part of the body
        await assert_closed(reader)
    assert front.state.requests == []


# -- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_lets_exchanges_finish(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/gate"))
        await asyncio.sleep(ticks(2))
        assert len(front.exchanges) == 1
        front.server.close()
        shutdown = asyncio.create_task(front.exchanges.shutdown(WAIT))
        await asyncio.sleep(ticks(2))
        front.state.gate.set()
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        assert json.loads(body) == {"gate": "open"}
        await assert_closed(reader)
        await asyncio.wait_for(shutdown, WAIT)
    assert len(front.exchanges) == 0


async def test_shutdown_cancels_exchanges_after_the_grace(front: Front) -> None:
    async with raw(front.port) as (reader, writer):
        writer.write(get("/slow"))
        await asyncio.sleep(ticks(2))
        front.server.close()
        await asyncio.wait_for(front.exchanges.shutdown(ticks(2)), WAIT)
        assert front.state.cancelled.is_set()
        await assert_closed(reader)


async def test_close_drops_idle_and_sniffing_connections(front: Front) -> None:
    async with raw(front.port) as (idle_reader, idle_writer), raw(front.port) as (mute, _):
        idle_writer.write(get("/hello"))
        status, _, _ = await read_response(idle_reader)
        assert status == 200
        await asyncio.sleep(ticks(1))
        assert await front.exchanges.drain(0) is False  # the idle connection is still open
        front.exchanges.close()
        await assert_closed(idle_reader)
        await assert_closed(mute)
        assert await front.exchanges.drain(WAIT) is True
