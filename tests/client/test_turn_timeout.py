"""The client's turn deadline, ``turn_timeout`` (issue 11, finding 8).

A turn that has not ended within ``turn_timeout`` seconds raises a typed
:class:`chucky.TimeoutError` (also a builtin ``TimeoutError``) and is interrupted server-side;
what still arrives of it is dropped, so the session's next turn reads only its own messages.
Against the real server with the scripted model (``sleep`` delays its answer).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import Any

import pytest
from support.timing import ticks

from chucky import Chucky, ResultMessage, TimeoutError, ValidationError
from chucky.testing import ScriptedServer, scripted_server

SLOW = "sleep 30; echo too late"


async def test_prompt_past_its_turn_timeout_raises_a_typed_timeout() -> None:
    async with scripted_server() as server, server.client() as client:
        began = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await client.prompt(SLOW, turn_timeout=ticks(4))
        waited = time.monotonic() - began
    assert waited < 10
    error = caught.value
    assert isinstance(error, builtins.TimeoutError)
    assert error.reason == "turn_timeout" and error.details["turnTimeout"] == ticks(4)
    assert "turn_timeout" in error.message and "interrupted" in error.message
    assert error.session_id


async def test_the_turn_is_interrupted_and_the_session_goes_on() -> None:
    async with scripted_server() as server, server.client() as client:
        session = client.create_session()
        await session.send(SLOW, turn_timeout=ticks(4))
        seen: list[Any] = []
        with pytest.raises(TimeoutError):
            async for message in session.stream():
                seen.append(message)
        assert not any(isinstance(m, ResultMessage) for m in seen)
        # Were the first turn still running, this one would wait 30 s behind it.
        async with asyncio.timeout(ticks(100)):
            await session.send("echo next")
            messages = [message async for message in session.stream()]
        await session.close()
    results = [m for m in messages if isinstance(m, ResultMessage)]
    # Only the new turn's messages: the interrupted turn's result was dropped.
    assert [(r.subtype, r.result) for r in results] == [("success", "next")]


async def test_the_client_default_applies_and_a_call_overrides_it() -> None:
    async with scripted_server() as server:
        async with Chucky(server.token(), server.url, turn_timeout=ticks(4)) as client:
            with pytest.raises(TimeoutError):
                await client.prompt(SLOW)
            # A longer deadline for one call.
            result = await client.prompt(f"sleep {ticks(6)}; echo ok", turn_timeout=ticks(200))
        assert result.result == "ok"
        async with Chucky(server.token(), server.url, turn_timeout=ticks(4)) as client:
            with pytest.raises(TimeoutError):
                events = [e async for e in client.stream(SLOW)]
                assert events == []  # pragma: no cover


async def test_a_turn_ending_in_time_is_not_affected(chucky_server: ScriptedServer) -> None:
    async with chucky_server.client(turn_timeout=ticks(200)) as client:
        result = await client.prompt("echo in time")
        session = client.create_session()
        for text in ("one", "two"):
            await session.send(f"echo {text}")
            replies = [m async for m in session.stream() if isinstance(m, ResultMessage)]
            assert [r.result for r in replies] == [text]
        await session.close()
    assert result.result == "in time"


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "5"])
async def test_a_bad_turn_timeout_is_a_validation_error(
    chucky_server: ScriptedServer, value: Any
) -> None:
    with pytest.raises(ValidationError, match="turn_timeout"):
        Chucky(chucky_server.token(), chucky_server.url, turn_timeout=value)
    async with chucky_server.client() as client:
        with pytest.raises(ValidationError, match="turn_timeout"):
            await client.prompt("echo x", turn_timeout=value)
        session = client.create_session()
        with pytest.raises(ValidationError, match="turn_timeout"):
            await session.send("echo x", turn_timeout=value)
        await session.close()
