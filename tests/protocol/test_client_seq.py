"""The client side of the seq extension (docs/protocol.md section 10), fed frames by hand: no
sockets. Numbering, the resume init, resumed / replay_unavailable, turn ids, ack."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chucky.errors import AuthenticationError, ConnectionError, InvalidStateError, SessionError
from chucky.messages import AssistantMessage, ResultMessage, StreamEventMessage
from chucky.protocol.client import (
    EXTENSIONS,
    ClientProtocol,
    ClientState,
    Ignored,
    Pong,
    Ready,
    ReplayUnavailable,
    Resumed,
    ResumeFailed,
    ServerClosing,
    SessionInfo,
    ToolCall,
    TurnFailed,
)
from chucky.protocol.resume import TURN_ID_PATTERN, DeliveredUuids, SeqCursor
from chucky.protocol.server_frames import decode_server_frame, decode_server_frame_seq

READY = '{"type":"control","payload":{"action":"ready"}}'
INIT = {
    "model": "sonnet",
    "chuckyExtensions": list(EXTENSIONS),
    "continue": True,
    "forkSession": True,
    "resumeSessionAt": "m-3",
    "messages": [{"role": "user", "content": "seeded"}],
}


def numbered(seq: int, frame: dict[str, Any]) -> str:
    return json.dumps({**frame, "seq": seq})


def session_info(seq: int = 1, session_id: str = "sess-1") -> str:
    data = {"sessionId": session_id, "resume": {"graceSeconds": 30}}
    return numbered(seq, {"type": "control", "payload": {"action": "session_info", "data": data}})


def assistant(seq: int, uuid: str, text: str = "hi") -> str:
    return numbered(
        seq,
        {
            "type": "assistant",
            "uuid": uuid,
            "session_id": "sess-1",
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        },
    )


def delta(seq: int, text: str = "d") -> str:
    return numbered(
        seq,
        {
            "type": "stream_event",
            "uuid": f"ev-{seq}",
            "session_id": "sess-1",
            "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}},
        },
    )


def result(seq: int, uuid: str = "r-1") -> str:
    return numbered(
        seq, {"type": "result", "subtype": "success", "uuid": uuid, "session_id": "sess-1"}
    )


def error(code: str, reason: str, seq: int | None = None) -> str:
    frame = {
        "type": "error",
        "payload": {"message": "m", "code": code, "details": {"reason": reason}},
    }
    return json.dumps(frame) if seq is None else numbered(seq, frame)


def control(action: str, **data: Any) -> str:
    return json.dumps({"type": "control", "payload": {"action": action, "data": data}})


def opened(**kwargs: Any) -> ClientProtocol:
    """A seq client past the handshake of a session the server numbers (seq 1 received)."""
    proto = ClientProtocol(dict(INIT), seq=True, **kwargs)
    proto.start()
    assert proto.receive(READY) == Ready()
    assert isinstance(proto.receive(session_info()), SessionInfo)
    return proto


def detached(**kwargs: Any) -> ClientProtocol:
    proto = opened(**kwargs)
    proto.detach()
    return proto


# --- decoding ---------------------------------------------------------------------------------


def test_seq_is_taken_off_before_the_message_is_built() -> None:
    frame, seq = decode_server_frame_seq(assistant(7, "u-1"))
    assert seq == 7
    assert isinstance(frame, AssistantMessage)
    assert "seq" not in frame and "seq" not in (frame.model_extra or {})
    assert "seq" not in frame.to_wire()
    assert decode_server_frame(assistant(7, "u-1")) == frame


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True, None, [1]])
def test_a_seq_that_is_no_positive_integer_counts_as_none(value: Any) -> None:
    text = json.dumps({"type": "pong", "payload": {}, "seq": value})
    frame, seq = decode_server_frame_seq(text)
    assert seq is None
    assert frame.type == "pong"


def test_the_sdk_message_envelope_carries_the_seq() -> None:
    inner = {"type": "result", "subtype": "success", "session_id": "s"}
    frame, seq = decode_server_frame_seq(
        json.dumps({"type": "sdk_message", "payload": inner, "seq": 4})
    )
    assert seq == 4 and isinstance(frame, ResultMessage)


# --- announcing, numbering ---------------------------------------------------------------------


def test_seq_is_announced_only_when_the_client_may_reconnect() -> None:
    plain = json.loads(ClientProtocol(dict(INIT)).start())["payload"]
    assert plain["chuckyExtensions"] == ["interrupt", "tool_cancel"]
    with_seq = json.loads(ClientProtocol(dict(INIT), seq=True).start())["payload"]
    assert with_seq["chuckyExtensions"] == ["interrupt", "tool_cancel", "seq"]
    # The first init is the session's options as given: history and all.
    assert with_seq["messages"] == INIT["messages"] and with_seq["continue"] is True


def test_a_frame_at_or_below_the_last_seq_is_dropped() -> None:
    proto = opened()
    assert isinstance(proto.receive(delta(2, "a")), StreamEventMessage)
    assert isinstance(proto.receive(delta(3, "b")), StreamEventMessage)
    assert proto.receive(delta(3, "b")) == Ignored("seq 3 already received")
    assert proto.receive(delta(2, "a")) == Ignored("seq 2 already received")
    assert proto.cursor.last_seq == 3
    # A gap is no error: the highest seq counts.
    assert isinstance(proto.receive(delta(9)), StreamEventMessage)
    assert proto.cursor.last_seq == 9


def test_without_seq_numbers_are_ignored() -> None:
    proto = ClientProtocol({})
    proto.receive(READY)
    assert isinstance(proto.receive(delta(2)), StreamEventMessage)
    assert isinstance(proto.receive(delta(2)), StreamEventMessage)  # not deduplicated
    assert proto.cursor.last_seq == 0 and not proto.resumable


def test_resumable_needs_a_numbering_server_and_a_session_id() -> None:
    proto = ClientProtocol({}, seq=True)
    proto.receive(READY)
    assert not proto.resumable  # nothing numbered yet
    with pytest.raises(InvalidStateError):
        proto.detach()
    # session_info with "resume" says the server keeps what a resume needs.
    info = {
        "type": "control",
        "payload": {"action": "session_info", "data": {"sessionId": "s", "resume": {}}},
    }
    proto.receive(json.dumps(info))
    assert proto.resumable
    proto.receive(json.dumps({"type": "control", "payload": {"action": "close"}}))
    assert not proto.resumable  # the server ended the session cleanly


def test_session_info_without_resume_data_and_without_seq_is_no_numbering() -> None:
    proto = ClientProtocol({}, seq=True)
    proto.receive(READY)
    proto.receive(control("session_info", sessionId="s"))
    assert not proto.cursor.numbered and not proto.resumable


# --- turns ------------------------------------------------------------------------------------


def test_every_turn_has_a_fresh_valid_turn_id() -> None:
    proto = opened()
    ids = [json.loads(proto.send_turn("x"))["turnId"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(TURN_ID_PATTERN.fullmatch(turn_id) for turn_id in ids)


def test_turns_not_ended_are_sent_again_oldest_first_with_their_ids() -> None:
    counter = iter(range(100))
    proto = opened(turn_id=lambda: f"t{next(counter)}")
    first = proto.send_turn("one")
    second = proto.send_turn("two")
    third = proto.send_turn("three")
    assert isinstance(proto.receive(result(2)), ResultMessage)  # "one" ended
    assert isinstance(proto.receive(error("PROVIDER_ERROR", "provider_unavailable", 3)), TurnFailed)
    assert proto.resend() == [third]
    assert json.loads(third)["turnId"] == "t2"
    assert first != second


def test_a_turn_sent_while_detached_is_kept_and_sent_with_the_others() -> None:
    proto = detached(turn_id=lambda: "t-late")
    text = proto.send_turn("while away")
    assert proto.open_turns == 1
    assert proto.resend() == [text]


def test_without_seq_no_turn_frame_is_kept() -> None:
    proto = ClientProtocol({})
    proto.receive(READY)
    proto.send_turn("x" * 1000)
    assert proto.open_turns == 1
    assert proto.resend() == []


# --- resuming ---------------------------------------------------------------------------------


def test_the_resume_init_names_the_session_and_the_last_seq_without_the_opening_options() -> None:
    proto = opened()
    proto.receive(delta(2))
    proto.receive(delta(5))
    proto.detach()
    assert proto.state is ClientState.DETACHED
    payload = json.loads(proto.resume())["payload"]
    assert payload == {
        "model": "sonnet",
        "chuckyExtensions": ["interrupt", "tool_cancel", "seq"],
        "sessionId": "sess-1",
        "lastSeq": 5,
    }
    assert proto.state is ClientState.RESUMING


def test_resume_outside_detached_is_refused() -> None:
    proto = opened()
    with pytest.raises(InvalidStateError):
        proto.resume()


def test_resumed_replays_and_the_session_is_open_again() -> None:
    proto = detached()
    proto.send_turn("t")
    proto.resume()
    assert proto.receive(READY) == Ready()
    assert proto.state is ClientState.RESUMING
    event = proto.receive(control("resumed", sessionId="sess-1", lastSeq=1, replayed=2))
    assert event == Resumed("sess-1", 1, 2)
    assert proto.state is ClientState.OPEN
    assert isinstance(proto.receive(assistant(2, "u-2")), AssistantMessage)
    assert isinstance(proto.receive(result(3)), ResultMessage)
    assert proto.open_turns == 0


def test_a_replay_that_overlaps_repeats_nothing() -> None:
    proto = opened()
    proto.send_turn("t")
    for seq in (2, 3, 4):
        proto.receive(delta(seq))
    proto.detach()
    proto.resume()
    proto.receive(control("resumed", sessionId="sess-1", lastSeq=4, replayed=4))
    delivered = [proto.receive(delta(seq)) for seq in (2, 3, 4, 5)]
    assert [type(e).__name__ for e in delivered] == ["Ignored"] * 3 + ["StreamEventMessage"]


def test_replay_unavailable_ends_no_turn_and_a_new_numbering_starts() -> None:
    proto = detached()
    proto.send_turn("t")
    proto.resume()
    proto.receive(READY)
    event = proto.receive(error("SESSION_ERROR", "replay_unavailable"))
    assert isinstance(event, ReplayUnavailable)
    assert isinstance(event.error, SessionError)
    assert proto.open_turns == 1  # unlike an error frame in a turn (section 4)
    assert proto.state is ClientState.REOPENING
    assert proto.cursor.last_seq == 0
    # A pong may come while the server opens the session.
    pong = json.dumps({"type": "pong", "payload": {"timestamp": 5}})
    assert proto.receive(pong) == Pong(5)
    info = proto.receive(session_info(1))
    assert isinstance(info, SessionInfo) and info.reopened
    assert proto.state is ClientState.OPEN
    assert proto.cursor.last_seq == 1


def test_after_a_resume_messages_delivered_already_are_dropped_by_uuid() -> None:
    proto = opened()
    proto.send_turn("t")
    assert isinstance(proto.receive(assistant(2, "u-a1")), AssistantMessage)
    proto.detach()
    proto.resume()
    proto.receive(error("SESSION_ERROR", "replay_unavailable"))
    proto.receive(session_info(1))
    # The server sends the re-sent turn's stored messages again, with their first uuid.
    assert proto.receive(assistant(2, "u-a1")) == Ignored("message u-a1 already delivered")
    assert isinstance(proto.receive(assistant(3, "u-a2")), AssistantMessage)
    assert isinstance(proto.receive(result(4, "u-r")), ResultMessage)
    # A result sent again (a turn whose end crossed the re-sent frame) is dropped too.
    assert proto.receive(result(5, "u-r")) == Ignored("message u-r already delivered")
    assert proto.open_turns == 0


def test_before_any_resume_a_repeated_uuid_is_delivered() -> None:
    proto = opened()
    assert isinstance(proto.receive(assistant(2, "same")), AssistantMessage)
    assert isinstance(proto.receive(assistant(3, "same")), AssistantMessage)


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        ("SESSION_ERROR", "session_busy", SessionError),
        ("SESSION_ERROR", "session_not_found", SessionError),
        ("AUTHENTICATION_ERROR", "token_expired", AuthenticationError),
    ],
)
def test_another_error_answering_a_resume_fails_the_attempt(
    code: str, reason: str, cls: type[Exception]
) -> None:
    proto = detached()
    proto.send_turn("t")
    proto.resume()
    event = proto.receive(error(code, reason))
    assert isinstance(event, ResumeFailed) and isinstance(event.error, cls)
    assert proto.state is ClientState.DETACHED
    assert proto.open_turns == 1
    proto.resume()  # the next attempt


def test_an_error_while_reopening_fails_the_attempt() -> None:
    proto = detached()
    proto.resume()
    proto.receive(error("SESSION_ERROR", "replay_unavailable"))
    event = proto.receive(error("SESSION_ERROR", "session_busy", 1))
    assert isinstance(event, ResumeFailed)
    assert proto.state is ClientState.DETACHED


def test_a_server_that_answers_a_resume_without_resuming_does_not_speak_seq() -> None:
    proto = detached()
    proto.resume()
    proto.receive(READY)
    event = proto.receive(control("session_info", sessionId="sess-1"))
    assert isinstance(event, ResumeFailed)
    assert isinstance(event.error, ConnectionError)
    assert event.error.reason == "resume_unsupported"


def test_a_lost_socket_while_resuming_detaches_again() -> None:
    proto = detached()
    proto.resume()
    proto.detach()
    assert proto.state is ClientState.DETACHED


def test_tool_calls_and_closing_after_a_resume() -> None:
    proto = detached()
    proto.resume()
    proto.receive(control("resumed", sessionId="sess-1", lastSeq=1, replayed=0))
    call = {"type": "tool_call", "payload": {"callId": "c", "toolName": "t", "input": {}}}
    assert proto.receive(numbered(2, call)) == ToolCall("c", "t", {})
    assert proto.receive(numbered(2, call)) == Ignored("seq 2 already received")
    assert proto.receive(json.dumps({"type": "control", "payload": {"action": "close"}})) == (
        ServerClosing()
    )
    assert not proto.resumable


def test_connection_lost_forgets_the_turns() -> None:
    proto = detached()
    proto.send_turn("t")
    assert proto.connection_lost() == 1
    assert proto.resend() == [] and proto.state is ClientState.CLOSED


# --- ack --------------------------------------------------------------------------------------


def test_ack_names_the_last_seq_once_per_turn_end() -> None:
    proto = opened()
    proto.send_turn("t")
    proto.receive(delta(2))
    proto.receive(result(3))
    assert json.loads(proto.ack() or "") == {
        "type": "control",
        "payload": {"action": "ack", "data": {"seq": 3}},
    }
    assert proto.ack() is None  # nothing new


def test_no_ack_without_a_numbering_server_or_while_resuming() -> None:
    plain = ClientProtocol({}, seq=True)
    plain.receive(READY)
    plain.send_turn("t")
    plain.receive(json.dumps({"type": "result", "subtype": "success"}))
    assert plain.ack() is None
    proto = detached()
    assert proto.ack() is None


# --- the pieces -------------------------------------------------------------------------------


def test_seq_cursor_restart_and_take_ack() -> None:
    cursor = SeqCursor()
    assert cursor.accept(None) and cursor.take_ack() is None
    assert cursor.accept(1) and cursor.take_ack() == 1
    cursor.restart()
    assert cursor.last_seq == 0 and cursor.accept(1)


def test_delivered_uuids_forget_the_oldest() -> None:
    uuids = DeliveredUuids(limit=2)
    for value in ("a", "b", "a", "c"):
        uuids.add(value)
    assert "a" not in uuids and "b" in uuids and "c" in uuids and len(uuids) == 2
