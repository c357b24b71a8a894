"""The HTTP routes of the server (docs/protocol.md section 9), over real sockets on 127.0.0.1.

``GET /healthz``, ``GET /usage``, ``POST /prompt`` (JSON and ``text/event-stream``) and
``GET /metrics`` of :class:`chucky.server.routes.Routes`, driven with the standard library only:
urllib in a thread (``http_get``/``http_post``), or a raw ``asyncio`` connection for the
event stream and the client that walks away.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.raw import FRAME_TIMEOUT, check_result, http_get, http_post, poll_until
from support.timing import ticks

from chucky import __version__
from chucky.testing import ScriptedServer, scripted_server

Json = dict[str, Any]

# A model call that outlasts any test: the turn is still running whenever a test looks.
LONG_SLEEP = f"sleep {ticks(600):g}"

CLIENT_TOOLS = [
    {
        "name": "s",
        "version": "1.0.0",
        "tools": [
            {
                "name": "t",
                "description": "a tool only a client can run",
                "inputSchema": {"type": "object", "properties": {}},
            }
        ],
    }
]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header, looked up case-insensitively."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


async def _prompt(
    server: ScriptedServer, body: bytes | object, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], Json]:
    """``POST /prompt``: ``(status, headers, decoded JSON body)``."""
    status, response_headers, raw = await http_post(server, "/prompt", body, headers)
    assert _header(response_headers, "Content-Type") == "application/json", response_headers
    decoded = json.loads(raw)
    assert isinstance(decoded, dict), raw[:300]
    return status, response_headers, decoded


async def _usage(server: ScriptedServer, token: str) -> Json:
    status, _, raw = await http_get(server, "/usage", {"Authorization": f"Bearer {token}"})
    assert status == 200, raw[:300]
    body = json.loads(raw)
    assert isinstance(body, dict)
    return body


def _check_error(body: Json, code: str, reason: str | None = None) -> Json:
    """The ``{"error": payload}`` body of a refused request: its payload."""
    assert set(body) == {"error"}, body
    payload: Json = body["error"]
    assert payload["code"] == code, payload
    assert isinstance(payload["message"], str)
    assert payload["message"]
    if reason is not None:
        assert payload["details"]["reason"] == reason, payload
    return payload


def _check_turn(body: Json) -> Json:
    """A ``POST /prompt`` JSON answer: ``{"result", "messages", "sessionId"}``; the result."""
    assert set(body) == {"result", "messages", "sessionId"}, body
    messages = body["messages"]
    assert isinstance(messages, list)
    assert messages, body
    assert messages[0]["type"] == "system", messages[0]
    assert messages[0]["subtype"] == "init", messages[0]
    assert all(m["type"] not in ("control", "pong", "result", "error") for m in messages)
    result = check_result([*messages, body["result"]])
    assert body["sessionId"] == result["session_id"]
    assert all(m["session_id"] == body["sessionId"] for m in messages)
    return result


# -- the event stream ---------------------------------------------------------------------------


@dataclass
class EventStream:
    """One ``POST /prompt`` with ``Accept: text/event-stream`` on a raw socket, read event by
    event as the chunks arrive."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased
    ended: bool = False
    _text: str = ""

    async def read_head(self) -> None:
        async with asyncio.timeout(FRAME_TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        self.status = int(status)
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    async def _chunk(self) -> bytes:
        """The next chunk of the chunked body; ``b""`` at its end."""
        size_line = await self.reader.readline()
        assert size_line.endswith(b"\r\n"), size_line
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while await self.reader.readline() not in (b"\r\n", b""):
                pass  # trailers
            return b""
        data = await self.reader.readexactly(size)
        assert await self.reader.readexactly(2) == b"\r\n"
        return data

    async def next_event(self) -> tuple[str | None, Json] | None:
        """The next event: its ``event:`` name and its ``data`` decoded; ``None`` at the end."""
        async with asyncio.timeout(FRAME_TIMEOUT):
            while "\n\n" not in self._text:
                chunk = await self._chunk()
                if not chunk:
                    assert not self._text.strip(), f"a partial event at the end: {self._text!r}"
                    self.ended = True
                    return None
                self._text += chunk.decode()
        block, self._text = self._text.split("\n\n", 1)
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        frame = json.loads("\n".join(data))
        assert isinstance(frame, dict), block
        return name, frame

    async def frames(self) -> list[Json]:
        """The frames of every remaining event, to the end of the stream (all ``message``)."""
        frames = []
        while (event := await self.next_event()) is not None:
            name, frame = event
            assert name == "message", event
            frames.append(frame)
        return frames


@asynccontextmanager
async def event_stream(server: ScriptedServer, body: Json) -> AsyncIterator[EventStream]:
    """Send ``POST /prompt`` asking for an event stream; yields it once its head is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    try:
        data = json.dumps(body).encode()
        writer.write(
            b"POST /prompt HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Accept: text/event-stream\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data) + data
        )
        await writer.drain()
        stream = EventStream(reader, writer)
        await stream.read_head()
        yield stream
    finally:
        writer.close()
        try:
            async with asyncio.timeout(FRAME_TIMEOUT):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass


# -- metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<series>[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (?P<value>\S+)$")


def _samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by series (``name{labels}``)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match is not None, line
            samples[match["series"]] = float(match["value"])
    return samples


async def _metrics(server: ScriptedServer) -> dict[str, float]:
    status, headers, raw = await http_get(server, "/metrics")
    assert status == 200
    content_type = _header(headers, "Content-Type")
    assert content_type is not None
    assert content_type.startswith("text/plain"), content_type
    return _samples(raw.decode())


# -- GET /healthz --------------------------------------------------------------------------------


async def test_healthz(server: ScriptedServer) -> None:
    status, headers, raw = await http_get(server, "/healthz")
    assert status == 200
    assert _header(headers, "Content-Type") == "application/json"
    assert json.loads(raw) == {"status": "ok", "version": __version__}
    # http_url is the documented base of the routes, the same port as the WebSocket.
    assert server.http_url == f"http://127.0.0.1:{server.server.port}"


# -- GET /usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-jwt"}])
async def test_usage_needs_a_valid_token(server: ScriptedServer, headers: dict[str, str]) -> None:
    status, _, raw = await http_get(server, "/usage", headers)
    assert status == 401
    _check_error(json.loads(raw), "AUTHENTICATION_ERROR", "invalid_token")


async def test_usage_of_a_fresh_token(server: ScriptedServer) -> None:
    token = server.token("fresh", ai_dollars=2.5, compute_hours=1)
    usage = await _usage(server, token)
    assert usage["ai"] == {"used": 0, "reserved": 0, "remaining": 2_500_000, "budget": 2_500_000}
    assert usage["compute"]["used"] == 0
    assert usage["compute"]["budget"] == 3600
    assert usage["allowed"] is True


async def test_usage_counts_a_prompt_turn(server: ScriptedServer) -> None:
    token = server.token("spender")
    status, _, body = await _prompt(server, {"message": "echo hi", "options": {"token": token}})
    assert status == 200, body
    result = _check_turn(body)
    assert result["total_cost_usd"] > 0

    usage = await _usage(server, token)
    ai = usage["ai"]
    assert ai["used"] > 0
    assert ai["used"] == round(result["total_cost_usd"] * 1_000_000)
    assert ai["reserved"] == 0  # settled: nothing still set aside
    assert ai["remaining"] == ai["budget"] - ai["used"]
    assert usage["compute"]["reserved"] == 0
    assert usage["allowed"] is True
    window = usage["window"]
    for key in ("start", "end"):
        assert isinstance(window[key], str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", window[key])
    assert window["start"] < window["end"]

    # ?token= is read too, and gives the same report.
    status, _, raw = await http_get(server, f"/usage?token={token}")
    assert status == 200
    assert json.loads(raw)["ai"] == ai


# -- POST /prompt, JSON --------------------------------------------------------------------------


async def test_prompt_with_the_token_in_the_options(server: ScriptedServer) -> None:
    body = {"message": "echo hi", "options": {"token": server.token()}}
    status, _, answer = await _prompt(server, body)
    assert status == 200, answer
    result = _check_turn(answer)
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["result"] == "hi"
    assert [m["type"] for m in answer["messages"]] == ["system", "assistant"]
    [block] = answer["messages"][1]["message"]["content"]
    assert block == {"type": "text", "text": "hi"}


async def test_prompt_with_a_bearer_token(server: ScriptedServer) -> None:
    headers = {"Authorization": f"Bearer {server.token()}"}
    status, _, answer = await _prompt(server, {"message": "echo bearer"}, headers)
    assert status == 200, answer
    assert _check_turn(answer)["result"] == "bearer"


async def test_prompt_without_a_token_is_401(server: ScriptedServer) -> None:
    status, _, answer = await _prompt(server, {"message": "echo hi"})
    assert status == 401
    _check_error(answer, "AUTHENTICATION_ERROR")


async def test_flat_options_reach_the_session(server: ScriptedServer) -> None:
    body = {"message": "echo flat", "model": "x-flat-model", "options": {"token": server.token()}}
    status, _, answer = await _prompt(server, body)
    assert status == 200, answer
    assert _check_turn(answer)["result"] == "flat"
    system, assistant = answer["messages"]
    assert system["model"] == "x-flat-model"
    assert assistant["message"]["model"] == "x-flat-model"


async def test_session_id_resumes_a_session_of_the_same_user(server: ScriptedServer) -> None:
    token = server.token("owner")
    status, _, first = await _prompt(server, {"message": "echo first", "options": {"token": token}})
    assert status == 200, first
    session_id = _check_turn(first)["session_id"]

    options = {"token": token, "sessionId": session_id}
    status, _, second = await _prompt(server, {"message": "recall", "options": options})
    assert status == 200, second
    assert _check_turn(second)["result"] == "echo first"  # the first message of the transcript
    assert second["sessionId"] == session_id

    # Someone else's token cannot tell that session from one that does not exist.
    options = {"token": server.token("intruder"), "sessionId": session_id}
    status, _, refused = await _prompt(server, {"message": "recall", "options": options})
    assert status == 404
    _check_error(refused, "SESSION_ERROR", "session_not_found")


async def test_a_client_tool_is_answered_with_an_error_result(server: ScriptedServer) -> None:
    options = {"token": server.token(), "mcpServers": CLIENT_TOOLS}
    status, _, answer = await _prompt(server, {"message": "call t {}", "options": options})
    assert status == 200, answer
    result = _check_turn(answer)
    assert [m["type"] for m in answer["messages"]] == ["system", "assistant", "user", "assistant"]
    system, call, tool_result, _ = answer["messages"]
    assert system["tools"] == ["mcp__s__t"]
    [tool_use] = call["message"]["content"]
    assert tool_use["type"] == "tool_use"
    assert tool_use["name"] == "mcp__s__t"
    [block] = tool_result["message"]["content"]
    assert block["type"] == "tool_result"
    assert block["tool_use_id"] == tool_use["id"]
    assert block["is_error"] is True
    [text] = block["content"]
    assert "HTTP" in text["text"]
    assert "client" in text["text"]
    # The model read the error and the turn went on to its result.
    assert result["num_turns"] == 2
    assert result["result"] == f"tool t returned: {text['text']}"
    metrics = await _metrics(server)
    assert metrics['chucky_tool_calls_total{outcome="error"}'] == 1
    assert 'chucky_tool_calls_total{outcome="ok"}' not in metrics  # no client ever ran it


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="invalid-json"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b'["echo hi"]', id="not-an-object"),
        pytest.param(b'"echo hi"', id="a-string"),
        pytest.param(b"{}", id="no-message"),
        pytest.param(b'{"message": ""}', id="empty-message"),
        pytest.param(b'{"message": 42}', id="message-not-text"),
    ],
)
async def test_malformed_prompt_is_400(server: ScriptedServer, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"}
    status, _, answer = await _prompt(server, body, headers)
    assert status == 400, answer
    _check_error(answer, "VALIDATION_ERROR")
    assert not server.server._connections  # refused before any session


async def test_a_bad_option_type_is_400(server: ScriptedServer) -> None:
    body = {"message": "echo hi", "options": {"token": server.token(), "maxTurns": "many"}}
    status, _, answer = await _prompt(server, body)
    assert status == 400, answer
    payload = _check_error(answer, "VALIDATION_ERROR")
    assert "maxTurns" in payload["message"]


async def test_wrong_method_is_405(server: ScriptedServer) -> None:
    status, _, raw = await http_get(server, "/prompt")
    assert status == 405
    assert "error" in json.loads(raw)
    status, _, raw = await http_post(server, "/healthz", {})
    assert status == 405


async def test_405_names_the_allowed_method(server: ScriptedServer) -> None:
    # RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header.
    status, headers, _ = await http_get(server, "/prompt")
    assert status == 405
    assert _header(headers, "Allow") == "POST"
    status, headers, _ = await http_post(server, "/usage", {})
    assert status == 405
    assert _header(headers, "Allow") == "GET"


async def test_unknown_path_is_404(server: ScriptedServer) -> None:
    for path in ("/nope", "/prompt/x", "/"):
        status, _, raw = await http_get(server, path)
        assert status == 404, path
        assert "error" in json.loads(raw)
    status, _, _ = await http_post(server, "/nope", {"message": "echo hi"})
    assert status == 404


async def test_plain_get_of_the_websocket_path_is_426(server: ScriptedServer) -> None:
    status, _, raw = await http_get(server, "/ws")
    assert status == 426
    assert "error" in json.loads(raw)


async def test_no_ai_budget_is_402(server: ScriptedServer) -> None:
    body = {"message": "echo hi", "options": {"token": server.token("broke", ai_dollars=0)}}
    status, _, answer = await _prompt(server, body)
    assert status == 402, answer
    payload = _check_error(answer, "BUDGET_EXCEEDED")
    assert payload["details"]["kind"] == "ai"


async def test_provider_failure_is_502(server: ScriptedServer) -> None:
    body = {"message": "fail bad_request", "options": {"token": server.token()}}
    status, _, answer = await _prompt(server, body)
    assert status == 502, answer
    payload = _check_error(answer, "PROVIDER_ERROR")
    assert payload["details"]["kind"] == "bad_request"
    assert payload["details"]["retryable"] is False


async def test_rate_limit_is_429_with_retry_after() -> None:
    async with scripted_server(turns_per_minute=1) as server:
        body = {"message": "echo once", "options": {"token": server.token()}}
        status, _, answer = await _prompt(server, body)
        assert status == 200, answer
        status, headers, answer = await _prompt(server, body)
        assert status == 429, answer
        payload = _check_error(answer, "RATE_LIMIT", "rate_limited")
        retry_after = _header(headers, "Retry-After")
        assert retry_after is not None
        assert int(retry_after) == payload["details"]["retryAfter"]
        assert 1 <= int(retry_after) <= 60


# -- POST /prompt, text/event-stream -------------------------------------------------------------


async def test_event_stream_of_a_turn(server: ScriptedServer) -> None:
    body = {
        "message": "stream 50",
        "options": {"token": server.token(), "includePartialMessages": True},
    }
    async with event_stream(server, body) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in stream.headers
        assert stream.headers["cache-control"] == "no-cache"
        frames = await stream.frames()
    assert stream.ended
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "system", kinds
    assert frames[0]["subtype"] == "init"
    assert kinds[-2:] == ["assistant", "result"], kinds
    assert set(kinds[1:-2]) == {"stream_event"}, kinds
    assert "control" not in kinds
    result = check_result(frames)
    deltas = [
        f["event"]["delta"]["text"]
        for f in frames
        if f["type"] == "stream_event" and f["event"]["type"] == "content_block_delta"
    ]
    assert len(deltas) == 50
    assert "".join(deltas) == result["result"]


async def test_event_stream_sends_frames_before_the_turn_ends(server: ScriptedServer) -> None:
    body = {"message": f"{LONG_SLEEP}; echo late", "options": {"token": server.token()}}
    async with event_stream(server, body) as stream:
        assert stream.status == 200
        first = await stream.next_event()
        assert first is not None
        name, frame = first
        assert name == "message"
        assert frame["type"] == "system"
        assert frame["subtype"] == "init"
        # The model is still asleep: the first frame came while the turn runs.
        [connection] = server.server._connections
        assert connection._runner is not None
        # A shutdown interrupts the turn, which still ends the stream with its result.
        await server.server.shutdown(grace=0)
        frames = await stream.frames()
    assert stream.ended
    assert [f["type"] for f in frames] == ["result"], frames
    result = check_result([frame, *frames], subtype="error_during_execution")
    assert result["errors"] == ["server shutting down"]


async def test_event_stream_of_a_refused_turn(server: ScriptedServer) -> None:
    # The stream starts before the turn is admitted: the refusal is an error event in a 200.
    body = {"message": "echo hi", "options": {"token": server.token("broke", ai_dollars=0)}}
    async with event_stream(server, body) as stream:
        assert stream.status == 200
        frames = await stream.frames()
    assert [f["type"] for f in frames] == ["error"], frames
    assert frames[0]["payload"]["code"] == "BUDGET_EXCEEDED"


async def test_event_stream_refuses_a_bad_request_before_streaming(server: ScriptedServer) -> None:
    async with event_stream(server, {"message": "echo hi"}) as stream:
        assert stream.status == 401
        assert stream.headers["content-type"] == "application/json"


async def test_client_leaving_mid_stream_ends_its_connection(server: ScriptedServer) -> None:
    token = server.token("leaver")
    body = {"message": f"{LONG_SLEEP}; echo late", "options": {"token": token}}
    async with event_stream(server, body) as stream:
        first = await stream.next_event()
        assert first is not None
        session_id = first[1]["session_id"]
        assert len(server.server._connections) == 1
    # The socket is closed: the server stays healthy ...
    status, _, raw = await http_get(server, "/healthz")
    assert status == 200
    assert json.loads(raw)["status"] == "ok"
    # ... and drops the turn nobody listens to, as it does when a WebSocket goes away, rather
    # than keep the model (and the user's budget) running for nobody.
    await poll_until(lambda: not server.server._connections, timeout=ticks(40))
    # The session is free again: its owner resumes it.
    options = {"token": token, "sessionId": session_id}
    status, _, answer = await _prompt(server, {"message": "echo back", "options": options})
    assert status == 200, answer
    assert _check_turn(answer)["result"] == "back"


# -- GET /metrics --------------------------------------------------------------------------------


async def test_metrics_count_turns_requests_spend_and_errors(server: ScriptedServer) -> None:
    async with server.client() as client:  # a turn over the WebSocket
        result = await client.prompt("echo over ws")
        assert result.result == "over ws"
    status, _, answer = await _prompt(
        server, {"message": "echo over http", "options": {"token": server.token()}}
    )
    assert status == 200, answer
    refused = {"message": "echo no", "options": {"token": server.token("broke", ai_dollars=0)}}
    status, _, _ = await _prompt(server, refused)
    assert status == 402

    samples = await _metrics(server)
    assert samples['chucky_turns_total{subtype="success"}'] >= 2
    assert samples["chucky_connections_total"] >= 1
    assert samples['chucky_spend_usd_total{project="test-project"}'] > 0
    assert samples['chucky_errors_total{code="BUDGET_EXCEEDED"}'] == 1
    assert samples['chucky_http_requests_total{route="/prompt",status="200"}'] == 1
    assert samples['chucky_http_requests_total{route="/prompt",status="402"}'] == 1
    assert samples["chucky_connections_open"] == 0


async def test_metrics_count_http_requests_by_route(server: ScriptedServer) -> None:
    await http_get(server, "/healthz")
    await http_get(server, "/healthz")
    await http_get(server, "/usage")  # 401
    await http_get(server, "/no/such/path")
    samples = await _metrics(server)
    assert samples['chucky_http_requests_total{route="/healthz",status="200"}'] == 2
    assert samples['chucky_http_requests_total{route="/usage",status="401"}'] == 1
    # Unknown paths are one label value, never the raw path.
    assert samples['chucky_http_requests_total{route="other",status="404"}'] == 1
    assert not any("/no/such/path" in series for series in samples)
