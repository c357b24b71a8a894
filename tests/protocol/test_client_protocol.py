"""The client state machine (chucky.protocol.client), fed frames by hand: no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.strategies import fields, frame_like, frames, leaves, shape, shaped

from chucky.errors import (
    AuthenticationError,
    BudgetExceededError,
    ChuckyError,
    InvalidStateError,
    ProviderError,
    SessionNotFoundError,
    ValidationError,
)
from chucky.messages import AssistantMessage, ResultMessage, StreamEventMessage, SystemMessage
from chucky.protocol.client import (
    EXTENSIONS,
    ClientProtocol,
    ClientState,
    HandshakeFailed,
    Ignored,
    Pong,
    Ready,
    ServerClosing,
    ServerError,
    SessionInfo,
    ToolCall,
    ToolCancelled,
    TurnFailed,
)

READY = '{"type":"control","payload":{"action":"ready"}}'
CLOSE = '{"type":"control","payload":{"action":"close"}}'


def frame(value: dict[str, Any]) -> str:
    return json.dumps(value)


def result(session_id: str = "sess-1", **fields: Any) -> str:
    return frame({"type": "result", "subtype": "success", "session_id": session_id, **fields})


def error(code: str, message: str = "boom", **details: Any) -> str:
    payload: dict[str, Any] = {"message": message, "code": code}
    if details:
        payload["details"] = details
    return frame({"type": "error", "payload": payload})


def system_init(session_id: str) -> str:
    return frame({"type": "system", "subtype": "init", "session_id": session_id, "tools": []})


def opened(init: dict[str, Any] | None = None, **kwargs: Any) -> ClientProtocol:
    proto = ClientProtocol(init or {}, **kwargs)
    proto.start()
    assert proto.receive(READY) == Ready()
    return proto


# --- handshake --------------------------------------------------------------------------------


def test_start_is_the_init_frame() -> None:
    proto = ClientProtocol({"model": "sonnet", "maxTurns": 2, "chuckyExtensions": list(EXTENSIONS)})
    assert proto.start() == (
        '{"type":"init","payload":{"model":"sonnet","maxTurns":2,'
        '"chuckyExtensions":["interrupt","tool_cancel"]}}'
    )
    assert proto.state is ClientState.HANDSHAKE


def test_start_keeps_non_ascii() -> None:
    assert ClientProtocol({"systemPrompt": "Réponds en français"}).start() == (
        '{"type":"init","payload":{"systemPrompt":"Réponds en français"}}'
    )


def test_ready_after_init_was_sent() -> None:
    # Our dialect (T's): init goes out first, ready comes back.
    proto = ClientProtocol({})
    proto.start()
    assert proto.state is ClientState.HANDSHAKE
    assert proto.receive(READY) == Ready()
    assert proto.state is ClientState.OPEN
    proto.send_turn("hi")


def test_ready_before_init_was_sent() -> None:
    # Our server sends ready first: it may arrive before the I/O layer sent init.
    proto = ClientProtocol({"model": "m"})
    assert proto.receive(READY) == Ready()
    assert proto.state is ClientState.OPEN
    assert proto.start() == '{"type":"init","payload":{"model":"m"}}'
    proto.send_turn("hi")


def test_send_turn_before_ready_raises() -> None:
    proto = ClientProtocol({})
    proto.start()
    with pytest.raises(InvalidStateError, match="handshake"):
        proto.send_turn("hi")
    assert proto.open_turns == 0


def test_repeated_ready_is_ignored() -> None:
    proto = opened()
    event = proto.receive(READY)
    assert isinstance(event, Ignored)
    assert "ready" in event.reason
    assert proto.state is ClientState.OPEN


def test_error_during_handshake_fails_it() -> None:
    proto = ClientProtocol({})
    proto.start()
    event = proto.receive(
        error("AUTHENTICATION_ERROR", "Unauthorized: token expired", reason="token_expired")
    )
    assert isinstance(event, HandshakeFailed)
    assert isinstance(event.error, AuthenticationError)
    assert event.error.reason == "token_expired"
    assert proto.state is ClientState.CLOSING
    with pytest.raises(InvalidStateError, match="closing"):
        proto.send_turn("hi")
    # A ready that comes anyway does not reopen the connection.
    assert isinstance(proto.receive(READY), Ignored)
    assert proto.state is ClientState.CLOSING


def test_error_during_handshake_without_code_is_classified_by_text() -> None:
    proto = ClientProtocol({})
    event = proto.receive(frame({"type": "error", "payload": {"message": "Unauthorized"}}))
    assert isinstance(event, HandshakeFailed)
    assert isinstance(event.error, AuthenticationError)


# --- outgoing frames --------------------------------------------------------------------------


def test_send_turn_is_the_typescript_user_frame_with_a_turn_id() -> None:
    proto = ClientProtocol({}, turn_id=lambda: "t-1")
    proto.receive(READY)
    assert proto.send_turn("Hello") == (
        '{"type":"user","session_id":"","message":{"role":"user","content":"Hello"},'
        '"parent_tool_use_id":null,"turnId":"t-1"}'
    )


def test_send_turn_carries_the_known_session_id_and_blocks() -> None:
    proto = opened(session_id="sess-9")
    blocks = [
        {"type": "text", "text": "é"},
        {"type": "image", "source": {"type": "url", "url": "u"}},
    ]
    assert json.loads(proto.send_turn(blocks)) == {
        "type": "user",
        "session_id": "sess-9",
        "message": {"role": "user", "content": blocks},
        "parent_tool_use_id": None,
        "turnId": proto.turns._turns[-1].turn_id,
    }


def test_send_tool_result() -> None:
    proto = opened()
    text = proto.send_tool_result(
        "c1", {"content": [{"type": "text", "text": "4"}], "isError": False}
    )
    assert text == (
        '{"type":"tool_result","payload":{"callId":"c1","result":'
        '{"content":[{"type":"text","text":"4"}],"isError":false}}}'
    )


def test_send_ping() -> None:
    assert ClientProtocol({}).send_ping(1_700_000_000_123) == (
        '{"type":"ping","payload":{"timestamp":1700000000123}}'
    )


@pytest.mark.parametrize("action", ["close", "end_input", "interrupt"])
def test_send_control(action: str) -> None:
    proto = opened()
    assert proto.send_control(action) == f'{{"type":"control","payload":{{"action":"{action}"}}}}'
    assert proto.state is (ClientState.CLOSING if action == "close" else ClientState.OPEN)


def test_send_control_close_after_the_connection_is_gone_stays_closed() -> None:
    proto = opened()
    proto.connection_lost()
    proto.send_control("close")
    assert proto.state is ClientState.CLOSED


def test_no_turn_after_close() -> None:
    proto = opened()
    proto.send_control("close")
    with pytest.raises(InvalidStateError, match="closing"):
        proto.send_turn("hi")


# --- turns ------------------------------------------------------------------------------------


def test_a_result_ends_one_open_turn() -> None:
    proto = opened()
    proto.send_turn("a")
    proto.send_turn("b")
    assert proto.open_turns == 2
    msg = proto.receive(result())
    assert isinstance(msg, ResultMessage)
    assert proto.open_turns == 1
    proto.receive(result())
    assert proto.open_turns == 0
    proto.receive(result())  # a stray result never makes the count negative
    assert proto.open_turns == 0


def test_other_messages_do_not_end_a_turn() -> None:
    proto = opened()
    proto.send_turn("a")
    for text in (
        system_init("s"),
        frame({"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}]}}),
        frame({"type": "stream_event", "event": {"type": "message_stop"}}),
        frame({"type": "system", "subtype": "status"}),
        frame({"type": "tool_call", "payload": {"callId": "c", "toolName": "t", "input": {}}}),
        '{"type":"pong","payload":{"timestamp":1}}',
        '{"type":"mystery"}',
    ):
        proto.receive(text)
    assert proto.open_turns == 1


def test_a_result_in_the_legacy_envelope_ends_a_turn() -> None:
    proto = opened()
    proto.send_turn("a")
    inner = {"type": "result", "subtype": "success", "session_id": "s"}
    assert isinstance(
        proto.receive(frame({"type": "sdk_message", "payload": inner})), ResultMessage
    )
    assert proto.open_turns == 0


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        ("BUDGET_EXCEEDED", "user_budget_exhausted", BudgetExceededError),
        ("SESSION_ERROR", "session_not_found", SessionNotFoundError),
        ("PROVIDER_ERROR", "provider_unavailable", ProviderError),
        ("VALIDATION_ERROR", "invalid_frame", ValidationError),
        ("INTERNAL_ERROR", None, ChuckyError),
    ],
)
def test_an_error_frame_ends_one_open_turn(
    code: str, reason: str | None, expected: type[ChuckyError]
) -> None:
    proto = opened()
    proto.receive(system_init("sess-1"))
    proto.send_turn("a")
    proto.send_turn("b")
    event = proto.receive(error(code, "It failed", **({"reason": reason} if reason else {})))
    assert isinstance(event, TurnFailed)
    assert type(event.error) is expected
    assert event.error.code == code
    assert event.error.message == "It failed"
    assert event.error.session_id == "sess-1"
    assert proto.open_turns == 1
    assert proto.state is ClientState.OPEN


def test_an_error_frame_with_a_string_payload_still_ends_the_turn() -> None:
    proto = opened()
    proto.send_turn("a")
    event = proto.receive('{"type":"error","payload":"Budget exceeded for this user"}')
    assert isinstance(event, TurnFailed)
    assert isinstance(event.error, BudgetExceededError)
    assert proto.open_turns == 0


def test_an_error_frame_with_no_open_turn_is_a_server_error() -> None:
    proto = opened()
    event = proto.receive(error("VALIDATION_ERROR", "Invalid frame", reason="invalid_frame"))
    assert isinstance(event, ServerError)
    assert isinstance(event.error, ValidationError)
    assert proto.open_turns == 0
    assert proto.state is ClientState.OPEN


def test_result_integers_are_tolerated_as_floats_and_strings() -> None:
    proto = opened()
    proto.send_turn("a")
    msg = proto.receive(
        result(
            num_turns=12.0,
            duration_ms="3",
            duration_api_ms="2.0",
            total_cost_usd="0.25",
            usage={"input_tokens": 7.0, "output_tokens": "5", "cache_read_input_tokens": 1.6},
        )
    )
    assert isinstance(msg, ResultMessage)
    assert (msg.num_turns, msg.duration_ms, msg.duration_api_ms) == (12, 3, 2)
    assert type(msg.num_turns) is int
    assert msg.total_cost_usd == 0.25
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 5)
    assert msg.usage.cache_read_input_tokens == 2
    assert msg["duration_ms"] == "3"  # the mapping view is what the server sent
    assert proto.open_turns == 0


def test_connection_lost_returns_the_open_turns() -> None:
    proto = opened()
    proto.send_turn("a")
    proto.send_turn("b")
    proto.receive(result())
    assert proto.connection_lost() == 1
    assert proto.state is ClientState.CLOSED
    assert proto.open_turns == 0
    assert proto.connection_lost() == 0
    with pytest.raises(InvalidStateError, match="closed"):
        proto.send_turn("c")


# --- session id -------------------------------------------------------------------------------


def test_session_id_from_system_init() -> None:
    proto = opened()
    msg = proto.receive(system_init("sess-A"))
    assert isinstance(msg, SystemMessage)
    assert proto.session_id == "sess-A"


def test_session_id_from_session_info() -> None:
    proto = opened()
    data = {"sessionId": "sess-B", "model": "m", "tools": ["x"]}
    event = proto.receive(
        frame({"type": "control", "payload": {"action": "session_info", "data": data}})
    )
    assert event == SessionInfo(data)
    assert proto.session_id == "sess-B"


def test_session_id_from_result() -> None:
    proto = opened()
    proto.send_turn("a")
    proto.receive(result("sess-C"))
    assert proto.session_id == "sess-C"


def test_session_id_is_kept_from_the_constructor() -> None:
    proto = opened(session_id="sess-0")
    assert proto.session_id == "sess-0"
    assert json.loads(proto.send_turn("x"))["session_id"] == "sess-0"


@pytest.mark.parametrize(
    "text",
    [
        frame({"type": "system", "subtype": "status", "session_id": "other"}),
        frame({"type": "system", "subtype": "init"}),
        frame({"type": "system", "subtype": "init", "session_id": ""}),
        frame({"type": "assistant", "session_id": "other", "message": {"content": []}}),
        frame({"type": "user", "session_id": "other", "message": {"content": "x"}}),
        frame({"type": "stream_event", "session_id": "other", "event": {}}),
        frame({"type": "control", "payload": {"action": "session_info", "data": {"sessionId": 5}}}),
        frame({"type": "control", "payload": {"action": "session_info"}}),
        frame({"type": "result", "subtype": "success"}),
        frame({"type": "error", "payload": {"message": "x", "session_id": "other"}}),
    ],
)
def test_session_id_is_not_taken_from_other_messages(text: str) -> None:
    proto = opened(session_id="mine")
    proto.receive(text)
    assert proto.session_id == "mine"


def test_session_info_without_data() -> None:
    proto = opened()
    assert proto.receive('{"type":"control","payload":{"action":"session_info"}}') == SessionInfo(
        {}
    )


# --- other server frames ----------------------------------------------------------------------


def test_tool_call() -> None:
    proto = opened()
    event = proto.receive(
        frame(
            {"type": "tool_call", "payload": {"callId": "c1", "toolName": "add", "input": {"a": 1}}}
        )
    )
    assert event == ToolCall("c1", "add", {"a": 1})


def tool_cancel(data: Any) -> str:
    return frame({"type": "control", "payload": {"action": "tool_cancel", "data": data}})


def test_extensions_announce_interrupt_and_tool_cancel() -> None:
    assert EXTENSIONS == ("interrupt", "tool_cancel")


@pytest.mark.parametrize("reason", ["interrupted", "timeout", "turn_ended", "some_new_reason"])
def test_tool_cancel(reason: str) -> None:
    proto = opened()
    proto.send_turn("a")
    event = proto.receive(tool_cancel({"callId": "c1", "reason": reason, "extra": 1}))
    assert event == ToolCancelled("c1", reason)
    assert proto.open_turns == 1  # a cancelled call does not end the turn
    assert proto.state is ClientState.OPEN


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (None, "valid dictionary"),
        ({}, "callId"),
        ({"reason": "timeout"}, "callId"),
        ({"callId": "", "reason": "timeout"}, "callId"),
        ({"callId": 7, "reason": "timeout"}, "callId"),
        ({"callId": ["c1"], "reason": "timeout"}, "callId"),
        ({"callId": "c1"}, "reason"),
        ({"callId": "c1", "reason": None}, "reason"),
        ({"callId": "c1", "reason": 3}, "reason"),
    ],
)
def test_malformed_tool_cancel_is_ignored(data: Any, says: str) -> None:
    proto = opened()
    proto.send_turn("a")
    event = proto.receive(tool_cancel(data))
    assert isinstance(event, Ignored)
    assert event.reason.startswith("malformed tool_cancel")
    assert says in event.reason
    assert proto.open_turns == 1


def test_tool_cancel_with_data_that_is_not_an_object_is_ignored() -> None:
    event = opened().receive(tool_cancel(["c1", "timeout"]))
    assert isinstance(event, Ignored)
    assert "data" in event.reason


def test_control_close_from_the_server() -> None:
    proto = opened()
    assert proto.receive(CLOSE) == ServerClosing()
    assert proto.state is ClientState.CLOSING
    with pytest.raises(InvalidStateError):
        proto.send_turn("x")


def test_control_close_after_connection_lost_keeps_closed() -> None:
    proto = opened()
    proto.connection_lost()
    assert proto.receive(CLOSE) == ServerClosing()
    assert proto.state is ClientState.CLOSED


def test_unknown_control_action_is_ignored() -> None:
    event = opened().receive('{"type":"control","payload":{"action":"dance"}}')
    assert isinstance(event, Ignored)
    assert "dance" in event.reason


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"timestamp": 1_700_000_000_123}, 1_700_000_000_123),
        ({"timestamp": 12.9}, 12),
        ({}, None),
        ({"timestamp": None}, None),
        ({"timestamp": "12"}, None),
        ({"timestamp": True}, None),
    ],
)
def test_pong(payload: dict[str, Any], expected: int | None) -> None:
    assert opened().receive(frame({"type": "pong", "payload": payload})) == Pong(expected)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_pong_with_a_non_finite_timestamp(literal: str) -> None:
    assert opened().receive(f'{{"type":"pong","payload":{{"timestamp":{literal}}}}}') == Pong(None)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"type":"mystery","payload":{}}', "unknown frame type (type 'mystery')"),
        ("not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"type":"tool_call","payload":{}}', "callId"),
        ('{"type":"assistant"}', "message"),
    ],
)
def test_unusable_frames_are_ignored(text: str, says: str) -> None:
    proto = opened()
    proto.send_turn("a")
    event = proto.receive(text)
    assert isinstance(event, Ignored)
    assert says in event.reason
    assert proto.open_turns == 1


def test_sdk_messages_pass_through() -> None:
    proto = opened()
    assistant = proto.receive(
        frame({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}})
    )
    assert isinstance(assistant, AssistantMessage)
    assert assistant.text == "hi"
    event = proto.receive(frame({"type": "stream_event", "event": {"type": "message_start"}}))
    assert isinstance(event, StreamEventMessage)


# --- properties -------------------------------------------------------------------------------


targeted = st.one_of(
    shape("pong", payload=fields(timestamp=leaves) | frame_like),
    shape("result", session_id=leaves, num_turns=leaves, usage=fields(output_tokens=leaves)),
    shape("error", payload=fields(message=leaves, code=leaves, details=frame_like) | frame_like),
    shape("system", subtype=leaves, session_id=leaves),
    shape("tool_call", payload=fields(callId=leaves, toolName=leaves, input=frame_like)),
    shape("control", payload=fields(action=leaves, data=shaped(frame_like) | frame_like)),
    shape(
        "control",
        payload=fields(
            action=st.just("tool_cancel"),
            data=fields(callId=leaves, reason=leaves) | shaped(frame_like) | frame_like,
        ),
    ),
)
actions = st.lists(
    st.one_of(
        st.just("turn"),
        st.just(READY),
        st.just(result()),
        st.just(error("SESSION_ERROR")),
        st.text(),
        frames,
        targeted,
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(actions)
def test_the_client_machine_never_raises_on_input(steps: list[str]) -> None:
    proto = ClientProtocol({})
    proto.start()
    for step in steps:
        if step == "turn":
            if proto.state is ClientState.OPEN:
                proto.send_turn("x")
            continue
        before = proto.open_turns
        proto.receive(step)
        assert 0 <= proto.open_turns <= before
    assert proto.connection_lost() >= 0
