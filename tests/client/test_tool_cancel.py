"""Client tool handlers whose call the server abandoned are cancelled and never answered.

The server abandons a pending call when it interrupts the turn, when the call times out on its
side, when the turn ends otherwise and when the socket closes (docs/protocol.md sections 6 and 10).
Each test scripts the server and then reads every frame the client sends until the client
closes the socket, so a stray ``tool_result`` cannot go unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.fake_server import Peer, fake_server
from support.timing import ticks
from websockets.exceptions import ConnectionClosed

from chucky import Chucky, ConnectionError, ProviderError, Tool, tool
from chucky.messages import AssistantMessage, ErrorMessage, ResultMessage, SDKMessage

TOKEN = "header.payload.signature"
PATIENCE = ticks(100)  # upper bound for things that should happen "soon"


def client(url: str, **options: Any) -> Chucky:
    return Chucky(TOKEN, url, keepalive_interval=None, **options)


def tool_call(call_id: str, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "payload": {"callId": call_id, "toolName": name, "input": arguments or {}},
    }


def tool_cancel(data: Any) -> dict[str, Any]:
    return {"type": "control", "payload": {"action": "tool_cancel", "data": data}}


def interrupted_result() -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "error_during_execution",
        "uuid": "r-int",
        "session_id": "sess-1",
        "is_error": True,
        "num_turns": 1,
        "duration_ms": 1,
        "duration_api_ms": 1,
        "total_cost_usd": 0.0,
        "usage": {"input_tokens": 1, "output_tokens": 1},
        "errors": ["interrupted"],
    }


class Waiter:
    """An async tool that waits for an event that never fires, recording its life."""

    def __init__(self) -> None:
        self.entered: dict[str, asyncio.Event] = {}
        self.cleaned: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []

        @tool("wait", "Wait forever")
        async def wait(name: str) -> str:
            self._event(self.entered, name).set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
            finally:
                self._event(self.cleaned, name).set()
            return "never"  # pragma: no cover

        self.tool: Tool = wait

    @staticmethod
    def _event(events: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return events.setdefault(name, asyncio.Event())

    async def until_entered(self, *names: str) -> None:
        async with asyncio.timeout(PATIENCE):
            for name in names:
                await self._event(self.entered, name).wait()

    async def until_cleaned(self, *names: str) -> None:
        async with asyncio.timeout(PATIENCE):
            for name in names:
                await self._event(self.cleaned, name).wait()


@tool("echo", "Echo")
async def echo(text: str) -> str:
    return text


Script = Callable[[Peer], Awaitable[None]]


def recording(script: Script, finished: asyncio.Event) -> Script:
    """Run ``script``, then record every frame the client sends until it closes the socket."""

    async def handler(peer: Peer) -> None:
        try:
            await script(peer)
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await peer.recv(within=PATIENCE)
        finally:
            finished.set()

    return handler


def sent(peer: Peer, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in peer.received if frame.get("type") == kind]


def answered(peer: Peer) -> list[str]:
    return [frame["payload"]["callId"] for frame in sent(peer, "tool_result")]


async def read_turn(session: Any) -> list[SDKMessage]:
    async with asyncio.timeout(PATIENCE):
        return [message async for message in session.stream()]


async def closed(finished: asyncio.Event) -> None:
    async with asyncio.timeout(PATIENCE):
        await finished.wait()


# --- tool_cancel --------------------------------------------------------------------------------


async def test_tool_cancel_cancels_an_async_handler_and_no_result_is_sent() -> None:
    waiter = Waiter()
    finished = asyncio.Event()
    init: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        init.update(await peer.handshake())
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await waiter.until_entered("c1")
        await peer.send(tool_cancel({"callId": "c1", "reason": "timeout"}))
        await waiter.until_cleaned("c1")
        await peer.assistant("the tool timed out")
        await peer.result("first")
        await peer.recv_type("user")  # a later turn, with a tool call that is answered
        await peer.send(tool_call("c2", "echo", {"text": "still works"}))
        answer = await peer.recv_type("tool_result")
        await peer.result(answer["payload"]["result"]["content"][0]["text"])

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[waiter.tool, echo]).create_session()
        await session.send("one")
        first = await read_turn(session)
        await session.send("two")
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert init["chuckyExtensions"] == ["interrupt", "tool_cancel", "seq"]
    assert waiter.cancelled == ["c1"]
    assert [type(m) for m in first] == [AssistantMessage, ResultMessage]
    assert first[-1]["result"] == "first"
    assert second[-1]["result"] == "still works"
    assert answered(peer) == ["c2"]


async def test_tool_cancel_of_one_call_leaves_the_others_running() -> None:
    waiter = Waiter()
    release = asyncio.Event()
    finished = asyncio.Event()

    @tool("gate", "Waits for the server's go")
    async def gate() -> str:
        await release.wait()
        return "opened"

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await peer.send(tool_call("c2", "gate"))
        await waiter.until_entered("c1")
        await peer.send(tool_cancel({"callId": "c1", "reason": "timeout"}))
        await waiter.until_cleaned("c1")
        release.set()
        answer = await peer.recv_type("tool_result")
        await peer.result(answer["payload"]["callId"])

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[waiter.tool, gate]).create_session()
        await session.send("go")
        messages = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert messages[-1]["result"] == "c2"
    assert answered(peer) == ["c2"]


async def test_unknown_malformed_and_late_tool_cancels_change_nothing() -> None:
    """Cancels of an unknown call, malformed cancels, and a cancel that crossed the call's
    result on the wire: no exception, no stray frame, exactly one result for the call."""
    returned = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    @tool("gate", "Waits for the server's go")
    async def gate() -> str:
        await release.wait()
        returned.set()
        return "opened"

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "gate"))
        await peer.send(tool_cancel({"callId": "nobody", "reason": "timeout"}))
        await peer.send(tool_cancel({"reason": "timeout"}))
        await peer.send(tool_cancel({"callId": 1, "reason": "timeout"}))
        await peer.send(tool_cancel({"callId": "c1"}))
        await peer.send(tool_cancel("c1"))
        await peer.send({"type": "control", "payload": {"action": "tool_cancel"}})
        await peer.assistant("still running")
        release.set()
        async with asyncio.timeout(PATIENCE):
            await returned.wait()
        # The handler returned: its result is on its way when this cancel is sent.
        await peer.send(tool_cancel({"callId": "c1", "reason": "timeout"}))
        await peer.recv_type("tool_result")
        await peer.send(tool_cancel({"callId": "c1", "reason": "turn_ended"}))  # long finished
        await peer.result()

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[gate]).create_session()
        await session.send("go")
        messages = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert [type(m) for m in messages] == [AssistantMessage, ResultMessage]
    assert answered(peer) == ["c1"]
    assert sent(peer, "tool_result")[0]["payload"]["result"]["content"][0]["text"] == "opened"
    assert [frame["type"] for frame in peer.received] == ["init", "user", "tool_result"]


async def test_tool_cancel_of_a_sync_handler_discards_its_late_value() -> None:
    entered = threading.Event()
    release = threading.Event()
    finished_thread = threading.Event()
    finished = asyncio.Event()

    @tool("blocking", "Blocks a worker thread")
    def blocking() -> str:
        entered.set()
        release.wait(PATIENCE)
        finished_thread.set()
        return "late"

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "blocking"))
        await asyncio.to_thread(entered.wait, PATIENCE)
        await peer.send(tool_cancel({"callId": "c1", "reason": "interrupted"}))
        await peer.send(interrupted_result())  # the turn goes on (and ends) without the value
        await peer.recv_type("user")
        await peer.result("second turn")

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[blocking]).create_session()
        await session.send("one")
        first = await read_turn(session)
        assert not finished_thread.is_set()  # the thread still runs
        release.set()
        await asyncio.to_thread(finished_thread.wait, PATIENCE)
        await session.send("two")  # a round trip: time for a (wrongly) forwarded late value
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert first[-1]["subtype"] == "error_during_execution"
    assert second[-1]["result"] == "second turn"
    assert answered(peer) == []


# --- interrupt() --------------------------------------------------------------------------------


async def test_interrupt_cancels_running_handlers_and_sends_no_result() -> None:
    waiter = Waiter()
    finished = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await peer.send(tool_call("c2", "wait", {"name": "c2"}))
        await peer.assistant("calling two tools")
        control = await peer.recv_type("control")
        assert control["payload"] == {"action": "interrupt"}
        await peer.send(interrupted_result())
        await peer.recv_type("user")
        await peer.send(tool_call("c3", "echo", {"text": "after"}))
        answer = await peer.recv_type("tool_result")
        await peer.result(answer["payload"]["result"]["content"][0]["text"])

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[waiter.tool, echo]).create_session()
        await session.send("one")
        first: list[SDKMessage] = []
        async with asyncio.timeout(PATIENCE):
            async for message in session.stream():
                first.append(message)
                if isinstance(message, AssistantMessage):
                    await waiter.until_entered("c1", "c2")
                    await session.interrupt()
                    # Cancelled at once, before the server even answered the interrupt.
                    await waiter.until_cleaned("c1", "c2")
        await session.send("two")
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert sorted(waiter.cancelled) == ["c1", "c2"]
    assert first[-1]["subtype"] == "error_during_execution"
    assert second[-1]["result"] == "after"
    assert [frame["payload"] for frame in sent(peer, "control")] == [{"action": "interrupt"}]
    assert answered(peer) == ["c3"]


async def test_interrupt_before_the_first_send_does_nothing() -> None:
    session = client("ws://127.0.0.1:9/ws").create_session()
    await session.interrupt()  # no socket, nothing to stop
    await session.close()


# --- the other ways a turn ends -----------------------------------------------------------------


async def test_the_turn_result_cancels_its_handlers_but_not_the_next_turns() -> None:
    """A server without tool_cancel (the hosted service) ends the turn while a handler runs,
    e.g. after its own tool timeout: the handler is cancelled and never answers. The tool call
    of the queued next turn, arriving right behind that result, runs and is answered."""
    waiter = Waiter()
    finished = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.recv_type("user")  # the second turn, queued
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await waiter.until_entered("c1")
        await peer.result("first")
        await peer.send(tool_call("c2", "echo", {"text": "second"}))
        answer = await peer.recv_type("tool_result")
        await peer.result(answer["payload"]["result"]["content"][0]["text"])

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[waiter.tool, echo]).create_session()
        await session.send("one")
        await session.send("two")
        first = await read_turn(session)
        await waiter.until_cleaned("c1")
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert waiter.cancelled == ["c1"]
    assert (first[-1]["result"], second[-1]["result"]) == ("first", "second")
    assert answered(peer) == ["c2"]


async def test_an_error_frame_ending_the_turn_cancels_its_handlers() -> None:
    waiter = Waiter()
    finished = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await waiter.until_entered("c1")
        await peer.send(
            {
                "type": "error",
                "payload": {"message": "provider unavailable", "code": "PROVIDER_ERROR"},
            }
        )
        await peer.recv_type("user")
        await peer.result("second")

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[waiter.tool]).create_session()
        await session.send("one")
        first = await read_turn(session)
        await waiter.until_cleaned("c1")
        await session.send("two")
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert waiter.cancelled == ["c1"]
    assert isinstance(first[-1], ErrorMessage)
    assert isinstance(first[-1].exception, ProviderError)
    assert second[-1]["result"] == "second"
    assert answered(peer) == []


async def test_an_error_frame_outside_a_turn_cancels_nothing() -> None:
    """An error about a frame we sent ends no turn; a call that somehow runs is left alone."""
    release = asyncio.Event()
    finished = asyncio.Event()

    @tool("gate", "Waits for the test's go")
    async def gate() -> str:
        await release.wait()
        return "opened"

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.result("turn over")
        await peer.send(tool_call("c1", "gate"))  # out of place, but it must be answered
        await peer.send(
            {"type": "error", "payload": {"message": "invalid frame", "code": "VALIDATION_ERROR"}}
        )
        await peer.recv_type("user")
        release.set()
        answer = await peer.recv_type("tool_result")
        await peer.result(answer["payload"]["result"]["content"][0]["text"])

    async with fake_server(recording(script, finished)) as server:
        session = client(server.url, tools=[gate]).create_session()
        await session.send("one")
        await read_turn(session)
        await session.send("two")
        second = await read_turn(session)
        await session.close()
        await closed(finished)
        peer = server.peers[0]
    assert second[-1]["result"] == "opened"
    assert answered(peer) == ["c1"]


async def test_losing_the_connection_cancels_running_handlers() -> None:
    waiter = Waiter()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.send(tool_call("c1", "wait", {"name": "c1"}))
        await waiter.until_entered("c1")
        await peer.ws.close(1011, "crashed")

    async with fake_server(script) as server:
        session = client(server.url, tools=[waiter.tool]).create_session()
        await session.send("one")
        with pytest.raises(ConnectionError):
            await read_turn(session)
        await waiter.until_cleaned("c1")  # without waiting for close()
        await session.close()
    assert waiter.cancelled == ["c1"]
