"""The server state machine (chucky.protocol.server), fed frames by hand: no sockets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.strategies import fields, frame_like, frames, leaves, shape, shaped

from chucky.errors import BudgetExceededError, SessionNotFoundError, ValidationError
from chucky.messages import (
    AssistantBody,
    AssistantMessage,
    ResultMessage,
    StreamEventMessage,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    Usage,
    UserBody,
    UserMessage,
)
from chucky.options import SessionOptions
from chucky.protocol.frames import FrameError, ToolResultPayload
from chucky.protocol.server import (
    DEFAULT_MAX_INVALID_FRAMES,
    ControlReceived,
    FrameRejected,
    InitReceived,
    InterruptReceived,
    PingReceived,
    ServerEvent,
    ServerProtocol,
    ServerState,
    ToolResultReceived,
    TurnReceived,
    TurnRejected,
)
from chucky.protocol.turns import (
    Admitted,
    CancelWork,
    Ended,
    LoopCancelled,
    Start,
    StopReason,
    Turn,
    TurnState,
)


@dataclass(frozen=True)
class Queued:
    """A :class:`TurnReceived`, compared by what it carries (its turn is a live object)."""

    content: Any
    options: SessionOptions | None
    form: str


def send(proto: ServerProtocol, value: dict[str, Any] | str) -> list[Any]:
    events: list[Any] = []
    for event in proto.receive(value if isinstance(value, str) else json.dumps(value)):
        if isinstance(event, TurnReceived):
            assert event.turn.state is TurnState.QUEUED and event.turn in proto.turns
            event = Queued(event.content, event.options, event.form)
        events.append(event)
    return events


def running(proto: ServerProtocol) -> Turn:
    """A turn of ``proto`` that runs (tool calls belong to one)."""
    send(proto, user("run"))
    turn = proto.turns[-1]
    turn.process(Start())
    turn.process(Admitted())
    return turn


def one(events: list[ServerEvent]) -> ServerEvent:
    assert len(events) == 1, events
    return events[0]


def rejection(events: list[ServerEvent]) -> FrameRejected:
    event = one(events)
    assert isinstance(event, FrameRejected)
    return event


def user(content: Any) -> dict[str, Any]:
    return {
        "type": "user",
        "session_id": "unknown",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
    }


def tool_result(call_id: str, *, is_error: bool | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": f"answer {call_id}"}]}
    if is_error is not None:
        result["isError"] = is_error
    return {"type": "tool_result", "payload": {"callId": call_id, "result": result}}


def opened(**kwargs: Any) -> ServerProtocol:
    proto = ServerProtocol(**kwargs)
    send(proto, {"type": "init", "payload": {}})
    assert proto.state is ServerState.OPEN
    return proto


# --- handshake --------------------------------------------------------------------------------


def test_ready_frame() -> None:
    assert ServerProtocol.ready() == '{"type":"control","payload":{"action":"ready"}}'
    assert ServerProtocol().state is ServerState.AWAITING_INIT


def test_init() -> None:
    proto = ServerProtocol()
    event = one(send(proto, {"type": "init", "payload": {"model": "opus", "resume": "s1"}}))
    assert event == InitReceived(SessionOptions(model="opus", session_id="s1"), implicit=False)
    assert proto.state is ServerState.OPEN


def test_a_second_init_is_rejected_without_closing() -> None:
    proto = opened()
    rejected = rejection(send(proto, {"type": "init", "payload": {"model": "x"}}))
    assert not rejected.fatal
    assert isinstance(rejected.error, FrameError)
    assert rejected.error.details == {"reason": "invalid_frame", "type": "init"}
    assert "init" in rejected.error.message
    assert proto.state is ServerState.OPEN
    assert proto.invalid_frames == 1
    assert isinstance(one(send(proto, user("still here"))), Queued)


def test_invalid_init_options_are_rejected_and_init_is_still_awaited() -> None:
    proto = ServerProtocol()
    rejected = rejection(send(proto, {"type": "init", "payload": {"maxTurns": "lots"}}))
    assert rejected.error.details["reason"] == "invalid_options"
    assert proto.state is ServerState.AWAITING_INIT
    assert isinstance(one(send(proto, {"type": "init", "payload": {}})), InitReceived)


def test_a_turn_before_init_is_an_implicit_init() -> None:
    proto = ServerProtocol()
    events = send(proto, user("hello"))
    assert events == [
        InitReceived(SessionOptions(), implicit=True),
        Queued("hello", None, "user"),
    ]
    assert proto.state is ServerState.OPEN
    assert rejection(send(proto, {"type": "init", "payload": {}})).error.details["type"] == "init"


def test_the_implicit_init_uses_the_prompt_options() -> None:
    # The official Python client repeats its options in every prompt frame.
    proto = ServerProtocol()
    events = send(
        proto,
        {
            "type": "prompt",
            "payload": {"message": "2 + 2?", "options": {"model": "opus", "maxTurns": 3}},
        },
    )
    options = SessionOptions(model="opus", max_turns=3)
    assert events == [
        InitReceived(options, implicit=True),
        Queued("2 + 2?", options, "prompt"),
    ]


def test_a_rejected_turn_before_init_does_not_open_the_session() -> None:
    proto = ServerProtocol()
    rejected = rejection(send(proto, {"type": "sdk_message", "payload": {"type": "user"}}))
    assert rejected.error.details == {"reason": "invalid_frame", "type": "sdk_message"}
    assert proto.state is ServerState.AWAITING_INIT
    assert isinstance(one(send(proto, {"type": "init"})), InitReceived)


# --- turns ------------------------------------------------------------------------------------

IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
}


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (user("hi"), Queued("hi", None, "user")),
        (
            user([{"type": "text", "text": "see"}, IMAGE]),
            Queued([{"type": "text", "text": "see"}, IMAGE], None, "user"),
        ),
        (
            {"type": "prompt", "payload": {"message": "hi", "options": {"model": "haiku"}}},
            Queued("hi", SessionOptions(model="haiku"), "prompt"),
        ),
        (
            {"type": "prompt", "payload": {"message": "hi", "systemPrompt": "S", "maxTurns": 2}},
            Queued("hi", SessionOptions(system_prompt="S", max_turns=2), "prompt"),
        ),
        ({"type": "prompt", "payload": {"message": "hi"}}, Queued("hi", None, "prompt")),
        (
            {"type": "sdk_message", "payload": {"type": "user", "message": "hi"}},
            Queued("hi", None, "sdk_message"),
        ),
        (
            {
                "type": "sdk_message",
                "payload": {"type": "user_message", "message": {"role": "user", "content": "hi"}},
            },
            Queued("hi", None, "sdk_message"),
        ),
        (
            {"type": "sdk_message", "payload": {"type": "user", "content": [IMAGE]}},
            Queued([IMAGE], None, "sdk_message"),
        ),
    ],
)
def test_every_turn_form(frame: dict[str, Any], expected: TurnReceived) -> None:
    assert send(opened(), frame) == [expected]


def test_turns_right_after_init_are_all_returned() -> None:
    # Section 2.3: a turn may follow init before the session is set up; never dropped.
    proto = ServerProtocol()
    assert isinstance(one(send(proto, {"type": "init"})), InitReceived)
    turns = [one(send(proto, user(f"t{i}"))) for i in range(3)]
    assert turns == [Queued(f"t{i}", None, "user") for i in range(3)]


def test_bad_prompt_options_are_rejected() -> None:
    proto = opened()
    rejected = rejection(
        send(proto, {"type": "prompt", "payload": {"message": "hi", "options": {"maxTurns": 0}}})
    )
    assert rejected.error.details == {"reason": "invalid_options", "type": "prompt"}
    assert "maxTurns" in rejected.error.message
    assert not rejected.fatal


# --- tool calls -------------------------------------------------------------------------------


def test_tool_call_frame_registers_a_pending_call() -> None:
    proto = opened()
    turn = running(proto)
    assert proto.tool_call(turn, "c1", "add", {"a": 1, "b": 2}) == (
        '{"type":"tool_call","payload":{"callId":"c1","toolName":"add","input":{"a":1,"b":2}}}'
    )
    assert proto.pending_calls == 1
    assert turn.pending_calls == ["c1"]


def test_tool_call_accepts_any_mapping() -> None:
    proto = opened()
    text = proto.tool_call(running(proto), "c1", "add", MappingProxyType({"a": 1}))
    assert json.loads(text)["payload"]["input"] == {"a": 1}


def test_tool_results_in_any_order() -> None:
    proto = opened()
    turn = running(proto)
    for call_id in ("c1", "c2", "c3"):
        proto.tool_call(turn, call_id, "t", {})
    assert proto.pending_calls == 3
    for call_id, is_error in (("c3", True), ("c1", None), ("c2", False)):
        event = one(send(proto, tool_result(call_id, is_error=is_error)))
        assert event == ToolResultReceived(
            call_id,
            ToolResultPayload(
                content=[{"type": "text", "text": f"answer {call_id}"}], isError=is_error
            ),
        )
    assert proto.pending_calls == 0
    assert turn.pending_calls == []
    assert proto.invalid_frames == 0


def test_a_result_for_an_unknown_call_is_rejected() -> None:
    proto = opened()
    proto.tool_call(running(proto), "c1", "t", {})
    rejected = rejection(send(proto, tool_result("nope")))
    assert rejected.error.details == {"reason": "invalid_frame", "type": "tool_result"}
    assert "'nope'" in rejected.error.message
    assert not rejected.fatal
    assert proto.pending_calls == 1


def test_a_second_result_for_the_same_call_is_applied_once_and_dropped_quietly() -> None:
    # docs/protocol.md section 10: a client that resumes may answer a tool_call the server
    # sent again; the first result counts, a repeat is dropped without an error frame.
    proto = opened()
    proto.tool_call(running(proto), "c1", "t", {})
    assert isinstance(one(send(proto, tool_result("c1"))), ToolResultReceived)
    assert send(proto, tool_result("c1")) == []
    assert proto.invalid_frames == 0


def test_a_late_result_for_an_abandoned_call_is_dropped_quietly() -> None:
    # The client may answer before it hears the call was abandoned (interrupt, timeout): an
    # error frame then would end its next turn. A result for a call never made is refused.
    proto = opened()
    turn = running(proto)
    proto.tool_call(turn, "c1", "t", {})
    proto.tool_call(turn, "c2", "t", {})
    assert proto.abandon("c1") is True
    assert proto.abandon("never-sent") is False
    assert proto.pending_calls == 1
    assert turn.pending_calls == ["c2"]
    assert send(proto, tool_result("c1")) == []
    assert proto.invalid_frames == 0
    assert isinstance(one(send(proto, tool_result("c2"))), ToolResultReceived)
    # Dropped again: a client that resumed may answer a call twice (section 10).
    assert send(proto, tool_result("c1")) == []
    assert isinstance(one(send(proto, tool_result("never-sent"))), FrameRejected)


# --- ping, control ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "stamp"),
    [
        ({"timestamp": 1_700_000_000_123}, 1_700_000_000_123),
        ({"timestamp": 2**60 + 1}, 2**60 + 1),
        ({"timestamp": 1_700_000_000_123.9}, 1_700_000_000_123),
        ({}, 0),
        (None, 0),
    ],
)
def test_ping_is_answered_with_an_integer_timestamp(payload: Any, stamp: int) -> None:
    proto = opened()
    event = one(send(proto, {"type": "ping", "payload": payload}))
    assert event == PingReceived(f'{{"type":"pong","payload":{{"timestamp":{stamp}}}}}')


@pytest.mark.parametrize("stamp", ['"inf"', '"nan"', "NaN", "Infinity", "1e999"])
def test_ping_with_a_non_finite_timestamp_is_rejected(stamp: str) -> None:
    proto = opened()
    rejected = rejection(send(proto, f'{{"type":"ping","payload":{{"timestamp":{stamp}}}}}'))
    assert rejected.error.details["reason"] == "invalid_frame"
    assert not rejected.fatal


def test_ping_before_init_is_answered_and_does_not_open() -> None:
    proto = ServerProtocol()
    assert isinstance(one(send(proto, {"type": "ping", "payload": {"timestamp": 5}})), PingReceived)
    assert proto.state is ServerState.AWAITING_INIT


def test_control_close_ends_everything() -> None:
    proto = opened()
    proto.tool_call(running(proto), "c1", "t", {})
    assert send(proto, {"type": "control", "payload": {"action": "close"}}) == [
        ControlReceived("close")
    ]
    assert proto.state is ServerState.CLOSED
    for frame in (user("hi"), tool_result("c1"), {"type": "ping"}, "garbage", {"type": "init"}):
        assert send(proto, frame) == []
    assert proto.invalid_frames == 0


def test_end_input_refuses_later_turns() -> None:
    proto = opened()
    proto.tool_call(running(proto), "c1", "t", {})
    assert send(proto, {"type": "control", "payload": {"action": "end_input"}}) == [
        ControlReceived("end_input")
    ]
    assert proto.state is ServerState.ENDING
    for frame in (
        user("more"),
        {"type": "prompt", "payload": {"message": "more"}},
        {"type": "sdk_message", "payload": {"type": "user", "message": "more"}},
    ):
        rejected = rejection(send(proto, frame))
        assert "end_input" in rejected.error.message
        assert rejected.error.details["reason"] == "invalid_frame"
    # The running turn may still finish: its tool results and pings are accepted.
    assert isinstance(one(send(proto, tool_result("c1"))), ToolResultReceived)
    assert isinstance(one(send(proto, {"type": "ping"})), PingReceived)
    assert proto.state is ServerState.ENDING
    assert send(proto, {"type": "control", "payload": {"action": "close"}}) == [
        ControlReceived("close")
    ]
    assert proto.state is ServerState.CLOSED


def test_interrupt_does_not_change_state() -> None:
    proto = opened()
    assert send(proto, {"type": "control", "payload": {"action": "interrupt"}}) == [
        InterruptReceived(None, ())
    ]
    assert proto.state is ServerState.OPEN


# --- invalid frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 1, 3, DEFAULT_MAX_INVALID_FRAMES])
def test_the_frame_after_max_invalid_frames_is_fatal(limit: int) -> None:
    proto = opened(max_invalid_frames=limit)
    garbage = ["not json", "[1]", '{"type":"hello"}', '{"type":"user"}', json.dumps(user([5]))]
    for i in range(limit):
        rejected = rejection(send(proto, garbage[i % len(garbage)]))
        assert not rejected.fatal
        assert proto.invalid_frames == i + 1
        assert proto.state is ServerState.OPEN
        assert "too many" not in rejected.error.message
    # Valid frames in between neither reset nor add to the count.
    assert isinstance(one(send(proto, user("ok"))), Queued)
    assert proto.invalid_frames == limit
    rejected = rejection(send(proto, '{"type":"hello"}'))
    assert rejected.fatal
    assert proto.state is ServerState.CLOSED
    assert isinstance(rejected.error, ValidationError)
    assert rejected.error.code == "VALIDATION_ERROR"
    assert rejected.error.message == (
        "Invalid frame: unknown frame type 'hello'"
        " (too many invalid frames: closing the connection)"
    )
    assert rejected.error.details == {"reason": "invalid_frame", "type": "hello"}
    assert send(proto, user("after")) == []
    assert proto.invalid_frames == limit + 1


def test_default_limit() -> None:
    assert ServerProtocol().max_invalid_frames == DEFAULT_MAX_INVALID_FRAMES == 10


def test_rejections_are_error_frames_with_validation_error() -> None:
    proto = opened()
    rejected = rejection(send(proto, "not json"))
    assert json.loads(ServerProtocol.error(rejected.error)) == {
        "type": "error",
        "payload": {
            "message": "Invalid frame: not valid JSON",
            "code": "VALIDATION_ERROR",
            "details": {"reason": "invalid_frame"},
        },
    }


# --- outgoing frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            AssistantMessage(
                uuid="u1",
                session_id="s",
                message=AssistantBody(content=[TextBlock(text="Hi")], model="m"),
            ),
            '{"type":"assistant","uuid":"u1","session_id":"s","message":{"role":"assistant",'
            '"content":[{"type":"text","text":"Hi"}],"model":"m"},"parent_tool_use_id":null}',
        ),
        (
            UserMessage(
                uuid="u2",
                session_id="s",
                message=UserBody(content=[ToolResultBlock(tool_use_id="t1", content="4")]),
            ),
            '{"type":"user","uuid":"u2","session_id":"s","message":{"role":"user","content":'
            '[{"type":"tool_result","tool_use_id":"t1","content":"4"}]},"parent_tool_use_id":null}',
        ),
        (
            StreamEventMessage(uuid="u3", session_id="s", event={"type": "message_stop"}),
            '{"type":"stream_event","uuid":"u3","session_id":"s","event":{"type":"message_stop"},'
            '"parent_tool_use_id":null}',
        ),
        (
            AssistantMessage(parent_tool_use_id="tu9", message=AssistantBody()),
            '{"type":"assistant","parent_tool_use_id":"tu9","message":{"role":"assistant",'
            '"content":[]}}',
        ),
    ],
)
def test_message_frames_are_bare_with_parent_tool_use_id(message: Any, expected: str) -> None:
    assert ServerProtocol.message(message) == expected


def test_result_frame_has_integer_fields_and_no_parent_tool_use_id() -> None:
    text = ServerProtocol.message(
        ResultMessage(
            uuid="u",
            session_id="s",
            num_turns=1,
            duration_ms=12,
            duration_api_ms=10,
            total_cost_usd=0.5,
            usage=Usage(input_tokens=3, output_tokens=4),
            result="done",
        )
    )
    assert text == (
        '{"type":"result","subtype":"success","uuid":"u","session_id":"s","is_error":false,'
        '"num_turns":1,"duration_ms":12,"duration_api_ms":10,"total_cost_usd":0.5,"usage":'
        '{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":0,'
        '"cache_read_input_tokens":0},"result":"done"}'
    )


def test_system_frame_uses_permission_mode_alias() -> None:
    text = ServerProtocol.message(
        SystemMessage(session_id="s", tools=["t"], model="m", permission_mode="default")
    )
    assert json.loads(text) == {
        "type": "system",
        "subtype": "init",
        "session_id": "s",
        "tools": ["t"],
        "model": "m",
        "permissionMode": "default",
    }


def test_error_frame() -> None:
    error = BudgetExceededError(
        "Budget exceeded: AI budget used up",
        details={"reason": "user_budget_exhausted", "limit": 5},
    )
    assert ServerProtocol.error(error) == (
        '{"type":"error","payload":{"message":"Budget exceeded: AI budget used up",'
        '"code":"BUDGET_EXCEEDED","details":{"reason":"user_budget_exhausted","limit":5}}}'
    )


def test_error_frame_of_a_session_not_found_carries_its_reason() -> None:
    assert json.loads(ServerProtocol.error(SessionNotFoundError("Session not found: s1"))) == {
        "type": "error",
        "payload": {
            "message": "Session not found: s1",
            "code": "SESSION_ERROR",
            "details": {"reason": "session_not_found"},
        },
    }


def test_session_info_frame() -> None:
    data = {"sessionId": "s", "model": "m", "tools": ["a"], "createdAt": "2025-01-01T00:00:00Z"}
    assert ServerProtocol.session_info(MappingProxyType(data)) == (
        '{"type":"control","payload":{"action":"session_info","data":{"sessionId":"s",'
        '"model":"m","tools":["a"],"createdAt":"2025-01-01T00:00:00Z"}}}'
    )


def test_close_frame() -> None:
    proto = opened()
    assert proto.close() == '{"type":"control","payload":{"action":"close"}}'
    assert proto.state is ServerState.CLOSED
    assert send(proto, user("x")) == []


# --- properties ---------------------------------------------------------------------------------


targeted = st.one_of(
    shape("ping", payload=fields(timestamp=leaves) | frame_like),
    shape("init", payload=shaped(frame_like) | frame_like),
    shape("prompt", payload=fields(message=leaves, options=shaped(frame_like) | leaves)),
    shape("sdk_message", payload=fields(type=leaves, message=frame_like, content=frame_like)),
    shape("tool_result", payload=fields(callId=leaves, result=fields(content=frame_like))),
    shape("control", payload=fields(action=leaves)),
)
inputs = st.lists(
    st.one_of(
        st.text(),
        st.binary(),
        frames,
        targeted,
        st.sampled_from(
            [
                json.dumps(user("hi")),
                json.dumps(tool_result("c1")),
                '{"type":"init"}',
                '{"type":"control","payload":{"action":"end_input"}}',
            ]
        ),
    ),
    max_size=25,
)


@settings(max_examples=300)
@given(inputs, st.integers(min_value=0, max_value=5))
def test_the_server_machine_never_raises_and_counts_monotonically(
    frames: list[str | bytes], limit: int
) -> None:
    proto = ServerProtocol(max_invalid_frames=limit)
    turn = Turn("elsewhere")
    turn.process(Start())
    turn.process(Admitted())
    proto.tool_call(turn, "c1", "t", {})
    proto.tool_call(turn, "c2", "t", {})
    for text in frames:
        before, was_closed = proto.invalid_frames, proto.state is ServerState.CLOSED
        events = proto.receive(text)
        assert proto.invalid_frames >= before
        if was_closed:
            assert events == []
            assert proto.invalid_frames == before
        for event in events:
            if isinstance(event, FrameRejected):
                assert event.fatal == (proto.invalid_frames > limit)
                assert event.error.code == "VALIDATION_ERROR"
                ServerProtocol.error(event.error).encode("utf-8")
            if isinstance(event, PingReceived):
                assert isinstance(json.loads(event.pong)["payload"]["timestamp"], int)
        if proto.invalid_frames > limit:
            assert proto.state is ServerState.CLOSED


def test_unknown_call_id_is_clipped_in_the_error() -> None:
    proto = ServerProtocol()
    proto.receive(json.dumps({"type": "init", "payload": {}}))
    frame = {
        "type": "tool_result",
        "payload": {"callId": "c" * 1_000_000, "result": {"content": []}},
    }
    (event,) = proto.receive(json.dumps(frame))
    assert isinstance(event, FrameRejected)
    assert len(proto.error(event.error)) < 2_000


# --- the turn queue -----------------------------------------------------------------------------


def _rejected_turn(events: list[Any]) -> TurnRejected:
    event = one(events)
    assert isinstance(event, TurnRejected), event
    return event


def test_the_queue_is_bounded_by_turns() -> None:
    proto = opened(max_queued_turns=2)
    assert isinstance(one(send(proto, user("t1"))), Queued)
    assert isinstance(one(send(proto, user("t2"))), Queued)
    refused = _rejected_turn(send(proto, user("t3")))
    assert refused.error.code == "RATE_LIMIT"
    assert refused.error.details["reason"] == "queue_full"
    assert refused.error.details["limit"] == 2
    assert "rate limit" in refused.error.message.lower()
    assert proto.invalid_frames == 0  # not the client's protocol error
    assert [t.content for t in proto.turns] == ["t1", "t2"]  # nothing kept of t3
    proto.turns[0].process(Start())  # t1 runs: only t2 waits now
    assert isinstance(one(send(proto, user("t3"))), Queued)


def test_the_queue_is_bounded_by_size_but_one_turn_always_waits() -> None:
    proto = opened(max_queued_bytes=1000)
    big = "x" * 5000
    assert isinstance(one(send(proto, user(big))), Queued)  # an empty queue takes anything
    refused = _rejected_turn(send(proto, user("small")))
    assert refused.error.details["queuedBytes"] > 5000
    proto.turns[0].process(Start())
    assert isinstance(one(send(proto, user("a" * 500))), Queued)
    _rejected_turn(send(proto, user("b" * 600)))  # 500 + 600 + envelopes > 1000


def test_a_busy_session_rejects_turns_when_configured() -> None:
    proto = opened(reject_when_busy=True)
    assert isinstance(one(send(proto, user("t1"))), Queued)
    refused = _rejected_turn(send(proto, user("t2")))
    assert refused.error.code == "SESSION_ERROR"
    assert refused.error.details["reason"] == "session_busy"


def _two_turns(proto: ServerProtocol, *, admitted: bool = True) -> tuple[Turn, Turn]:
    """Two turns received; the first started (and admitted), the second queued behind it."""
    send(proto, user("t1"))
    send(proto, user("t2"))
    first, second = proto.turns
    first.process(Start())
    if admitted:
        first.process(Admitted())
    return first, second


def test_an_interrupt_stops_the_oldest_turn_not_answered() -> None:
    proto = opened()
    first, second = _two_turns(proto)
    event = one(send(proto, {"type": "control", "payload": {"action": "interrupt"}}))
    assert event == InterruptReceived(first, (CancelWork(),))
    assert second.state is TurnState.QUEUED  # the queued turn still runs after it
    first.process(LoopCancelled())
    first.process(Ended())
    # Nothing runs now: an interrupt reaches the next turn before it starts.
    event = one(send(proto, {"type": "control", "payload": {"action": "interrupt"}}))
    assert event == InterruptReceived(second, ())
    assert second.state is TurnState.ENDING
    assert second.end is not None and second.end.errors == ("interrupted",)
    assert proto.current() is second


def test_a_lost_connection_reaches_every_live_turn() -> None:
    proto = opened()
    first, second = _two_turns(proto, admitted=False)
    affected = proto.connection_lost()
    assert affected == [(first, [CancelWork()]), (second, [])]
    assert second.state is TurnState.DONE
    assert first.state is TurnState.STOPPING and not first.deliverable
    assert proto.state is ServerState.CLOSED


def test_a_shutdown_refuses_queued_and_later_turns() -> None:
    proto = opened()
    first, second = _two_turns(proto)
    assert proto.drain() == [second]
    assert first.state is TurnState.RUNNING
    assert second.end is not None and second.end.error is not None
    refused = _rejected_turn(send(proto, user("t3")))
    assert refused.error.details["reason"] == "server_shutdown"
    assert proto.drain_expired() == [CancelWork()]
    assert first.stop_reason is StopReason.SHUTDOWN


def test_tool_cancel_frames_only_for_clients_that_announce_them() -> None:
    assert opened().tool_cancel("c1", "interrupted") is None
    proto = ServerProtocol()
    send(proto, {"type": "init", "payload": {"chuckyExtensions": ["interrupt", "tool_cancel"]}})
    assert proto.extensions == {"interrupt", "tool_cancel"}
    assert json.loads(proto.tool_cancel("c1", "interrupted") or "") == {
        "type": "control",
        "payload": {"action": "tool_cancel", "data": {"callId": "c1", "reason": "interrupted"}},
    }
