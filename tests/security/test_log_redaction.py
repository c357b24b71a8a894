"""Issue 11, finding 1: no token or secret reaches a log record, whatever the path, at DEBUG.

A token is planted in the query, in headers (well-formed and not: a space before the colon
makes the HTTP parser quote the header line in its error), in a request body and in frames;
every record of every logger is then searched for the token's signature and the secret, in its
message, its exception text and its stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from chucky._redact import RedactingFilter, redact
from chucky.testing import ScriptedServer


def _leaks(records: list[logging.LogRecord], *secrets: str) -> list[str]:
    found = []
    for record in records:
        texts = [record.getMessage(), record.exc_text or "", record.stack_info or ""]
        if record.exc_info and not record.exc_text:
            texts.append(logging.Formatter().formatException(record.exc_info))
        for text in texts:
            found += [f"{record.name}: {text[:200]}" for s in secrets if s in text]
    return found


async def _raw_http(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_no_log_record_holds_a_token_at_debug(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = server.token()
    signature = token.rsplit(".", 1)[1]
    url = server.url
    host = urlsplit(url).netloc
    requests = [
        # A header line the HTTP parser rejects, quoted in its error.
        f"GET /usage HTTP/1.1\r\nHost: {host}\r\nAuthorization : Bearer {token}\r\n\r\n",
        # A malformed request line carrying the token in its query.
        f"GET /usage?token={token} HTTP/1.1 extra\r\nHost: {host}\r\n\r\n",
        f"GET /usage?token={token}\r\n\r\n",
        # Well-formed, with a bad and a good token, in the header and the query.
        f"GET /usage HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}x\r\n\r\n",
        f"GET /usage?token={token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        # A body holding the token.
        f"POST /usage HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(token) + 11}\r\n"
        f'\r\n{{"token":"{token}"}}',
    ]
    for request in requests:
        await _raw_http(url, request.encode())
    # The WebSocket path: a refused token in the query, an accepted one in a header, and the
    # token inside frames (a valid one and one the server cannot parse).
    async with connect(f"{url}?token={token}x") as ws:
        with pytest.raises(ConnectionClosedError):  # the error frame, then a 1008 close
            async for _ in ws:
                pass
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "init", "payload": {"systemPrompt": token}}))
        await ws.recv()
        await ws.send(f'{{"type": "bogus", "token": "{token}"')
        await ws.send(json.dumps({"type": "user", "token": token, "message": token}))
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.1)
    assert caplog.records, "expected DEBUG records"
    assert _leaks(caplog.records, signature, server.secret) == []


def test_the_filter_masks_exception_text_and_stacks() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    try:
        raise ValueError(f"illegal header line: bytearray(b'Authorization : Bearer {token}')")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "chucky.server.http",
            logging.ERROR,
            __file__,
            1,
            "failed: %s",
            (token,),
            sys.exc_info(),
            sinfo=f"stack with {token}",
        )
    assert RedactingFilter().filter(record)
    assert "c2lnbmF0dXJl" not in record.getMessage()
    assert record.exc_text and "c2lnbmF0dXJl" not in record.exc_text
    assert "ValueError" in record.exc_text  # the traceback itself is kept
    assert record.stack_info and "c2lnbmF0dXJl" not in record.stack_info
    formatted = logging.Formatter().format(record)
    assert "c2lnbmF0dXJl" not in formatted


def test_redact_masks_a_bare_jwt() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
    assert redact(f'{{"token": "{jwt}"}}') == '{"token": "<redacted>"}'
    assert "c2lnbmF0dXJl" not in redact(f"b'{jwt}'")


def test_every_chucky_logger_redacts() -> None:
    """Each logger of the package is made by ``redacting_logger`` (a filter acts only on the
    records of its own logger, so each one needs it)."""
    from pathlib import Path

    import chucky

    root = Path(chucky.__file__).parent
    plain = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        if path.name != "_redact.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "getLogger(" in line
    ]
    assert plain == []
    made = [
        path
        for path in root.rglob("*.py")
        if 'redacting_logger("chucky' in path.read_text(encoding="utf-8")
    ]
    assert len(made) >= 15
