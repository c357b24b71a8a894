"""Control frames and liveness over a raw WebSocket: ping, interrupt, end_input, close, and
clients that go away mid-turn (docs/protocol.md sections 3, 4 and 6)."""

from __future__ import annotations

import asyncio

import pytest
from support.raw import (
    Frame,
    assert_no_frame,
    check_result,
    closed_code,
    collect_turn,
    open_raw,
    open_session,
    poll_until,
    recv,
    send,
    turn,
    user_frame,
    wait_closed,
)
from support.timing import ticks
from websockets.asyncio.client import ClientConnection

from chucky.testing import ScriptedServer, scripted_server

TOOL_SERVER = {"name": "s", "tools": [{"name": "t", "inputSchema": {"type": "object"}}]}
LONG_SLEEP = f"sleep {ticks(200)}; echo never"


def _control(action: str) -> Frame:
    return {"type": "control", "payload": {"action": action}}


async def _running(ws: ClientConnection, script: str) -> Frame:
    """Start a turn and wait until it runs (its ``system`` init); the init frame."""
    await send(ws, user_frame(script))
    frame = await recv(ws)
    assert frame["type"] == "system"
    assert frame["subtype"] == "init"
    return frame


async def _pending_call(ws: ClientConnection) -> Frame:
    """Start a turn that calls the client tool ``t``; the ``tool_call`` payload."""
    await send(ws, user_frame("call t {}"))
    frames = [await recv(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["system", "assistant", "tool_call"]
    payload = frames[2]["payload"]
    assert isinstance(payload, dict)
    return payload


async def _settled(server: ScriptedServer) -> None:
    """The server forgets closed connections and the sessions they held."""
    await poll_until(lambda: not server.server._connections)


# -- ping --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "echoed"),
    [
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123.75, 1_700_000_000_123),
        (0, 0),
        (2**63 + 1, 2**63 + 1),
    ],
)
async def test_json_ping_is_answered_with_an_integer_pong(
    server: ScriptedServer, stamp: float, echoed: int
) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, {"type": "ping", "payload": {"timestamp": stamp}})
        pong = await recv(ws)
        assert pong == {"type": "pong", "payload": {"timestamp": echoed}}
        assert type(pong["payload"]["timestamp"]) is int


async def test_ping_before_init_and_during_a_turn(server: ScriptedServer) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "ping", "payload": {"timestamp": 5}})
        assert await recv(ws) == {"type": "pong", "payload": {"timestamp": 5}}
        await send(ws, {"type": "init", "payload": {}})
        assert (await recv(ws))["payload"]["action"] == "session_info"
        await _running(ws, f"sleep {ticks(4)}; echo pinged")
        await send(ws, {"type": "ping", "payload": {"timestamp": 6}})
        frames = await collect_turn(ws)
        assert {"type": "pong", "payload": {"timestamp": 6}} in frames
        assert check_result(frames)["result"] == "pinged"


async def test_websocket_ping_frames_are_answered(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        waiter = await ws.ping(b"liveness")
        async with asyncio.timeout(ticks(20)):
            await waiter


# -- interrupt ---------------------------------------------------------------------------------


def _check_interrupted(frames: list[Frame]) -> None:
    result = check_result(frames, subtype="error_during_execution")
    assert result["errors"] == ["interrupted"]


async def test_interrupt_a_running_turn(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        init = await _running(ws, LONG_SLEEP)
        await send(ws, _control("interrupt"))
        frames = [init, *await collect_turn(ws)]
        _check_interrupted(frames)
        assert check_result(await turn(ws, "echo after"))["result"] == "after"


async def test_interrupt_while_waiting_for_a_tool_result(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[TOOL_SERVER]) as (ws, info):
        call = await _pending_call(ws)
        await send(ws, _control("interrupt"))
        _check_interrupted(await collect_turn(ws))
        # The call was abandoned: its late result (the client may have sent it before it heard
        # of the interrupt) is dropped quietly -- an error frame now would end the client's
        # next turn. A result for a call that never was is still refused.
        answer = {"callId": call["callId"], "result": {"content": []}}
        await send(ws, {"type": "tool_result", "payload": answer})
        await assert_no_frame(ws)
        assert check_result(await turn(ws, "echo after"))["result"] == "after"
        await send(ws, {"type": "tool_result", "payload": {**answer, "callId": "never-made"}})
        assert (await recv(ws))["payload"]["code"] == "VALIDATION_ERROR"
    # The pending call resolved to an error result in the transcript (section 6): the session
    # holds no tool_use without its tool_result.
    await _settled(server)
    async with open_session(server, sessionId=info["sessionId"]) as (_, resumed):
        assert resumed["messageCount"] == 5  # user, tool_use, tool_result, user, assistant


async def test_interrupt_with_no_turn_running_does_nothing(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, _control("interrupt"))
        assert check_result(await turn(ws, "echo fine"))["result"] == "fine"


async def test_interrupt_stops_only_the_running_turn(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await _running(ws, LONG_SLEEP)
        await send(ws, user_frame("echo queued"))
        await send(ws, _control("interrupt"))
        _check_interrupted(await collect_turn(ws))
        assert check_result(await collect_turn(ws))["result"] == "queued"


# -- end_input and close -----------------------------------------------------------------------


async def test_end_input_finishes_queued_turns_then_closes(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, user_frame(f"sleep {ticks(2)}; echo one"))
        await send(ws, user_frame("echo two"))
        await send(ws, _control("end_input"))
        assert check_result(await collect_turn(ws))["result"] == "one"
        assert check_result(await collect_turn(ws))["result"] == "two"
        assert await recv(ws) == _control("close")
        assert await closed_code(ws) == 1000


async def test_no_turn_after_end_input(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, user_frame(f"sleep {ticks(4)}; echo last"))
        await send(ws, _control("end_input"))
        await send(ws, user_frame("echo too late"))
        frames = await wait_closed(ws)
        kinds = [f["type"] for f in frames]
        assert kinds.count("result") == 1
        assert frames[-1] == _control("close")
        errors = [f for f in frames if f["type"] == "error"]
        assert [e["payload"]["code"] for e in errors] == ["VALIDATION_ERROR"]
        assert ws.close_code == 1000


async def test_end_input_when_idle_closes_at_once(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        await send(ws, _control("end_input"))
        assert await recv(ws) == _control("close")
        assert await closed_code(ws) == 1000


async def test_close_when_idle(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        check_result(await turn(ws, "echo done"))
        await send(ws, _control("close"))
        assert await closed_code(ws) == 1000


async def test_close_mid_turn_ends_the_turn_with_its_result_first(server: ScriptedServer) -> None:
    async with open_session(server) as (ws, _):
        init = await _running(ws, LONG_SLEEP)
        await send(ws, user_frame("echo queued, never run"))
        await send(ws, _control("close"))
        frames = await wait_closed(ws)
        # The running turn ends with its result, then the socket closes: the queued turn
        # never starts (no second system init).
        _check_interrupted([init, *frames])
        assert ws.close_code == 1000


async def test_close_while_waiting_for_a_tool_result(server: ScriptedServer) -> None:
    async with open_session(server, mcpServers=[TOOL_SERVER]) as (ws, _):
        await _pending_call(ws)
        await send(ws, _control("close"))
        _check_interrupted(await wait_closed(ws))
        assert ws.close_code == 1000


# -- clients that go away ----------------------------------------------------------------------


@pytest.mark.parametrize("pending", ["sleep", "tool_call"])
async def test_disconnect_mid_turn(server: ScriptedServer, pending: str) -> None:
    baseline = len(asyncio.all_tasks())
    async with open_session(server, mcpServers=[TOOL_SERVER]) as (ws, info):
        if pending == "sleep":
            await _running(ws, LONG_SLEEP)
        else:
            await _pending_call(ws)
        assert server.server._connections
    # Gone without a word: the server drops the turn, its tasks and the session claim ...
    await _settled(server)
    await poll_until(lambda: len(asyncio.all_tasks()) <= baseline)
    # ... and serves the next connection, which may resume the session.
    async with open_session(server, sessionId=info["sessionId"]) as (ws, resumed):
        assert resumed["sessionId"] == info["sessionId"]
        # A pending call resolved to an error result: user, tool_use, tool_result.
        assert resumed["messageCount"] == (1 if pending == "sleep" else 3)
        expected = LONG_SLEEP if pending == "sleep" else "call t {}"
        assert check_result(await turn(ws, "recall"))["result"] == expected


# -- idle connections and frame sizes ----------------------------------------------------------


async def test_an_idle_connection_is_closed_but_never_mid_turn() -> None:
    async with scripted_server(idle_timeout=ticks(4)) as server, open_session(server) as (ws, _):
        # A turn longer than the idle timeout is no idleness.
        frames = await turn(ws, f"sleep {ticks(10)}; echo slow", timeout=ticks(30))
        assert check_result(frames)["result"] == "slow"
        assert await recv(ws, timeout=ticks(20)) == _control("close")
        assert await closed_code(ws) == 1000


async def test_large_frames_are_accepted_up_to_the_configured_size(
    server: ScriptedServer,
) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "QUJD" * 1_000_000},
    }
    async with open_session(server) as (ws, _):
        frames = await turn(ws, [image, {"type": "text", "text": "echo got it"}])
        assert check_result(frames)["result"] == "got it"


async def test_a_frame_over_the_configured_size_closes_with_1009() -> None:
    async with (
        scripted_server(max_frame_bytes=64 * 1024) as server,
        open_session(server) as (ws, _),
    ):
        await send(ws, user_frame("echo " + "x" * 100_000))
        assert await closed_code(ws) == 1009
