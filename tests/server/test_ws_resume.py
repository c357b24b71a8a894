"""The ``seq`` extension on the server (docs/protocol.md section 10), over real sockets.

A dropped socket is the client aborting its TCP connection (no close frame): the server sees
a reset, exactly as when a proxy or the network cuts the link. Each test ends with the ledger
invariants of :mod:`support.faults`: nothing reserved, the ledger equal to what the results
reported, a consistent history.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support.faults import TOOL_SERVER, check_history, ledger, session_spent, settled
from support.raw import (
    Frame,
    assert_no_frame,
    check_result,
    collect_turn,
    init,
    open_raw,
    poll_until,
    recv,
    send,
    user_frame,
)
from support.timing import ticks
from websockets.asyncio.client import ClientConnection

from chucky.server.store import TURNS_KEPT
from chucky.testing import ScriptedServer, scripted_server
from chucky.tokens import decode_token

SEQ = {"chuckyExtensions": ["seq", "tool_cancel"]}


def _drop(ws: ClientConnection) -> None:
    """Cut the TCP connection: no close frame, the server sees a reset."""
    ws.transport.abort()


@asynccontextmanager
async def _resume(
    server: ScriptedServer, session_id: str, last_seq: int, token: str | None = None
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A new socket resuming ``session_id``: ``(ws, the first frame after ready)``."""
    async with open_raw(server, token=token) as ws:
        ready = await recv(ws)
        assert ready == {"type": "control", "payload": {"action": "ready"}}
        await send(
            ws, {"type": "init", "payload": {**SEQ, "sessionId": session_id, "lastSeq": last_seq}}
        )
        yield ws, await recv(ws)


def _seqs(frames: list[Frame]) -> list[int]:
    return [frame["seq"] for frame in frames]


async def _until(ws: ClientConnection, kind: str, into: list[Frame]) -> Frame:
    while True:
        frame = await recv(ws)
        into.append(frame)
        if frame.get("type") == kind:
            return frame


async def _check_ledger(server: ScriptedServer, session_id: str, reported: int) -> None:
    await settled(server)
    token = server.token("test-user")
    usage = await ledger(server.url, token)
    assert usage["ai"]["reserved"] == 0 and usage["compute"]["reserved"] == 0, usage
    spent, transcript = await session_spent(server.server.store, token, session_id)
    assert usage["ai"]["used"] == spent == reported
    check_history(transcript)


def _cost(result: Frame) -> int:
    return round(result["total_cost_usd"] * 1_000_000)


async def test_every_frame_after_init_is_numbered_and_official_clients_see_no_seq() -> None:
    async with scripted_server() as server:
        async with open_raw(server) as ws:
            assert await recv(ws) == {"type": "control", "payload": {"action": "ready"}}
            await send(ws, {"type": "init", "payload": SEQ})
            info = await recv(ws)
            assert info["seq"] == 1
            assert info["payload"]["data"]["resume"] == {
                "graceSeconds": 30.0,
                "replayFrames": 4096,
                "replayBytes": 4 * 1024 * 1024,
            }
            await send(ws, user_frame("stream 20", turnId="t1"))
            frames = await collect_turn(ws)
            await send(ws, {"type": "ping", "payload": {"timestamp": 5}})
            pong = await recv(ws)
            assert _seqs([info, *frames, pong]) == list(range(1, len(frames) + 3))
        async with open_raw(server) as ws:  # no seq announced: nothing changes
            info = await init(ws, chuckyExtensions=["tool_cancel"])
            assert "resume" not in info
            await send(ws, user_frame("echo hi"))
            assert all("seq" not in frame for frame in await collect_turn(ws))


async def test_a_dropped_socket_is_resumed_with_every_frame_after_last_seq_once() -> None:
    async with scripted_server() as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ, includePartialMessages=True)
            session_id = info["sessionId"]
            await send(ws, user_frame("sleep 0.3; stream 400", turnId="t1"))
            seen = [await recv(ws) for _ in range(5)]  # system init and a few deltas
            _drop(ws)
        last_seq = seen[-1]["seq"]
        async with _resume(server, session_id, last_seq) as (ws, resumed):
            assert resumed == {
                "type": "control",
                "payload": {
                    "action": "resumed",
                    "data": {
                        "sessionId": session_id,
                        "lastSeq": last_seq,
                        "replayed": resumed["payload"]["data"]["replayed"],
                    },
                },
            }
            rest = await collect_turn(ws)
            assert _seqs(rest) == list(range(last_seq + 1, last_seq + 1 + len(rest)))
            frames = seen + rest
            text = "".join(
                f["event"]["delta"]["text"]
                for f in frames
                if f["type"] == "stream_event" and f["event"]["type"] == "content_block_delta"
            )
            result = check_result(frames)
            assert text == result["result"] == "".join(f"{i % 100:02d} " for i in range(400))
            # The session goes on on the new socket, numbering included.
            await send(ws, user_frame("echo again", turnId="t2"))
            again = await collect_turn(ws)
            assert again[0]["seq"] == rest[-1]["seq"] + 1
            reported = _cost(result) + _cost(check_result(again))
        await _check_ledger(server, session_id, reported)


async def test_a_pending_tool_call_is_sent_again_and_answered_once() -> None:
    async with scripted_server() as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ, mcpServers=[TOOL_SERVER])
            session_id = info["sessionId"]
            await send(ws, user_frame("call t {}", turnId="t1"))
            seen: list[Frame] = []
            call = await _until(ws, "tool_call", seen)
            _drop(ws)  # the client's answer would have been lost with the socket
        async with _resume(server, session_id, call["seq"]) as (ws, resumed):
            assert resumed["payload"]["data"]["replayed"] == 0
            again = await recv(ws)
            assert again["type"] == "tool_call"
            assert again["payload"] == call["payload"]
            assert again["seq"] == call["seq"] + 1
            answer = {
                "type": "tool_result",
                "payload": {
                    "callId": call["payload"]["callId"],
                    "result": {"content": [{"type": "text", "text": "done"}]},
                },
            }
            await send(ws, answer)
            await send(ws, answer)  # twice: applied once, no error
            frames = await collect_turn(ws)
            result = check_result(frames)
            assert result["result"] == "tool t returned: done"
            assert [f for f in frames if f["type"] == "error"] == []
            await assert_no_frame(ws)
        await _check_ledger(server, session_id, _cost(result))


async def test_a_turn_sent_again_with_its_id_runs_once() -> None:
    async with scripted_server() as server, open_raw(server) as ws:
        info = await init(ws, **SEQ)
        await send(ws, user_frame("echo once", turnId="same"))
        await send(ws, user_frame("echo once", turnId="same"))
        result = check_result(await collect_turn(ws))
        await send(ws, user_frame("echo once", turnId="same"))  # after its end, too
        await assert_no_frame(ws)
        assert result["result"] == "once"
        _, transcript = await session_spent(
            server.server.store, server.token("test-user"), info["sessionId"]
        )
        assert [m["uuid"] for m in transcript if m["role"] == "user"] == ["same"]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 101, "é"])
async def test_a_malformed_turn_id_is_a_validation_error(bad: str) -> None:
    async with scripted_server() as server, open_raw(server) as ws:
        await init(ws, **SEQ)
        await send(ws, user_frame("echo x", turnId=bad))
        error = await recv(ws)
        assert error["payload"]["code"] == "VALIDATION_ERROR"
        assert "turnId" in error["payload"]["message"]


async def test_after_the_grace_the_resume_is_answered_from_the_store() -> None:
    async with scripted_server(reconnect_grace=ticks(2)) as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ, mcpServers=[TOOL_SERVER])
            session_id = info["sessionId"]
            await send(ws, user_frame("echo first", turnId="t1"))
            first = await collect_turn(ws)
            await send(ws, user_frame("echo second", turnId="t2"))
            seen = [await recv(ws)]  # its system init; the rest is lost with the socket
            await asyncio.sleep(ticks(1))
            _drop(ws)
        await settled(server)  # the grace ran out: the session ended, its turn done
        async with _resume(server, session_id, seen[-1]["seq"]) as (ws, error):
            assert error["type"] == "error" and "seq" not in error
            assert error["payload"]["code"] == "SESSION_ERROR"
            assert error["payload"]["details"] == {
                "reason": "replay_unavailable",
                "lastSeq": seen[-1]["seq"],
            }
            info = await recv(ws)
            assert info["payload"]["action"] == "session_info" and info["seq"] == 1
            await send(ws, user_frame("echo second", turnId="t2"))
            frames = await collect_turn(ws)
            assert [f["type"] for f in frames] == ["assistant", "result"]
            result = check_result(frames)
            assert result["result"] == "second"
            stored = await session_spent(server.server.store, server.token("test-user"), session_id)
            assert frames[0]["uuid"] == stored[1][-1]["uuid"]
            # A turn never sent before runs.
            await send(ws, user_frame("echo third", turnId="t3"))
            third = check_result(await collect_turn(ws))
        reported = _cost(check_result(first)) + _cost(result) + _cost(third)
        await _check_ledger(server, session_id, reported)


async def test_a_replay_buffer_that_lost_frames_answers_replay_unavailable() -> None:
    async with scripted_server(replay_frames=8) as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ, includePartialMessages=True)
            session_id = info["sessionId"]
            await send(ws, user_frame("sleep 0.2; stream 50", turnId="long"))
            seen = [await recv(ws)]
            _drop(ws)
        # The turn goes on detached and fills the buffer past lastSeq + 1.
        claims = decode_token(server.token("test-user")).claims
        holder = server.server.holder_of(session_id, claims)
        assert holder is not None
        await poll_until(lambda: holder.replay.buffer.first > seen[-1]["seq"] + 1)
        async with _resume(server, session_id, seen[-1]["seq"]) as (ws, error):
            assert error["payload"]["details"]["reason"] == "replay_unavailable"
            info = await recv(ws)  # once the turn ended and the session was let go
            assert info["payload"]["action"] == "session_info"
            await send(ws, user_frame("sleep 0.2; stream 50", turnId="long"))
            frames = await collect_turn(ws)
            result = check_result(frames)
            assert result["result"] == "".join(f"{i % 100:02d} " for i in range(50))
            assert [f["type"] for f in frames] == ["assistant", "result"]
        await _check_ledger(server, session_id, _cost(result))


async def test_an_ack_lets_the_buffer_forget() -> None:
    async with scripted_server() as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ)
            session_id = info["sessionId"]
            await send(ws, user_frame("echo a", turnId="t1"))
            frames = await collect_turn(ws)
            await send(ws, {"type": "control", "payload": {"action": "ack", "data": {"seq": 2}}})
            await send(ws, {"type": "control", "payload": {"action": "ack", "data": "junk"}})
            await send(ws, {"type": "ping", "payload": {}})
            assert (await recv(ws))["type"] == "pong"  # acks are never answered
            _drop(ws)
        async with _resume(server, session_id, 1) as (ws, error):  # seq 2 is forgotten
            assert error["payload"]["details"]["reason"] == "replay_unavailable"
            assert (await recv(ws))["payload"]["action"] == "session_info"
        await _check_ledger(server, session_id, _cost(check_result(frames)))


async def test_a_plain_resume_while_detached_is_busy_and_another_user_cannot_attach() -> None:
    async with scripted_server(reconnect_grace=ticks(3)) as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ)
            session_id = info["sessionId"]
            _drop(ws)
        async with open_raw(server) as ws:
            assert (await recv(ws))["payload"]["action"] == "ready"
            await send(ws, {"type": "init", "payload": {"sessionId": session_id}})
            busy = await recv(ws)
            assert busy["payload"]["details"]["reason"] == "session_busy"
        intruder = server.token("mallory")
        async with _resume(server, session_id, 1, token=intruder) as (ws, error):
            assert error["payload"]["details"]["reason"] == "replay_unavailable"
            refused = await recv(ws)
            assert refused["payload"]["details"]["reason"] == "session_not_found"


async def test_a_turn_whose_end_was_never_written_is_turn_lost() -> None:
    async with scripted_server() as server:
        token = server.token("test-user")
        claims = decode_token(token).claims
        store = server.server.store
        record = await store.create_session(claims.iss, claims.sub, "claude-sonnet-5-5", 1.0)
        record.append("user", "echo cut short", "lost-turn")  # a server died in the turn
        await store.save_session(record)
        async with _resume(server, record.session_id, 7) as (ws, error):
            assert error["payload"]["details"]["reason"] == "replay_unavailable"
            assert (await recv(ws))["payload"]["action"] == "session_info"
            await send(ws, user_frame("echo cut short", turnId="lost-turn"))
            lost = await recv(ws)
            assert lost["payload"]["code"] == "SESSION_ERROR"
            assert lost["payload"]["details"] == {"reason": "turn_lost", "turnId": "lost-turn"}


async def test_a_session_keeps_the_ends_of_its_last_turns_only() -> None:
    async with scripted_server() as server, open_raw(server) as ws:
        info = await init(ws, **SEQ)
        for index in range(TURNS_KEPT + 2):
            await send(ws, user_frame(f"echo {index}", turnId=f"t{index}"))
            check_result(await collect_turn(ws))
        await settled_session(server, info["sessionId"], TURNS_KEPT)


async def settled_session(server: ScriptedServer, session_id: str, kept: int) -> None:
    claims = decode_token(server.token("test-user")).claims
    record = await server.server.store.get_session(session_id, claims.iss, claims.sub)
    assert record is not None
    assert list(record.turns) == [f"t{i}" for i in range(2, kept + 2)]
    end: dict[str, Any] = record.turns[f"t{kept + 1}"]["end"]
    assert end["type"] == "result" and end["result"] == str(kept + 1)
    json.dumps(record.turns)  # stored as JSON


async def test_a_shutdown_ends_a_detached_session_at_once() -> None:
    async with scripted_server(reconnect_grace=60) as server:
        async with open_raw(server) as ws:
            info = await init(ws, **SEQ)
            await send(ws, user_frame("sleep 0.2; echo late", turnId="t1"))
            await recv(ws)
            _drop(ws)
        await asyncio.sleep(ticks(1))
        assert server.server.holds_live(info["sessionId"])
        async with asyncio.timeout(ticks(20)):  # not the 60 s grace
            await server.server.shutdown(grace=ticks(2))


async def test_a_clean_close_right_after_a_frame_ends_the_session_without_detaching() -> None:
    # The close frame can be read while the frame before it is being handled (here an ack):
    # that is still the client's clean close, not a broken link.
    async with scripted_server() as server:
        for _ in range(5):
            async with open_raw(server) as ws:
                await init(ws, **SEQ)
                await send(ws, user_frame("echo bye", turnId="t1"))
                result = check_result(await collect_turn(ws))
                ack = {"action": "ack", "data": {"seq": result["seq"]}}
                await send(ws, {"type": "control", "payload": ack})
            await settled(server, timeout=ticks(40))  # not held for the 30 s grace
