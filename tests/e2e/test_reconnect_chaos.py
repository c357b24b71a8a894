"""Sessions that survive the network (issue 13), end to end: our client, a TCP proxy that cuts the
link at random moments, and ``chucky serve``'s server with a priced model.

Every turn must come out exactly as if nothing happened: its text deltas concatenate to the
text of its ``result``, it gets one ``result``, every tool handler runs once per call, and the
ledger charges exactly what the results reported, nothing left reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.faults import check_history, ledger, session_spent, settled
from support.proxy import TcpProxy
from support.timing import ticks

from chucky import AuthenticationError, Chucky, ConnectionError, tool
from chucky.client.reconnect import ReconnectEvent
from chucky.client.session import Session, SessionState
from chucky.messages import ResultMessage, SDKMessage, StreamEventMessage
from chucky.testing import ScriptedServer, scripted_server
from chucky.tokens import CLOCK_SKEW_SECONDS, create_budget, create_token, decode_token


def _port(server: ScriptedServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


@asynccontextmanager
async def _proxied(**config: Any) -> AsyncIterator[tuple[ScriptedServer, TcpProxy]]:
    async with scripted_server(**config) as server, TcpProxy("127.0.0.1", _port(server)) as proxy:
        yield server, proxy


def _stream_text(n: int) -> str:
    return "".join(f"{i % 100:02d} " for i in range(n))


async def _turn(session: Session, prompt: str) -> tuple[str, list[ResultMessage]]:
    """Send ``prompt`` and read the turn: (its text deltas joined, the results it yielded)."""
    await session.send(prompt)
    deltas: list[str] = []
    results: list[ResultMessage] = []
    message: SDKMessage
    async for message in session.stream():
        if isinstance(message, StreamEventMessage):
            event = message.event
            if event.get("type") == "content_block_delta":
                deltas.append(event["delta"].get("text", ""))
        elif isinstance(message, ResultMessage):
            results.append(message)
    return "".join(deltas), results


async def _check_ledger(
    server: ScriptedServer, token: str, session_id: str, results: list[ResultMessage]
) -> None:
    await settled(server)
    usage = await ledger(server.url, token)
    assert usage["ai"]["reserved"] == 0 and usage["compute"]["reserved"] == 0, usage
    reported = sum(round(r.total_cost_usd * 1_000_000) for r in results)
    spent, transcript = await session_spent(server.server.store, token, session_id)
    assert usage["ai"]["used"] == spent == reported
    check_history(transcript)


async def test_200_turns_through_random_cuts_lose_and_repeat_nothing() -> None:
    rng = random.Random(13)
    ran: Counter[int] = Counter()

    @tool("t", "Record that call n ran")
    async def t(n: int) -> str:
        ran[n] += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
        return f"ran {n}"

    events: list[ReconnectEvent] = []
    async with _proxied() as (server, proxy):
        token = server.token("chaos", ai_dollars=100)
        client = Chucky(
            token,
            proxy.url("/ws"),
            include_partial_messages=True,
            tools=[t],
            reconnect_backoff=0.01,
            max_reconnect_attempts=100,
            on_reconnect=events.append,
        )
        session = client.create_session()
        chaos_on = asyncio.Event()

        async def chaos() -> None:
            # A cut every ~40 ms while armed: several per long turn, some during a handshake
            # or a replay (reconnecting takes a few milliseconds).
            while True:
                await chaos_on.wait()
                await asyncio.sleep(rng.expovariate(1 / 0.04))
                if chaos_on.is_set():
                    proxy.cut()

        results: list[ResultMessage] = []
        cutter = asyncio.create_task(chaos())
        try:
            for index in range(200):
                kind = index % 5
                if kind == 0:
                    prompt, expected = "stream 2000", _stream_text(2000)
                elif kind in (1, 2):
                    prompt, expected = f'call t {{"n": {index}}}', f"tool t returned: ran {index}"
                else:
                    prompt, expected = f"stream {index}", _stream_text(index)
                chaos_on.set()
                text, got = await _turn(session, prompt)
                chaos_on.clear()
                assert len(got) == 1, (index, got)
                assert got[0].result == expected, (index, got[0])
                if kind != 1 and kind != 2:
                    assert text == expected, index
                results.extend(got)
        finally:
            cutter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cutter
        assert session.state is SessionState.OPEN
        session_id = session.session_id
        assert session_id is not None
        await client.close()
        assert ran == Counter({n: 1 for n in range(200) if n % 5 in (1, 2)})
        assert proxy.cuts >= 100, proxy.cuts
        assert any(e.outcome == "resumed" and e.replayed > 0 for e in events)
        await _check_ledger(server, token, session_id, results)


async def test_after_the_grace_the_turn_comes_back_from_the_store() -> None:
    # The turn ends detached (0.3 s) within the grace (1 s); the client comes back after it.
    async with _proxied(reconnect_grace=1.0) as (server, proxy):
        token = server.token("late")
        events: list[ReconnectEvent] = []
        client = Chucky(
            token,
            proxy.url("/ws"),
            include_partial_messages=True,
            reconnect_backoff=0.05,
            max_reconnect_attempts=50,  # refused until the grace ran out
            on_reconnect=events.append,
        )
        session = client.create_session()
        await session.send("sleep 0.3; stream 300")
        stream = session.stream()
        await anext(stream)  # the turn is running
        proxy.refuse(True)
        proxy.cut()
        await settled(server)  # the grace ran out: the turn ended, detached, and was stored
        proxy.refuse(False)
        rest = [message async for message in stream]
        [result] = [m for m in rest if isinstance(m, ResultMessage)]
        assert result.result == _stream_text(300)
        assert [e.outcome for e in events if e.outcome != "reconnecting"][
            -1
        ] == "replay_unavailable"
        # The session goes on.
        text, [again] = await _turn(session, "stream 5")
        assert text == again.result == _stream_text(5)
        session_id = session.session_id
        assert session_id is not None
        await client.close()
        await _check_ledger(server, token, session_id, [result, again])


def _brief_token(server: ScriptedServer, user: str) -> str:
    """A token with about 3 s of life left (issued 28 s ago for 1 s; the server allows 30 s
    of clock skew)."""
    budget = create_budget(10.0, 10.0, "day")
    return create_token(
        user, server.project_id, server.secret, budget, expires_in=1, now=time.time() - 28
    )


async def _until_expired(token: str) -> None:
    """Sleep until the server refuses ``token`` (its ``exp`` plus the 30 s of skew)."""
    exp = decode_token(token).claims.exp
    await asyncio.sleep(max(0.0, exp + CLOCK_SKEW_SECONDS + 0.2 - time.time()))


async def test_a_token_that_expired_meanwhile_is_replaced_by_the_token_provider() -> None:
    async with _proxied() as (server, proxy):
        minted: list[str] = []

        def fresh() -> str:  # the first token is about to expire; later ones are fresh
            minted.append(
                _brief_token(server, "renewed") if not minted else server.token("renewed")
            )
            return minted[-1]

        client = Chucky(url=proxy.url("/ws"), token_provider=fresh, reconnect_backoff=0.01)
        session = client.create_session()
        await session.send("sleep 5; echo survived")
        stream = session.stream()
        await anext(stream)
        await _until_expired(minted[0])
        proxy.cut()
        rest = [message async for message in stream]
        assert [m.result for m in rest if isinstance(m, ResultMessage)] == ["survived"]
        assert len(minted) == 2  # one per socket
        await client.close()


async def test_an_expired_token_without_a_provider_fails_typed_without_retrying() -> None:
    async with _proxied() as (server, proxy):
        brief = _brief_token(server, "brief")
        client = Chucky(brief, proxy.url("/ws"), reconnect_backoff=0.01)
        session = client.create_session()
        await session.send("sleep 5; echo late")
        stream = session.stream()
        await anext(stream)
        await _until_expired(brief)
        accepted = proxy.accepted
        proxy.cut()
        with pytest.raises(AuthenticationError) as caught:
            async for _ in stream:
                pass
        assert caught.value.reason == "token_expired"
        assert proxy.accepted == accepted + 1  # one attempt, no retry loop
        await client.close()


async def test_a_clean_close_does_not_reconnect_and_official_clients_are_unaffected() -> None:
    async with _proxied() as (server, proxy):
        client = Chucky(server.token(), proxy.url("/ws"))
        session = client.create_session()
        await session.send("echo one")
        assert [m async for m in session.stream()][-1].result == "one"  # type: ignore[union-attr]
        accepted = proxy.accepted
        await session.close()
        await asyncio.sleep(ticks(2))
        assert proxy.accepted == accepted
        await client.close()
        # Without reconnect (as the official clients), a cut ends the turn as before.
        plain = Chucky(server.token(), proxy.url("/ws"), reconnect=False)
        session = plain.create_session()
        await session.send("sleep 0.5; echo never")
        stream = session.stream()
        await anext(stream)
        proxy.cut()
        with pytest.raises(ConnectionError):
            async for _ in stream:
                pass
        await plain.close()


async def test_cuts_during_the_resume_handshake_and_during_the_replay_lose_nothing() -> None:
    async with _proxied() as (server, proxy):
        token = server.token("unlucky")
        events: list[ReconnectEvent] = []
        client = Chucky(
            token,
            proxy.url("/ws"),
            include_partial_messages=True,
            reconnect_backoff=0.01,
            on_reconnect=events.append,
        )
        session = client.create_session()

        async def arm() -> None:
            proxy.cut_after(20_000)  # mid-stream
            await proxy.wait_cuts(1)
            # The next socket dies as its resume is answered...
            proxy.cut_when(lambda way, data: way == "down" and b'"resumed"' in data)
            await proxy.wait_cuts(2)
            # ... and the one after that in the middle of its replay.
            proxy.cut_after(5_000)
            await proxy.wait_cuts(3)

        armed = asyncio.create_task(arm())
        text, [result] = await _turn(session, "stream 2000")
        await armed
        assert text == result.result == _stream_text(2000)
        assert proxy.cuts == 3
        resumed = [e for e in events if e.outcome == "resumed"]
        assert resumed and resumed[-1].replayed > 0
        session_id = session.session_id
        assert session_id is not None
        await client.close()
        await _check_ledger(server, token, session_id, [result])
