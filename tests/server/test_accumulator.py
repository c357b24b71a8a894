"""MessageAccumulator: folding Anthropic raw-stream events into the final message."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chucky.server.providers import MessageAccumulator


def fold(events: list[dict[str, Any]]) -> MessageAccumulator:
    acc = MessageAccumulator()
    for event in events:
        acc.feed(event)
    return acc


def start(usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "usage": usage if usage is not None else {"input_tokens": 10, "output_tokens": 1},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": body}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None, usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": usage}


def test_empty_accumulator() -> None:
    acc = MessageAccumulator()
    assert acc.content == []
    assert acc.text == ""
    assert acc.tool_uses == []
    assert acc.stop_reason is None
    assert acc.model is None
    assert acc.message_id is None
    assert acc.usage == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_text_message() -> None:
    acc = fold(
        [
            start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, {"type": "text_delta", "text": "Hello"}),
            delta(0, {"type": "text_delta", "text": ", world"}),
            stop(0),
            message_delta("end_turn", {"output_tokens": 7}),
            {"type": "message_stop"},
        ]
    )
    assert acc.content == [{"type": "text", "text": "Hello, world"}]
    assert acc.text == "Hello, world"
    assert acc.stop_reason == "end_turn"
    assert acc.message_id == "msg_1"
    assert acc.model == "claude-sonnet-4-5"


def test_tool_use_json_fragments() -> None:
    acc = fold(
        [
            start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, {"type": "text_delta", "text": "Checking."}),
            stop(0),
            block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {}}),
            delta(1, {"type": "input_json_delta", "partial_json": ""}),
            delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Pa'}),
            delta(1, {"type": "input_json_delta", "partial_json": 'ris", "days": [1,'}),
            delta(1, {"type": "input_json_delta", "partial_json": " 2]}"}),
            stop(1),
            block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "noargs", "input": {}}),
            delta(2, {"type": "input_json_delta", "partial_json": ""}),
            stop(2),
            block_start(3, {"type": "tool_use", "id": "toolu_3", "name": "nodelta", "input": {}}),
            stop(3),
            message_delta("tool_use", {"output_tokens": 30}),
        ]
    )
    assert acc.text == "Checking."
    assert acc.tool_uses == [
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "get",
            "input": {"city": "Paris", "days": [1, 2]},
        },
        {"type": "tool_use", "id": "toolu_2", "name": "noargs", "input": {}},
        {"type": "tool_use", "id": "toolu_3", "name": "nodelta", "input": {}},
    ]
    assert acc.stop_reason == "tool_use"


def test_interleaved_tool_fragments_stay_apart() -> None:
    acc = fold(
        [
            block_start(0, {"type": "tool_use", "id": "a", "name": "a", "input": {}}),
            block_start(1, {"type": "tool_use", "id": "b", "name": "b", "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": '{"x":'}),
            delta(1, {"type": "input_json_delta", "partial_json": '{"y":'}),
            delta(0, {"type": "input_json_delta", "partial_json": "1}"}),
            delta(1, {"type": "input_json_delta", "partial_json": "2}"}),
            stop(1),
            stop(0),
        ]
    )
    assert [u["input"] for u in acc.tool_uses] == [{"x": 1}, {"y": 2}]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": ', {"_raw_arguments": '{"a": '}),
        ("not json", {"_raw_arguments": "not json"}),
        ("[1, 2]", {"value": [1, 2]}),
        ('"text"', {"value": "text"}),
        ("   ", {}),
        ("[" * 100_000, {"_raw_arguments": "[" * 100_000}),
    ],
)
def test_broken_or_non_object_json_input(raw: str, expected: dict[str, Any]) -> None:
    acc = fold(
        [
            block_start(0, {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": raw}),
            stop(0),
        ]
    )
    assert acc.tool_uses[0]["input"] == expected


def test_deeply_nested_json_input_does_not_crash() -> None:
    raw = "[" * 100_000 + "]" * 100_000
    acc = fold(
        [
            block_start(0, {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": raw}),
            stop(0),
        ]
    )
    assert acc.tool_uses[0]["input"] == {"_raw_arguments": raw}


def test_thinking_and_signature() -> None:
    acc = fold(
        [
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
            delta(0, {"type": "thinking_delta", "thinking": "think."}),
            delta(0, {"type": "signature_delta", "signature": "sig=="}),
            stop(0),
            block_start(1, {"type": "text", "text": ""}),
            delta(1, {"type": "text_delta", "text": "Answer"}),
            stop(1),
        ]
    )
    assert acc.content == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
        {"type": "text", "text": "Answer"},
    ]
    assert acc.text == "Answer"


def test_usage_from_start_and_delta() -> None:
    acc = fold(
        [
            start(
                {
                    "input_tokens": 100,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 20,
                    "cache_read_input_tokens": 30,
                    "service_tier": "standard",
                }
            ),
            message_delta("end_turn", {"output_tokens": 42}),
        ]
    )
    assert acc.usage == {
        "input_tokens": 100,
        "output_tokens": 42,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 30,
    }


def test_usage_in_message_delta_may_update_input() -> None:
    acc = fold(
        [
            start({"input_tokens": 5, "output_tokens": 1}),
            message_delta(None, {"input_tokens": 9, "output_tokens": 3.0}),
        ]
    )
    assert acc.usage["input_tokens"] == 9
    assert acc.usage["output_tokens"] == 3
    assert acc.stop_reason is None


@pytest.mark.parametrize("bad", [None, "7", True, math.nan, math.inf, -math.inf, [1], {"n": 1}])
def test_malformed_usage_values_are_ignored(bad: Any) -> None:
    acc = fold(
        [
            start({"input_tokens": 5, "output_tokens": 1}),
            message_delta("end_turn", {"input_tokens": bad, "output_tokens": bad}),
        ]
    )
    assert acc.usage["input_tokens"] == 5
    assert acc.usage["output_tokens"] == 1


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": "ping"},
        {"type": "error", "error": {"type": "overloaded_error"}},
        {"type": "message_start"},
        {"type": "message_start", "message": "nope"},
        {"type": "message_start", "message": {"usage": "nope"}},
        {"type": "message_delta"},
        {"type": "message_delta", "delta": "nope", "usage": None},
        {"type": "content_block_start"},
        {"type": "content_block_start", "index": 0},
        {"type": "content_block_start", "index": "0", "content_block": {"type": "text"}},
        {"type": "content_block_start", "index": -1, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 5, "delta": {"type": "text_delta", "text": "x"}},
        {"type": "content_block_delta", "index": -1, "delta": {"type": "text_delta"}},
        {"type": "content_block_delta", "index": 0},
        {"type": "content_block_delta", "index": 0, "delta": "x"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "mystery_delta"}},
        {"type": "content_block_stop"},
        {"type": "content_block_stop", "index": 9},
        {"type": "content_block_stop", "index": "0"},
    ],
)
def test_malformed_events_are_ignored(event: dict[str, Any]) -> None:
    acc = fold(
        [
            start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, {"type": "text_delta", "text": "ok"}),
            event,
            stop(0),
            message_delta("end_turn", {"output_tokens": 2}),
        ]
    )
    assert acc.content == [{"type": "text", "text": "ok"}]
    assert acc.stop_reason == "end_turn"
    assert acc.message_id == "msg_1"
    assert acc.usage["input_tokens"] == 10
    assert acc.usage["output_tokens"] == 2


def test_negative_index_on_empty_message_is_ignored() -> None:
    acc = fold([block_start(-1, {"type": "text", "text": "x"})])
    assert acc.content == []


def test_non_string_text_in_a_start_block() -> None:
    acc = fold(
        [
            block_start(0, {"type": "text", "text": None}),
            block_start(1, {"type": "text", "text": None}),
            delta(0, {"type": "text_delta", "text": "a"}),
            block_start(2, {"type": "thinking", "thinking": 3}),
            delta(2, {"type": "thinking_delta", "thinking": "t"}),
        ]
    )
    assert acc.text == "a"
    assert acc.content[2]["thinking"] == "t"


def test_gap_in_block_indexes_is_padded() -> None:
    acc = fold(
        [
            block_start(1, {"type": "text", "text": ""}),
            delta(1, {"type": "text_delta", "text": "late"}),
        ]
    )
    assert acc.content == [{"type": "text", "text": ""}, {"type": "text", "text": "late"}]


def test_message_start_keeps_earlier_id_when_missing() -> None:
    acc = fold([start(), {"type": "message_start", "message": {"id": "", "model": None}}])
    assert acc.message_id == "msg_1"
    assert acc.model == "claude-sonnet-4-5"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=50),
)
def test_any_fragmentation_reassembles_the_input(payload: dict[str, Any], cuts: list[int]) -> None:
    import json

    raw = json.dumps(payload)
    fragments, at = [], 0
    for size in cuts * (len(raw) // max(1, sum(cuts)) + 1):
        if at >= len(raw):
            break
        fragments.append(raw[at : at + size])
        at += size
    events = [block_start(0, {"type": "tool_use", "id": "t", "name": "n", "input": {}})]
    events += [delta(0, {"type": "input_json_delta", "partial_json": f}) for f in fragments]
    events.append(stop(0))
    assert fold(events).tool_uses[0]["input"] == payload


# -- per-message memo ------------------------------------------------------------------------


def test_a_message_memo_remembers_a_session_message_while_it_lives() -> None:
    import gc

    from chucky.server.providers.base import MessageMemo
    from chucky.server.store import SessionRecord

    computed: list[str] = []

    def size(message: Any) -> int:
        computed.append(message["content"])
        return len(message["content"])

    memo = MessageMemo(size)
    session = SessionRecord("s", "p", "u", "m", 0.0, 0.0)
    session.append("user", "hello")
    session.append("assistant", "hi there")
    assert [memo(m) for m in session.model_messages()] == [5, 8]
    assert [memo(m) for m in session.model_messages()] == [5, 8]
    assert computed == ["hello", "hi there"]  # once each
    plain = {"role": "user", "content": "abc"}
    assert memo(plain) == 3 and memo(plain) == 3
    assert computed[2:] == ["abc", "abc"]  # a plain dict is not remembered (nor kept)
    del session
    gc.collect()
    assert memo._known == {}  # nothing outlives its message


def test_a_memo_total_over_a_session_view_costs_only_the_new_messages() -> None:
    import operator

    from chucky.server.providers.base import MessageMemo
    from chucky.server.store import SessionRecord

    computed: list[str] = []

    def size(message: Any) -> int:
        computed.append(message["content"])
        return len(message["content"])

    memo = MessageMemo(size)
    session = SessionRecord("s", "p", "u", "m", 0.0, 0.0)
    view = session.model_messages()
    assert memo.total(view, operator.add, 0) == 0
    session.append("user", "hello")
    session.append("assistant", "hi there")
    assert memo.total(view, operator.add, 0) == 13
    session.append("user", "more")
    computed.clear()
    assert memo.total(view, operator.add, 0) == 17
    assert computed == ["more"]  # the history was not walked again
    # The last message taken back and another appended: the totals follow the view.
    session.drop_last()
    assert memo.total(view, operator.add, 0) == 13
    session.append("user", "four")
    session.drop_last()
    session.append("user", "a longer one")
    assert memo.total(view, operator.add, 0) == 25
    assert memo.total(list(view), operator.add, 0) == 25  # a plain list: summed, not kept
    # Replaced: a new view, summed from scratch.
    session.replace_transcript([{"uuid": "x", "role": "user", "content": "xy"}])
    assert memo.total(session.model_messages(), operator.add, 0) == 2


def test_estimates_over_a_growing_session_are_not_walks_of_its_history() -> None:
    from chucky.server.providers.base import ModelRequest
    from chucky.server.providers.scripted import ScriptedProvider, count_input_tokens
    from chucky.server.store import SessionRecord

    session = SessionRecord("s", "p", "u", "m", 0.0, 0.0)
    for i in range(200):
        session.append("user" if i % 2 == 0 else "assistant", f"message {i} " * (i % 7 + 1))
    request = ModelRequest(model="m", system="sys", messages=session.model_messages())
    plain = ModelRequest(model="m", system="sys", messages=list(session.model_messages()))
    provider = ScriptedProvider()
    # The same answers as a walk of a plain list, before and after the view grows.
    for _ in range(2):
        assert count_input_tokens(request) == count_input_tokens(plain)
        assert provider.estimate_input_tokens(request) == count_input_tokens(plain)
        base = super(ScriptedProvider, provider).estimate_input_tokens
        assert base(request) == base(plain)
        session.append("user", [{"type": "text", "text": "a block"}])
        plain = ModelRequest(model="m", system="sys", messages=list(session.model_messages()))
