"""Reconnect across nodes (issue 13, item 4): two servers on one PostgreSQL database, a load
balancer (the TCP proxy) that sends the reconnect to the other node.

The replay buffer lives on the node that served the session, so the other node answers
``replay_unavailable``, waits for the session's lease (the first node lets go when its grace
ends, its turn done), and answers the turn the client sends again from the store: the turn's
``result`` arrives once, it is not run twice, and the ledger is exact.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from support.faults import check_history, ledger, session_spent, settled
from support.proxy import TcpProxy

from chucky import Chucky
from chucky.client.reconnect import ReconnectEvent
from chucky.messages import ResultMessage
from chucky.testing import ScriptedServer, scripted_server


def _port(server: ScriptedServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


async def test_a_reconnect_that_lands_on_another_node_gets_the_stored_result(
    postgres_database: str,
) -> None:
    secret = f"hk_live_{secrets.token_hex(16)}"
    shared = {"database_url": postgres_database, "secret": secret, "reconnect_grace": 1.0}
    async with (
        scripted_server(**shared) as first,
        scripted_server(**shared) as second,
        TcpProxy("127.0.0.1", _port(first)) as balancer,
    ):
        token = first.token("roaming")
        events: list[ReconnectEvent] = []
        client = Chucky(
            token,
            balancer.url("/ws"),
            include_partial_messages=True,
            reconnect_backoff=0.05,
            max_reconnect_attempts=20,
            on_reconnect=events.append,
        )
        session = client.create_session()
        await session.send("sleep 0.3; stream 200")
        stream = session.stream()
        await anext(stream)  # the turn runs on the first node
        balancer.target = ("127.0.0.1", _port(second))  # the next connection goes elsewhere
        balancer.cut()
        rest = [message async for message in stream]
        results = [m for m in rest if isinstance(m, ResultMessage)]
        assert [r.result for r in results] == ["".join(f"{i % 100:02d} " for i in range(200))]
        outcomes = [e.outcome for e in events if e.outcome != "reconnecting"]
        assert outcomes == ["replay_unavailable"]
        # The session goes on, on the second node.
        await session.send("echo here")
        again = [m async for m in session.stream() if isinstance(m, ResultMessage)]
        assert [r.result for r in again] == ["here"]
        session_id = session.session_id
        assert session_id is not None
        await client.close()
        await settled(first)
        await settled(second)
        usage = await ledger(second.url, token)
        assert usage["ai"]["reserved"] == 0 and usage["compute"]["reserved"] == 0
        reported = sum(round(r.total_cost_usd * 1_000_000) for r in [*results, *again])
        spent, transcript = await session_spent(second.server.store, token, session_id)
        assert usage["ai"]["used"] == spent == reported
        check_history(transcript)
        # It ran once: one user message for it in the transcript.
        assert [m["content"] for m in transcript if m["role"] == "user"] == [
            "sleep 0.3; stream 200",
            "echo here",
        ]
