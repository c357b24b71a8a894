"""Tokens and secrets never reach the logs, even at DEBUG (STYLE.md 7)."""

from __future__ import annotations

import logging

import pytest

from chucky import AuthenticationError, Chucky
from chucky._redact import redact
from chucky.testing import ScriptedServer


def test_redact_masks_query_tokens_bearer_values_and_secrets() -> None:
    text = "GET /ws?type=prompt&token=aaa.bbb.ccc HTTP/1.1 Authorization: Bearer aaa.bbb.ccc"
    assert "aaa.bbb" not in redact(text)
    assert "type=prompt" in redact(text)
    assert "0123456789" not in redact("secret hk_live_0123456789abcdef0123456789abcdef")


async def test_debug_logs_of_client_and_server_hold_no_token(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = server.token()
    caplog.set_level(logging.DEBUG)
    async with Chucky(token, server.url, debug=True) as client:
        assert (await client.prompt("echo hi")).result == "hi"
        with pytest.raises(AuthenticationError):
            await Chucky(token + "x", server.url).prompt("hi")
    assert caplog.records, "expected debug logs from websockets and chucky"
    signature = token.rsplit(".", 1)[1]
    for record in caplog.records:
        assert signature not in record.getMessage()
        assert server.secret not in record.getMessage()
