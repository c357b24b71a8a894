"""Issue 11, finding 11: every HTTP error body has one shape, on every path that answers one.

``{"error": {"message": str, "code": CODE, "details"?: {"reason": str, ...}}}`` (docs/protocol.md
section 9): the routes' 404/405/426, the HTTP parser's 400/413/431, the WebSocket path's 404,
and authentication failures on ``/usage``. Real requests against a real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.raw import http_get, http_post
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from chucky import Chucky
from chucky.errors import AuthenticationError, ErrorCode, HandshakeError
from chucky.server.http import DEFAULT_MAX_HEAD_BYTES
from chucky.testing import ScriptedServer

Json = dict[str, Any]
CODES = {value for name, value in vars(ErrorCode).items() if name.isupper()}


def error_payload(status: int, headers: dict[str, str], body: bytes) -> Json:
    """The payload of a structured error body, checked for the documented shape."""
    content_type = next(v for k, v in headers.items() if k.lower() == "content-type")
    assert content_type == "application/json", (status, headers)
    decoded = json.loads(body)
    assert set(decoded) == {"error"}, decoded
    payload: Json = decoded["error"]
    assert isinstance(payload, dict), decoded
    assert set(payload) <= {"message", "code", "details"}, payload
    assert isinstance(payload["message"], str)
    assert payload["message"]
    assert payload["code"] in CODES, payload
    if "details" in payload:
        assert isinstance(payload["details"], dict)
    return payload


async def raw_exchange(server: ScriptedServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; read one response to the end of the connection (errors close it)."""
    host, port = "127.0.0.1", server.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, body


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("POST", "/nope", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", "/prompt", 405, "method_not_allowed"),
        ("POST", "/metrics", 405, "method_not_allowed"),
        ("GET", "/ws", 426, "upgrade_required"),
    ],
)
async def test_route_errors_are_structured(
    server: ScriptedServer, method: str, path: str, status: int, reason: str
) -> None:
    if method == "GET":
        got, headers, body = await http_get(server, path)
    else:
        got, headers, body = await http_post(server, path, {})
    assert got == status
    payload = error_payload(got, headers, body)
    assert payload["code"] == ErrorCode.VALIDATION_ERROR
    assert payload["details"] == {"reason": reason}


async def test_parser_errors_are_structured(server: ScriptedServer) -> None:
    status, headers, body = await raw_exchange(server, b"GARBAGE\r\n\r\n")
    assert status == 400
    payload = error_payload(status, headers, body)
    assert (payload["code"], payload["details"]) == ("VALIDATION_ERROR", {"reason": "bad_request"})
    assert payload["message"].startswith("bad request")

    status, headers, body = await raw_exchange(
        server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n"
    )
    assert status == 400
    assert error_payload(status, headers, body)["details"] == {"reason": "bad_request"}


async def test_size_errors_are_structured(server: ScriptedServer) -> None:
    big = b"POST /prompt HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n"
    status, headers, body = await raw_exchange(server, big)
    assert status == 413
    payload = error_payload(status, headers, body)
    assert (payload["code"], payload["details"]) == (
        "VALIDATION_ERROR",
        {"reason": "body_too_large"},
    )

    filler = b"X-Filler: " + b"y" * (DEFAULT_MAX_HEAD_BYTES + 10) + b"\r\n"
    status, headers, body = await raw_exchange(
        server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + filler + b"\r\n"
    )
    assert status == 431
    payload = error_payload(status, headers, body)
    assert payload["details"] == {"reason": "head_too_large"}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-jwt", "Basic dTpw", "Bearer eyJhbGciOiJub25lIn0.e30."]
)
async def test_usage_auth_failures_are_structured_with_a_challenge(
    server: ScriptedServer, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    status, got_headers, body = await http_get(server, "/usage", headers)
    assert status == 401
    payload = error_payload(status, got_headers, body)
    assert payload["code"] == "AUTHENTICATION_ERROR"
    assert payload["details"]["reason"] == "invalid_token"
    # RFC 9110 section 15.5.2: a 401 carries the challenge.
    challenge = next(v for k, v in got_headers.items() if k.lower() == "www-authenticate")
    assert challenge.startswith("Bearer")


async def test_the_websocket_path_404_is_structured(server: ScriptedServer) -> None:
    upgrade = (
        b"GET /nope/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    status, headers, body = await raw_exchange(server, upgrade)
    assert status == 404
    payload = error_payload(status, headers, body)
    assert (payload["code"], payload["details"]) == ("VALIDATION_ERROR", {"reason": "not_found"})
    assert "/nope/ws" in payload["message"]


async def test_the_client_reports_the_servers_error_body(server: ScriptedServer) -> None:
    wrong = server.url.removesuffix("/ws") + "/nope/ws"
    async with Chucky(server.token(), wrong) as client:
        with pytest.raises(HandshakeError) as caught:
            await client.prompt("echo hi")
    error = caught.value
    assert not isinstance(error, AuthenticationError)
    assert error.details["status"] == 404
    assert error.details["reason"] == "not_found"
    assert "no WebSocket at /nope/ws" in error.message


_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (_UPGRADE + b"\r\n", 400, "bad_request"),  # no Sec-WebSocket-Key
        (
            _UPGRADE.replace(b"13", b"8") + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            _UPGRADE
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            431,
            "head_too_large",
        ),
    ],
    ids=["no-key", "bad-version", "too-many-headers"],
)
async def test_upgrades_refused_by_websockets_are_structured(
    server: ScriptedServer, request_bytes: bytes, status: int, reason: str
) -> None:
    got, headers, body = await raw_exchange(server, request_bytes)
    assert got == status
    payload = error_payload(got, headers, body)
    assert (payload["code"], payload["details"]) == ("VALIDATION_ERROR", {"reason": reason})
    assert payload["message"].startswith("Failed to open a WebSocket connection")


@pytest.mark.parametrize(
    ("body", "said", "details"),
    [
        (b'{"error": "no route for /x"}', "no route for /x", {}),
        (
            b'{"error": {"message": "gone", "code": "VALIDATION_ERROR", '
            b'"details": {"reason": "not_found", "nested": {"x": 1}, "status": 1}}}',
            "gone",
            {"reason": "not_found"},
        ),
        (b"<html>nope</html>", None, {}),
        (b"[" * 100_000, None, {}),
    ],
    ids=["older-server", "structured", "html", "deep"],
)
async def test_the_client_reads_either_error_body_and_nothing_else(
    body: bytes, said: str | None, details: Json
) -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return Response(404, "Not Found", headers, body)

    async with serve(lambda ws: ws.close(), "127.0.0.1", 0, process_request=refuse) as fake:
        port = next(iter(fake.sockets)).getsockname()[1]
        async with Chucky("not-a-token", f"ws://127.0.0.1:{port}/ws") as client:
            with pytest.raises(HandshakeError) as caught:
                await client.prompt("echo hi")
    error = caught.value
    assert error.details == {**details, "status": 404}  # the body never overrides the status
    assert error.message.endswith(f"HTTP 404: {said}" if said else "HTTP 404")
