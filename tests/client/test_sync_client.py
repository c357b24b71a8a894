"""The blocking client (:class:`chucky.SyncChucky`): one async implementation under a sync face.

The server runs in a thread of its own (:func:`threaded_server`), so the tests' own thread may
block -- and may even run an event loop, as Jupyter does.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from support.timing import ticks

import chucky.client.events
from chucky import (
    AuthenticationError,
    Chucky,
    InvalidStateError,
    ResultMessage,
    Session,
    SessionNotFoundError,
    SyncChucky,
    SyncSession,
    create_budget,
    create_token,
    tool,
)
from chucky.client.portal import LoopPortal, SyncIterator, SyncProxy, to_sync
from chucky.testing import ScriptedServer, scripted_server

WAIT = ticks(100)  # generous: a blocking call that never returns fails the test, not hangs it


@pytest.fixture
def threaded_server() -> Iterator[ScriptedServer]:
    """A scripted-model server on its own event loop, in its own thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        async with scripted_server() as server:
            box["server"] = server
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported by the fixture
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="test-server")
    thread.start()
    assert ready.wait(WAIT)
    if "error" in box:  # pragma: no cover
        raise box["error"]
    try:
        yield box["server"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(WAIT)
        assert not thread.is_alive()


def sync_client(server: ScriptedServer, **options: Any) -> SyncChucky:
    return SyncChucky(server.token(), server.url, **options)


def _socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:  # closed while listing
            pass
    return count


def _eventually(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(ticks(1))


# -- plain use ---------------------------------------------------------------------------------


def test_prompt_stream_and_a_session_without_await(threaded_server: ScriptedServer) -> None:
    with sync_client(threaded_server) as client:
        result = client.prompt("echo hello")
        assert result.result == "hello"
        assert result["subtype"] == "success"

        events = list(client.stream("stream 3", include_partial_messages=True))
        assert [e.data for e in events if e.type == "message"] == ["00 ", "01 ", "02 "]
        assert [e.type for e in events[-2:]] == ["result", "done"]

        with client.create_session() as session:
            assert isinstance(session, SyncSession)
            session.send("my name is Ada")
            first = list(session.stream())
            assert isinstance(first[-1], ResultMessage)
            session.send("recall")
            assert list(session.receive())[-1]["result"] == "my name is Ada"
            session_id = session.session_id
        assert session_id is not None

        resumed = client.resume_session(session_id)
        resumed.send("recall")
        assert list(resumed.stream())[-1]["result"] == "my name is Ada"
        resumed.close()


def test_errors_are_the_typed_chucky_errors(threaded_server: ScriptedServer) -> None:
    forged = create_token(
        "test-user", threaded_server.project_id, "hk_live_" + "0" * 32, create_budget(1, 1)
    )
    with SyncChucky(forged, threaded_server.url) as client:
        with pytest.raises(AuthenticationError):
            client.prompt("echo hi")
        with pytest.raises(AuthenticationError):
            list(client.stream("echo hi"))
    with pytest.raises(InvalidStateError, match="closed"):
        client.prompt("echo hi")


# -- inside a running event loop -----------------------------------------------------------------


async def test_works_in_a_thread_whose_event_loop_is_running(
    threaded_server: ScriptedServer,
) -> None:
    # As in Jupyter or a FastAPI handler: this coroutine's loop is running and blocked here.
    asyncio.get_running_loop()
    with sync_client(threaded_server) as client:
        assert client.prompt("echo inside").result == "inside"
        assert [e.type for e in client.stream("echo streamed")][-1] == "done"


def test_an_async_tool_calling_its_own_sync_client_gets_an_error_not_a_deadlock(
    threaded_server: ScriptedServer,
) -> None:
    client = sync_client(threaded_server)

    @tool("reenter", "Calls the sync client from the client's own loop.")
    async def reenter() -> str:
        try:
            client.prompt("echo nested")
        except InvalidStateError as exc:
            return f"refused: {exc}"
        return "ran"  # pragma: no cover

    with client:
        result = client.prompt("call reenter {}", tools=[reenter])
    assert result.result is not None
    assert result.result.startswith("tool reenter returned: refused: a sync chucky client")


# -- threads -------------------------------------------------------------------------------------


def test_eight_threads_share_one_client(threaded_server: ScriptedServer) -> None:
    barrier = threading.Barrier(8)
    results: dict[int, tuple[str | None, str]] = {}
    errors: list[BaseException] = []

    def work(i: int, client: SyncChucky) -> None:
        try:
            barrier.wait(WAIT)
            answer = client.prompt(f"sleep 0.05; echo {i}").result
            streamed = "".join(
                str(e.data)
                for e in client.stream(f"echo s{i}", include_partial_messages=True)
                if e.type == "message"
            )
            results[i] = (answer, streamed)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with sync_client(threaded_server) as client:
        threads = [threading.Thread(target=work, args=(i, client)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert errors == []
    assert results == {i: (str(i), f"s{i}") for i in range(8)}


# -- tools ---------------------------------------------------------------------------------------


def test_sync_and_async_tools_and_a_sync_one_does_not_block_the_loop(
    threaded_server: ScriptedServer,
) -> None:
    flag = threading.Event()
    threads: dict[str, str] = {}

    @tool("wait_for_flag", "Blocks until set_flag runs.")
    def wait_for_flag() -> str:
        threads["sync"] = threading.current_thread().name
        # Were this handler run on the client's loop, set_flag (async, on that loop) could
        # not run until it returned.
        return "flag seen" if flag.wait(WAIT) else "flag never set"

    @tool("set_flag", "Sets the flag.")
    async def set_flag() -> str:
        threads["async"] = threading.current_thread().name
        await asyncio.sleep(ticks(2))
        flag.set()
        return "flag set"

    with sync_client(threaded_server) as client:
        result = client.prompt(
            "call wait_for_flag {}; call set_flag {}", tools=[wait_for_flag, set_flag]
        )
    assert result.result == (
        "tool wait_for_flag returned: flag seen; tool set_flag returned: flag set"
    )
    assert threads["async"] == "chucky-sync"
    assert threads["sync"].startswith("chucky-sync-tool")


# -- breaking out early --------------------------------------------------------------------------


def test_breaking_out_of_a_stream_closes_its_session(threaded_server: ScriptedServer) -> None:
    with sync_client(threaded_server) as client:
        sessions = client.client._sessions
        with client.stream("sleep 0.2; stream 200", include_partial_messages=True) as events:
            for event in events:
                assert event.type == "message"
                break
            assert len(sessions) == 1
        assert sessions == set()  # closed on leaving the with block: the turn is interrupted

        for _event in client.stream("stream 200", include_partial_messages=True):
            break
        # As after an async for: the dropped generator is closed on the client's loop.
        _eventually(lambda: not sessions, "the session of an abandoned stream stays open")


def test_stopping_a_session_stream_early_loses_nothing(threaded_server: ScriptedServer) -> None:
    with (
        sync_client(threaded_server) as client,
        client.create_session(include_partial_messages=True) as session,
    ):
        session.send("stream 10")
        head = []
        for message in session.stream():
            head.append(message)
            if len(head) == 3:
                break
        rest = list(session.stream())
        assert isinstance(rest[-1], ResultMessage)
        text = "".join(getattr(m, "text_delta", None) or "" for m in [*head, *rest])
        assert text == "".join(f"{i:02d} " for i in range(10))


# -- closing -------------------------------------------------------------------------------------


def test_close_leaves_no_thread_and_no_socket(threaded_server: ScriptedServer) -> None:
    threads_before = set(threading.enumerate())
    sockets_before = _socket_fds()

    @tool("slow_sync", "A sync tool.")
    def slow_sync() -> str:
        time.sleep(ticks(1))
        return "done"

    client = sync_client(threaded_server)
    assert client.prompt("call slow_sync {}", tools=[slow_sync]).result == (
        "tool slow_sync returned: done"
    )
    session = client.create_session()
    session.send("echo left open")  # a session still open when the client closes
    assert len(set(threading.enumerate()) - threads_before) >= 2  # loop + a tool worker
    assert _socket_fds() > sockets_before

    client.close()
    client.close()  # idempotent
    assert set(threading.enumerate()) == threads_before
    assert session.state.value == "closed"
    session.close()  # a no-op once the client is closed
    # The server's ends of the sockets close in the server's thread, soon after.
    _eventually(lambda: _socket_fds() == sockets_before, "a socket outlived the client")
    with pytest.raises(InvalidStateError):
        client.create_session()


def test_a_bad_argument_starts_no_thread() -> None:
    threads_before = set(threading.enumerate())
    with pytest.raises(Exception, match="token is required"):
        SyncChucky(None, "ws://127.0.0.1:1/ws")
    assert set(threading.enumerate()) == threads_before


# -- the generic sync face -----------------------------------------------------------------------


class _Stream:
    """The shape of a newer async API: an async context manager that iterates, with a
    coroutine method for the final value."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.entered = self.exited = False

    async def __aenter__(self) -> _Stream:
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    def __aiter__(self) -> AsyncIterator[int]:
        return self._numbers()

    async def _numbers(self) -> AsyncIterator[int]:
        for i in range(self.n):
            await asyncio.sleep(0)
            yield i

    @property
    def text_stream(self) -> AsyncIterator[str]:
        return self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        for i in range(self.n):
            yield str(i)

    async def final(self) -> str:
        assert asyncio.get_running_loop()  # runs on the client's loop
        return f"{self.n} numbers"


def test_methods_added_to_chucky_get_a_sync_face(  # the ones without a sync method of their own
    threaded_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def reply(self: Chucky, message: str) -> str:
        return (await self.prompt(message)).result or ""

    async def text_stream(self: Chucky, n: int) -> AsyncIterator[str]:
        async for event in self.stream(f"stream {n}", include_partial_messages=True):
            if event.type == "message":
                yield str(event.data)

    def event_stream(self: Chucky, n: int) -> _Stream:
        return _Stream(n)

    async def open_session(self: Chucky) -> Session:
        return self.create_session()

    for name, method in [
        ("reply", reply),
        ("text_stream", text_stream),
        ("event_stream", event_stream),
        ("open_session", open_session),
    ]:
        monkeypatch.setattr(Chucky, name, method, raising=False)

    with sync_client(threaded_server) as client:
        sync: Any = client
        assert sync.reply("echo hi") == "hi"
        assert list(sync.text_stream(3)) == ["00 ", "01 ", "02 "]
        with sync.event_stream(3) as stream:
            assert isinstance(stream, SyncProxy)
            assert list(stream) == [0, 1, 2]
            assert list(stream.text_stream) == ["0", "1", "2"]
            assert stream.final() == "3 numbers"
            assert stream.n == 3
        with sync.open_session() as session:
            assert isinstance(session, SyncSession)
            session.send("echo in a session")
            assert list(session.stream())[-1]["result"] == "in a session"
        with pytest.raises(AttributeError):
            sync.no_such_method  # noqa: B018


def test_to_sync_leaves_plain_values_alone() -> None:
    portal = LoopPortal()
    try:
        assert to_sync(3, portal) == 3
        assert to_sync({"a": 1}, portal) == {"a": 1}
        assert isinstance(to_sync(_Stream(1)._numbers(), portal), SyncIterator)
    finally:
        portal.close()


# -- the other client styles, without await (issue 12) ---------------------------------------


def test_chat_text_and_chunks_without_await(threaded_server: ScriptedServer) -> None:
    with sync_client(threaded_server) as client:
        assert isinstance(client, SyncChucky)
        assert client.chat("echo hi") == "hi"
        history = [
            {"role": "user", "content": "echo first question"},
            {"role": "assistant", "content": "first question"},
            {"role": "user", "content": "recall"},
        ]
        assert client.chat(history) == "echo first question"
        assert list(client.stream_text("stream 3")) == ["00 ", "01 ", "02 "]
        seen: list[str] = []
        chunks = list(client.converse("call t {}", on_tool_call=lambda c: seen.append(c.name)))
        assert [c.type for c in chunks][-1] == "done"
        assert seen == ["t"]
        session_id = chunks[-1].session_id
        assert client.clear_session(session_id) is True
        with pytest.raises(SessionNotFoundError):
            client.chat("recall", session_id=session_id)


def test_the_stream_object_in_a_with_block(threaded_server: ScriptedServer) -> None:
    with sync_client(threaded_server) as client:
        with client.stream_events("stream 3", include_partial_messages=True) as stream:
            events = list(stream)
        assert [e.text for e in events if isinstance(e, chucky.client.events.TextDelta)] == [
            "00 ",
            "01 ",
            "02 ",
        ]
        assert isinstance(events[-1], chucky.client.events.TurnResult)
        with client.stream_events("stream 3", include_partial_messages=True) as stream:
            assert list(stream.text_stream) == ["00 ", "01 ", "02 "]
            assert stream.get_final_result().result == "00 01 02 "
        # Left early: the turn is interrupted, the client goes on.
        with client.stream_events("sleep 30; echo late") as stream:
            pass
        assert client.chat("echo after") == "after"
