"""Automatic reconnect (issue 13): the client against a scripted seq server behind a TCP proxy
the test cuts, stalls and refuses. Nothing lost, nothing repeated, no handler run twice; the
attempts, the tokens, the typed ways of giving up; the old behaviour where it must stay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support.fake_server import (
    READY,
    Peer,
    SeqLog,
    assistant_frame,
    delta_frame,
    fake_server,
    result_frame,
    tool_call_frame,
)
from support.proxy import TcpProxy
from support.timing import ticks
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chucky import (
    AuthenticationError,
    Chucky,
    ConnectionError,
    SessionNotFoundError,
    SyncChucky,
    ValidationError,
    tool,
)
from chucky.client.reconnect import ReconnectEvent
from chucky.client.session import Session, SessionState
from chucky.messages import (
    AssistantMessage,
    ErrorMessage,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
)

TOKEN = "header.payload.signature"
PATIENCE = ticks(200)

Handler = Callable[[Peer], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Response | None]


@asynccontextmanager
async def behind_proxy(
    handler: Handler, process_request: ProcessRequest | None = None
) -> AsyncIterator[TcpProxy]:
    """The scripted server, and a proxy in front of it (connect to ``proxy.url()``)."""
    async with fake_server(handler, process_request=process_request) as server:
        port = urlsplit(server.url).port
        assert port is not None
        async with TcpProxy("127.0.0.1", port) as proxy:
            yield proxy


def client(proxy: TcpProxy, events: list[ReconnectEvent] | None = None, **options: Any) -> Chucky:
    options.setdefault("reconnect_backoff", 0.001)
    if events is not None:
        options["on_reconnect"] = events.append
    return Chucky(TOKEN, proxy.url(), **options)


def outcomes(events: list[ReconnectEvent]) -> list[tuple[str, int]]:
    return [(event.outcome, event.attempt) for event in events]


def text_of(message: SDKMessage) -> str:
    if isinstance(message, StreamEventMessage):
        return f"delta:{message.text_delta}"
    if isinstance(message, AssistantMessage):
        return f"assistant:{message.text}"
    if isinstance(message, ResultMessage):
        return f"result:{message.result}"
    if isinstance(message, ErrorMessage):
        return f"error:{message.exception.message}"
    return type(message).__name__


async def read_turn(
    session: Session, on_message: Callable[[SDKMessage], None] | None = None
) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(PATIENCE):
        async for message in session.stream():
            seen.append(text_of(message))
            if on_message is not None:
                on_message(message)
    return seen


async def forever(peer: Peer) -> None:
    """Keep a connection open, answering pings, until it is closed."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await peer.recv_type("never", within=3600)


# -- replay -----------------------------------------------------------------------------------


async def test_a_cut_mid_turn_is_resumed_and_nothing_is_lost_or_repeated() -> None:
    log = SeqLog()
    cut = asyncio.Event()
    acked = asyncio.Event()
    turn_ids: list[str] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            assert "seq" in init["chuckyExtensions"]
            await log.session_info(peer)
            turn_ids.append((await peer.recv_type("user"))["turnId"])
            for index in range(5):
                await log.send(peer, delta_frame(f"{index} ", f"ev-{index}"))
            await cut.wait()
            # What the server sends after the cut reaches nobody: its replay buffer keeps it.
            for index in range(5, 10):
                await log.send(None, delta_frame(f"{index} ", f"ev-{index}"))
            await log.send(None, assistant_frame("0 to 9", "a-1"))
            await log.send(None, result_frame("counted", "r-1"))
            return
        log.resumes.append(init)

        async def resent_turn() -> None:
            turn_ids.append((await peer.recv_type("user"))["turnId"])

        # A server that repeats the two frames before lastSeq: the client drops them.
        await log.resumed(peer, init["lastSeq"], overlap=2, then=resent_turn)
        log.read_acks(await peer.recv_type("control"))
        acked.set()
        await forever(peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("count to 9")

        def cut_after_four(message: SDKMessage) -> None:
            if isinstance(message, StreamEventMessage) and message.text_delta == "4 ":
                proxy.cut()
                cut.set()

        seen = await read_turn(session, cut_after_four)
        async with asyncio.timeout(PATIENCE):
            await acked.wait()
        assert session.state is SessionState.OPEN
    assert seen == [
        *(f"delta:{index} " for index in range(10)),
        "assistant:0 to 9",
        "result:counted",
    ]
    assert log.resumes[0]["lastSeq"] == 6  # session_info and five deltas
    assert "messages" not in log.resumes[0] and log.resumes[0]["sessionId"] == "sess-1"
    assert turn_ids[0] == turn_ids[1]  # the turn sent again, with its id
    assert log.acks == [13]
    assert outcomes(events) == [("reconnecting", 1), ("resumed", 1)]
    assert events[1].replayed == 9  # 7 frames after lastSeq, 2 repeated
    assert isinstance(events[0].error, ConnectionError)


@pytest.mark.parametrize("where", ["resumed", "replay"])
async def test_a_cut_during_the_resume_is_resumed_again(where: str) -> None:
    """Chaos: the first resume's socket is cut mid-handshake (in the resumed frame) or
    mid-replay (in a replayed delta); the second resume goes on from what arrived."""
    log = SeqLog()
    cut = asyncio.Event()

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer)
            await peer.recv_type("user")
            await log.send(peer, delta_frame("first ", "ev-0"))
            await cut.wait()
            for index in range(1, 30):
                await log.send(None, delta_frame(f"d{index:02} ", f"ev-{index}"))
            await log.send(None, result_frame("end", "r-1"))
            return
        log.resumes.append(init)

        async def resent_turn() -> None:
            # The replay goes after the client's answer: never in the chunk of "resumed".
            await peer.recv_type("user")

        with contextlib.suppress(ConnectionClosed):
            await log.resumed(peer, init["lastSeq"], then=resent_turn)
            await forever(peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("go")

        def cut_first(message: SDKMessage) -> None:
            if isinstance(message, StreamEventMessage) and message.text_delta == "first ":
                marker = b'"resumed"' if where == "resumed" else b"d15 "
                proxy.cut_when(lambda direction, data: direction == "down" and marker in data)
                proxy.cut()
                cut.set()

        seen = await read_turn(session, cut_first)
    assert seen == [
        "delta:first ",
        *(f"delta:d{index:02} " for index in range(1, 30)),
        "result:end",
    ]
    assert len(log.resumes) == 2
    assert log.resumes[0]["lastSeq"] == 2
    if where == "resumed":
        assert log.resumes[1]["lastSeq"] == 2
        assert outcomes(events) == [("reconnecting", 1), ("reconnecting", 2), ("resumed", 2)]
    else:
        assert 2 <= log.resumes[1]["lastSeq"] < 17  # what arrived of the first replay
        assert [e.outcome for e in events] == ["reconnecting", "resumed"] * 2


async def test_replay_unavailable_resends_the_turn_and_drops_what_was_delivered() -> None:
    log = SeqLog()
    cut = asyncio.Event()
    turn_ids: list[str] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer, model="first")
            turn_ids.append((await peer.recv_type("user"))["turnId"])
            await log.send(peer, assistant_frame("part one", "a-1"))
            await cut.wait()
            return
        log.resumes.append(init)
        await log.replay_unavailable(peer, init["lastSeq"])
        await log.session_info(peer, model="reopened")  # a new numbering: seq 1
        turn_ids.append((await peer.recv_type("user"))["turnId"])
        # The turn ended meanwhile: its stored messages and its result, with their uuids.
        await log.send(peer, assistant_frame("part one", "a-1"))
        await log.send(peer, assistant_frame("part two", "a-2"))
        await log.send(peer, result_frame("both parts", "r-1"))
        await forever(peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("two parts")

        def cut_after_part_one(message: SDKMessage) -> None:
            if isinstance(message, AssistantMessage):
                proxy.cut()
                cut.set()

        seen = await read_turn(session, cut_after_part_one)
        assert session.info["model"] == "reopened"
    assert seen == ["assistant:part one", "assistant:part two", "result:both parts"]
    assert turn_ids[0] == turn_ids[1]
    assert log.resumes[0]["lastSeq"] == 2
    assert outcomes(events) == [("reconnecting", 1), ("replay_unavailable", 1)]


# -- attempts, tokens and giving up ------------------------------------------------------------


async def first_turn_then_wait(log: SeqLog, peer: Peer) -> None:
    await log.session_info(peer)
    await peer.recv_type("user")
    await log.send(peer, delta_frame("before ", "ev-0"))
    await forever(peer)


async def cut_at_first_delta(proxy: TcpProxy, session: Session, *, refuse: bool = False) -> None:
    """Read the turn up to its first delta, then cut (refusing new connections if asked)."""
    async with asyncio.timeout(PATIENCE):
        async for message in session.stream():
            assert isinstance(message, StreamEventMessage)
            break
    if refuse:
        proxy.refuse(True)
    proxy.cut()


async def test_attempts_are_counted_and_giving_up_raises_a_typed_connection_error() -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await first_turn_then_wait(log, peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy:
        async with client(proxy, events, max_reconnect_attempts=3) as chucky:
            session = chucky.create_session()
            await session.send("hi")
            await cut_at_first_delta(proxy, session, refuse=True)
            with pytest.raises(ConnectionError) as caught:
                await read_turn(session)
        assert proxy.refused == 3 and proxy.accepted == 4
    error = caught.value
    assert error.reason == "reconnect_failed"
    assert error.details["attempts"] == 3
    assert isinstance(error.__cause__, ConnectionError)
    assert outcomes(events) == [
        ("reconnecting", 1),
        ("reconnecting", 2),
        ("reconnecting", 3),
        ("failed", 3),
    ]
    assert events[-1].error is error


@pytest.mark.parametrize("provider_kind", ["sync", "async"])
async def test_each_attempt_takes_a_fresh_token_from_the_provider(provider_kind: str) -> None:
    log = SeqLog()
    tokens: list[str] = []

    def check_token(connection: ServerConnection, request: Request) -> Response | None:
        token = parse_qs(urlsplit(request.path).query)["token"][0]
        assert request.headers["Authorization"] == f"Bearer {token}"
        tokens.append(token)
        if token == "tok-2":  # a server restarting: worth another attempt
            return connection.respond(503, "restarting")
        return None

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    calls = 0

    def sync_provider() -> str:
        nonlocal calls
        calls += 1
        return f"tok-{calls}"

    async def async_provider() -> str:
        return sync_provider()

    provider = sync_provider if provider_kind == "sync" else async_provider
    events: list[ReconnectEvent] = []
    async with behind_proxy(handler, check_token) as proxy:
        chucky = Chucky(
            url=proxy.url(),
            token_provider=provider,
            reconnect_backoff=0.001,
            on_reconnect=events.append,
        )
        async with chucky:
            session = chucky.create_session()
            await session.send("hi")
            await cut_at_first_delta(proxy, session)
            assert await read_turn(session) == ["result:done"]
    assert tokens == ["tok-1", "tok-2", "tok-3"]
    assert outcomes(events) == [("reconnecting", 1), ("reconnecting", 2), ("resumed", 2)]


async def test_a_401_on_reconnect_raises_authentication_error_without_retrying() -> None:
    log = SeqLog()
    connections = 0

    def expire_the_token(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal connections
        connections += 1
        if connections == 1:
            return None
        body = {"error": {"message": "Unauthorized: token expired", "code": "AUTHENTICATION_ERROR"}}
        response = connection.respond(401, json.dumps(body))
        return response

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await first_turn_then_wait(log, peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler, expire_the_token) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        with pytest.raises(AuthenticationError) as caught:
            await read_turn(session)
        assert session.state is SessionState.OPEN  # given up: not RECONNECTING
    assert connections == 2
    assert caught.value.details["status"] == 401
    assert outcomes(events) == [("reconnecting", 1), ("failed", 1)]


@pytest.mark.parametrize(
    ("code", "reason", "before_ready", "cls"),
    [
        ("AUTHENTICATION_ERROR", "token_expired", True, AuthenticationError),
        ("SESSION_ERROR", "session_not_found", False, SessionNotFoundError),
    ],
)
async def test_a_refused_resume_is_not_retried(
    code: str, reason: str, before_ready: bool, cls: type[Exception]
) -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        if not log.frames:
            await peer.handshake()
            await first_turn_then_wait(log, peer)
            return
        if not before_ready:
            await peer.handshake()
        payload = {"message": "refused", "code": code, "details": {"reason": reason}}
        await peer.send({"type": "error", "payload": payload})
        await peer.ws.close(1008, "refused")

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy:
        async with client(proxy, events) as chucky:
            session = chucky.create_session()
            await session.send("hi")
            await cut_at_first_delta(proxy, session)
            with pytest.raises(cls):
                await read_turn(session)
        assert proxy.accepted == 2
    assert outcomes(events) == [("reconnecting", 1), ("failed", 1)]


async def test_a_busy_session_is_tried_again() -> None:
    log = SeqLog()
    resumes = 0

    async def handler(peer: Peer) -> None:
        nonlocal resumes
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        resumes += 1
        if resumes == 1:
            payload = {
                "message": "session busy",
                "code": "SESSION_ERROR",
                "details": {"reason": "session_busy"},
            }
            await peer.send({"type": "error", "payload": payload})
            await forever(peer)  # the client drops this socket itself
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        assert await read_turn(session) == ["result:done"]
    assert outcomes(events) == [("reconnecting", 1), ("reconnecting", 2), ("resumed", 2)]


# -- when the client does not reconnect --------------------------------------------------------


async def wait_reader(session: Session) -> None:
    conn = session._conn
    assert conn is not None and conn._reader is not None
    async with asyncio.timeout(PATIENCE):
        await asyncio.gather(conn._reader, return_exceptions=True)


async def test_a_clean_close_by_the_server_is_not_resumed() -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await log.session_info(peer)
        await peer.recv_type("user")
        await log.send(peer, result_frame("bye", "r-1"))
        await log.send(peer, {"type": "control", "payload": {"action": "close"}})
        await peer.ws.close(1000)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        assert await read_turn(session) == ["result:bye"]
        await wait_reader(session)
        with pytest.raises(ConnectionError):
            await session.send("again")
        assert proxy.accepted == 1 and events == []


async def test_a_fatal_error_and_1008_is_not_resumed() -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await log.session_info(peer)
        await peer.recv_type("user")
        payload = {"message": "budget exceeded", "code": "BUDGET_EXCEEDED"}
        await log.send(peer, {"type": "error", "payload": payload})
        await peer.ws.close(1008, "budget exceeded")

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        seen = await read_turn(session)
        assert seen == ["error:budget exceeded"]
        await wait_reader(session)
        assert proxy.accepted == 1 and events == []


async def test_closing_the_session_does_not_reconnect() -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await first_turn_then_wait(log, peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        async with asyncio.timeout(PATIENCE):
            async for _ in session.stream():
                break
        await session.close()
        await proxy.wait_live(0)
        assert proxy.accepted == 1 and events == []


async def test_a_server_that_does_not_number_its_frames_keeps_the_old_behaviour() -> None:
    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        assert "seq" in init["chuckyExtensions"]  # announced, not accepted
        await peer.recv_type("user")
        await peer.send(delta_frame("plain ", "ev-0"))
        await forever(peer)

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy, client(proxy, events) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        with pytest.raises(ConnectionError, match="no close frame"):
            await read_turn(session)
        assert proxy.accepted == 1 and events == []


async def test_reconnect_false_announces_no_seq_and_does_not_reconnect() -> None:
    log = SeqLog()
    inits: list[dict[str, Any]] = []

    async def handler(peer: Peer) -> None:
        inits.append(await peer.handshake())
        await first_turn_then_wait(log, peer)  # a server that numbers anyway

    async with behind_proxy(handler) as proxy, client(proxy, reconnect=False) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        with pytest.raises(ConnectionError):
            await read_turn(session)
        assert proxy.accepted == 1
    assert inits[0]["chuckyExtensions"] == ["interrupt", "tool_cancel"]


# -- tools across a reconnect ------------------------------------------------------------------


async def test_a_tool_call_sent_again_is_answered_from_the_cache() -> None:
    log = SeqLog()
    runs: list[str] = []
    results: list[dict[str, Any]] = []

    @tool("lookup", "Looks a key up")
    def lookup(key: str) -> str:
        runs.append(key)
        return f"value of {key}"

    proxy_box: list[TcpProxy] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer)
            await peer.recv_type("user")
            await log.send(peer, tool_call_frame("c1", "lookup", {"key": "k"}))
            results.append((await peer.recv_type("tool_result"))["payload"])
            proxy_box[0].cut()  # the result went out; the connection dies
            return
        # The server did not see the result applied (say): it sends the call again.
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, tool_call_frame("c1", "lookup", {"key": "k"}))
        results.append((await peer.recv_type("tool_result"))["payload"])
        await log.send(peer, result_frame("looked up", "r-1"))
        await forever(peer)

    async with behind_proxy(handler) as proxy, client(proxy, tools=[lookup]) as chucky:
        proxy_box.append(proxy)
        session = chucky.create_session()
        await session.send("look k up")
        assert await read_turn(session) == ["result:looked up"]
    assert runs == ["k"]
    assert results[0] == results[1]
    assert results[0]["callId"] == "c1"
    assert results[0]["result"]["content"] == [{"type": "text", "text": "value of k"}]


async def test_a_result_produced_while_disconnected_is_sent_after_the_resume() -> None:
    log = SeqLog()
    started = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()
    cancelled: list[str] = []
    received: list[dict[str, Any]] = []

    @tool("slow", "Takes its time")
    async def slow() -> str:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise
        finished.set()
        return "late but there"

    proxy_box: list[TcpProxy] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer)
            await peer.recv_type("user")
            await log.send(peer, tool_call_frame("c1", "slow", {}))
            await started.wait()
            proxy_box[0].cut()
            return

        async def the_result() -> None:
            received.append(await peer.recv_type("tool_result"))

        await log.resumed(peer, init["lastSeq"], then=the_result)
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first reconnect attempt: the handler finishes meanwhile
            release.set()
            await finished.wait()
        return TOKEN

    async with behind_proxy(handler) as proxy:
        proxy_box.append(proxy)
        chucky = Chucky(url=proxy.url(), token_provider=provider, tools=[slow])
        async with chucky:
            session = chucky.create_session()
            await session.send("be slow")
            assert await read_turn(session) == ["result:done"]
    assert cancelled == []  # the lost socket did not cancel the handler
    assert received[0]["payload"]["callId"] == "c1"
    assert received[0]["payload"]["result"]["content"][0]["text"] == "late but there"


# -- state, events, sending meanwhile, cancellation --------------------------------------------


async def test_state_is_reconnecting_and_a_turn_or_interrupt_sent_meanwhile_goes_after() -> None:
    log = SeqLog()
    user_frames: list[dict[str, Any]] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer)
            user_frames.append(await peer.recv_type("user"))
            await log.send(peer, delta_frame("before ", "ev-0"))
            await forever(peer)
            return

        async def both_turns() -> None:
            user_frames.append(await peer.recv_type("user"))
            user_frames.append(await peer.recv_type("user"))
            interrupt = await peer.recv_type("control")
            assert interrupt["payload"]["action"] == "interrupt"

        await log.resumed(peer, init["lastSeq"], then=both_turns)
        await log.send(peer, result_frame("first", "r-1"))
        await log.send(peer, result_frame("second", "r-2"))
        await forever(peer)

    in_attempt = asyncio.Event()
    go_on = asyncio.Event()
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            in_attempt.set()
            await go_on.wait()
        return TOKEN

    async with (
        behind_proxy(handler) as proxy,
        Chucky(url=proxy.url(), token_provider=provider) as chucky,
    ):
        session = chucky.create_session()
        await session.send("first")
        await cut_at_first_delta(proxy, session)
        async with asyncio.timeout(PATIENCE):
            await in_attempt.wait()
        assert session.state is SessionState.RECONNECTING
        await session.send("second")  # kept, sent once the session is back
        await session.interrupt()  # likewise, after the turns
        go_on.set()
        assert await read_turn(session) == ["result:first"]
        assert await read_turn(session) == ["result:second"]
        assert session.state is SessionState.OPEN
    first, resent, second = user_frames
    assert resent["turnId"] == first["turnId"]
    assert second["message"]["content"] == "second"
    assert second["turnId"] != first["turnId"]


async def test_on_reconnect_may_be_async_and_an_exception_in_it_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    seen: list[str] = []

    async def on_reconnect(event: ReconnectEvent) -> None:
        seen.append(event.outcome)
        raise RuntimeError("a bug in the application's callback")

    async with behind_proxy(handler) as proxy, client(proxy, on_reconnect=on_reconnect) as chucky:
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        with caplog.at_level(logging.ERROR, logger="chucky.client"):
            assert await read_turn(session) == ["result:done"]
    assert seen == ["reconnecting", "resumed"]
    assert "on_reconnect raised" in caplog.text


async def test_cancelling_the_reader_while_reconnecting_leaves_no_task_or_socket() -> None:
    log = SeqLog()
    resume_seen = asyncio.Event()

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        resume_seen.set()
        await forever(peer)  # never answers the resume

    async with behind_proxy(handler) as proxy:
        chucky = client(proxy, timeout=3600)
        session = chucky.create_session()
        await session.send("hi")
        await cut_at_first_delta(proxy, session)
        reading = asyncio.create_task(read_turn(session))
        async with asyncio.timeout(PATIENCE):
            await resume_seen.wait()
        assert session.state is SessionState.RECONNECTING
        assert proxy.live == 1  # the attempt's socket
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await chucky.close()
        await proxy.wait_live(0)
        leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("chucky-")]
        assert leftover == []
        assert session.state is SessionState.CLOSED


async def test_a_keepalive_timeout_is_resumed() -> None:
    """A half-open link: nothing arrives, nothing closes; the keepalive gives the socket up."""
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    events: list[ReconnectEvent] = []

    async with behind_proxy(handler) as proxy:

        def on_reconnect(event: ReconnectEvent) -> None:
            events.append(event)
            proxy.resume()  # the link is back for the new socket

        chucky = client(proxy, keepalive_interval=ticks(2), on_reconnect=on_reconnect)
        async with chucky:
            session = chucky.create_session()
            await session.send("hi")
            async with asyncio.timeout(PATIENCE):
                async for _ in session.stream():
                    break
            proxy.stall()
            assert await read_turn(session) == ["result:done"]
    assert events[0].error is not None and events[0].error.reason == "keepalive_timeout"
    assert outcomes(events) == [("reconnecting", 1), ("resumed", 1)]


# -- arguments ---------------------------------------------------------------------------------


def test_a_token_provider_may_replace_the_token_but_one_of_them_is_needed() -> None:
    Chucky(url="ws://127.0.0.1:1/ws", token_provider=lambda: TOKEN)
    with pytest.raises(ValidationError, match="token_provider"):
        Chucky(url="ws://127.0.0.1:1/ws")
    with pytest.raises(ValidationError, match="callable"):
        Chucky(url="ws://127.0.0.1:1/ws", token_provider="not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{"max_reconnect_attempts": 0}, {"max_reconnect_attempts": 1.5}, {"reconnect_backoff": -1}],
)
def test_invalid_reconnect_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Chucky(TOKEN, "ws://127.0.0.1:1/ws", **options)


def test_the_sync_client_passes_the_reconnect_options_through() -> None:
    events: list[ReconnectEvent] = []
    with SyncChucky(
        url="ws://127.0.0.1:1/ws",
        token_provider=lambda: TOKEN,
        max_reconnect_attempts=2,
        reconnect_backoff=0.5,
        on_reconnect=events.append,
    ) as sync_client:
        policy = sync_client.client._settings.reconnect
        assert policy is not None
        assert (policy.max_attempts, policy.backoff, policy.on_reconnect) == (
            2,
            0.5,
            events.append,
        )
    with SyncChucky(TOKEN, "ws://127.0.0.1:1/ws", reconnect=False) as sync_client:
        assert sync_client.client._settings.reconnect is None


async def test_ready_first_handshake_is_unchanged_for_a_non_resume() -> None:
    """The T dialect still works with seq on: init first, ready after it."""

    async def handler(peer: Peer) -> None:
        init = await peer.recv()
        assert init["type"] == "init" and "lastSeq" not in init["payload"]
        await peer.send(READY)
        turn = await peer.recv_type("user")
        assert isinstance(turn["turnId"], str)
        await peer.result("ok")

    async with behind_proxy(handler) as proxy, client(proxy) as chucky:
        assert (await chucky.prompt("hi")).result == "ok"


async def test_after_replay_unavailable_results_kept_are_dropped_and_running_calls_cancelled() -> (
    None
):
    """The server opened the session again from its store: the calls of the turn as it was
    are no longer waited for (a result for a call that server never sent would be an error)."""
    log = SeqLog()
    both_started = asyncio.Event()
    quick_done = asyncio.Event()
    started: list[str] = []
    cancelled: list[str] = []
    after_resume: list[dict[str, Any]] = []

    @tool("quick", "Returns while the socket is gone")
    async def quick() -> str:
        started.append("quick")
        if len(started) == 2:
            both_started.set()
        await release.wait()
        quick_done.set()
        return "too late"

    @tool("stuck", "Never returns")
    async def stuck() -> str:
        started.append("stuck")
        if len(started) == 2:
            both_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise
        return "never"

    release = asyncio.Event()
    proxies: list[TcpProxy] = []

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await log.session_info(peer)
            await peer.recv_type("user")
            await log.send(peer, tool_call_frame("c1", "quick", {}))
            await log.send(peer, tool_call_frame("c2", "stuck", {}))
            await both_started.wait()
            proxies[0].cut()
            return
        await log.replay_unavailable(peer, init["lastSeq"])
        await log.session_info(peer)
        await peer.recv_type("user")  # the turn, sent again
        await log.send(peer, result_frame("from the store", "r-1"))
        while True:  # everything up to the ack
            frame = await peer.recv()
            after_resume.append(frame)
            if frame["type"] == "control" and frame["payload"]["action"] == "ack":
                break
        await peer.ws.wait_closed()

    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            release.set()
            await quick_done.wait()
        return TOKEN

    async with behind_proxy(handler) as proxy:
        proxies.append(proxy)
        chucky = Chucky(url=proxy.url(), token_provider=provider, tools=[quick, stuck])
        async with chucky:
            session = chucky.create_session()
            await session.send("two tools")
            assert await read_turn(session) == ["result:from the store"]
    assert sorted(started) == ["quick", "stuck"]
    assert cancelled == ["stuck"]
    assert [frame["type"] for frame in after_resume] == ["control"]  # the ack, no tool_result


async def test_a_token_provider_that_hangs_is_given_up_on_and_tried_again() -> None:
    log = SeqLog()

    async def handler(peer: Peer) -> None:
        init = await peer.handshake()
        if "lastSeq" not in init:
            await first_turn_then_wait(log, peer)
            return
        await log.resumed(peer, init["lastSeq"])
        await log.send(peer, result_frame("done", "r-1"))
        await forever(peer)

    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.Event().wait()  # the backend never answers this time
        return TOKEN

    events: list[ReconnectEvent] = []
    async with behind_proxy(handler) as proxy:
        chucky = Chucky(
            url=proxy.url(),
            token_provider=provider,
            timeout=ticks(10),
            reconnect_backoff=0.001,
            on_reconnect=events.append,
        )
        async with chucky:
            session = chucky.create_session()
            await session.send("hi")
            await cut_at_first_delta(proxy, session)
            assert await read_turn(session) == ["result:done"]
    assert calls == 3
    assert outcomes(events) == [("reconnecting", 1), ("reconnecting", 2), ("resumed", 2)]
    assert events[1].error is not None and "token_provider" in events[1].error.message
