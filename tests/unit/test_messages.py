"""SDK messages and content blocks (chucky.messages, docs/protocol.md section 4)."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.errors import BudgetExceededError, ChuckyError, RateLimitError, SessionNotFoundError
from chucky.messages import (
    AssistantBody,
    AssistantMessage,
    Base64Source,
    DocumentBlock,
    ErrorMessage,
    ImageBlock,
    ResultMessage,
    StreamEventMessage,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
    UnknownMessage,
    Usage,
    UserBody,
    UserMessage,
    get_assistant_text,
    get_result_text,
    parse_content,
    parse_message,
)

ASSISTANT: dict[str, Any] = {
    "type": "assistant",
    "uuid": "u1",
    "session_id": "s",
    "parent_tool_use_id": None,
    "message": {
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "id": "msg_1",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "content": [
            {"type": "thinking", "thinking": "Let me think", "signature": "sig"},
            {"type": "text", "text": "Adding "},
            {"type": "tool_use", "id": "tu1", "name": "mcp__calc__add", "input": {"a": 1}},
            {"type": "text", "text": "now."},
            {"type": "tool_use", "id": "tu2", "name": "mcp__calc__mul", "input": {}},
        ],
    },
}


def test_parse_system() -> None:
    raw = {
        "type": "system",
        "subtype": "init",
        "uuid": "u",
        "session_id": "s",
        "cwd": "/w",
        "tools": ["Read"],
        "mcp_servers": [{"name": "calc", "status": "connected"}],
        "model": "m",
        "permissionMode": "default",
    }
    msg = parse_message(raw)
    assert isinstance(msg, SystemMessage)
    assert (msg.subtype, msg.session_id, msg.cwd, msg.model) == ("init", "s", "/w", "m")
    assert msg.permission_mode == "default"
    assert msg.mcp_servers == [{"name": "calc", "status": "connected"}]


def test_parse_system_status() -> None:
    msg = parse_message({"type": "system", "subtype": "status", "status": "thinking"})
    assert isinstance(msg, SystemMessage)
    assert msg.subtype == "status"
    assert msg["status"] == "thinking"


def test_parse_assistant() -> None:
    msg = parse_message(ASSISTANT)
    assert isinstance(msg, AssistantMessage)
    content = msg.message.content
    assert [type(block) for block in content] == [
        ThinkingBlock,
        TextBlock,
        ToolUseBlock,
        TextBlock,
        ToolUseBlock,
    ]
    assert msg.text == "Adding now."
    assert [use.id for use in msg.tool_uses] == ["tu1", "tu2"]
    assert msg.tool_uses[0].input == {"a": 1}
    assert msg.message.usage == Usage(input_tokens=3, output_tokens=4)
    assert msg.message.stop_reason == "tool_use"


def test_parse_user_echo_and_string_content() -> None:
    echo = parse_message(
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "tu1",
                        "content": [{"type": "text", "text": "2"}],
                        "is_error": True,
                    }
                ],
            },
        }
    )
    assert isinstance(echo, UserMessage)
    assert isinstance(echo.message.content, list)
    block = echo.message.content[0]
    assert isinstance(block, ToolResultBlock)
    assert block.is_error is True
    assert block.content == [{"type": "text", "text": "2"}]
    plain = parse_message({"type": "user", "message": {"content": "hi"}})
    assert isinstance(plain, UserMessage)
    assert plain.message.content == "hi"


def test_parse_image_and_document_blocks() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "AA=="}
    content = parse_content(
        [
            {"type": "image", "source": source},
            {"type": "document", "source": {"type": "url", "url": "u"}, "title": "T"},
        ]
    )
    assert isinstance(content, list)
    image, document = content
    assert isinstance(image, ImageBlock)
    assert isinstance(image.source, Base64Source)
    assert image.source.media_type == "image/png"
    assert image.to_wire() == {"type": "image", "source": source}
    assert isinstance(document, DocumentBlock)
    assert document.title == "T"
    assert document.source == {"type": "url", "url": "u"}


def test_parse_content_string() -> None:
    assert parse_content("hello") == "hello"


def test_parse_stream_event() -> None:
    msg = parse_message({"type": "stream_event", "event": {"type": "message_start"}})
    assert isinstance(msg, StreamEventMessage)
    assert msg.event == {"type": "message_start"}


def test_parse_result() -> None:
    msg = parse_message(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "errors": ["interrupted"],
            "num_turns": 1,
            "structured_output": {"answer": 4},
        }
    )
    assert isinstance(msg, ResultMessage)
    assert msg.is_error is True
    assert msg.errors == ["interrupted"]
    assert msg.structured_output == {"answer": 4}
    assert msg.usage == Usage()
    assert msg.result is None


def test_parse_error() -> None:
    msg = parse_message({"type": "error", "error": {"message": "Rate limit", "code": "RATE_LIMIT"}})
    assert isinstance(msg, ErrorMessage)
    assert isinstance(msg.exception, RateLimitError)


def test_unknown_message_type_is_preserved() -> None:
    raw = {"type": "tool_progress", "tool_use_id": "tu1", "elapsed": 3}
    msg = parse_message(raw)
    assert isinstance(msg, UnknownMessage)
    assert msg.type == "tool_progress"
    assert msg["elapsed"] == 3
    assert msg.model_extra == {"tool_use_id": "tu1", "elapsed": 3}
    assert dict(msg) == raw


def test_unknown_content_block_is_preserved() -> None:
    raw = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "server_tool_use", "id": "x", "name": "web_search", "input": {"q": "a"}},
                {"type": "text", "text": "found"},
            ]
        },
    }
    msg = parse_message(raw)
    assert isinstance(msg, AssistantMessage)
    block = msg.message.content[0]
    assert isinstance(block, UnknownBlock)
    assert block.type == "server_tool_use"
    assert block["name"] == "web_search"
    assert block.to_wire() == raw["message"]["content"][0]
    assert msg.text == "found"
    assert msg["message"]["content"][0] is raw["message"]["content"][0]


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "assistant", "message": {"content": [{"type": ["x"]}]}},
        {"type": "assistant", "message": {"content": [{"type": {"a": 1}}]}},
        {"type": ["assistant"]},
    ],
)
def test_unhashable_types_are_validation_errors(raw: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_message(raw)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "assistant"}, "message"),
        ({"type": "stream_event"}, "event"),
        ({"type": "result", "is_error": "perhaps"}, "is_error"),
        ({"type": "assistant", "message": {"content": [{"type": "text"}]}}, "text"),
        ({"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "x"}]}}, "name"),
    ],
)
def test_malformed_known_messages_raise_validation_errors(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        parse_message(raw)


# --- mapping access ---------------------------------------------------------------------------


def test_mapping_access_over_the_original_dict() -> None:
    raw = copy.deepcopy(ASSISTANT) | {"extra_field": [1, 2]}
    msg = parse_message(raw)
    assert msg.get("type") == "assistant"
    assert msg.get("missing") is None
    assert msg.get("missing", "d") == "d"
    assert msg["message"]["content"][1]["text"] == "Adding "
    assert msg["message"] is raw["message"]
    assert msg["extra_field"] == [1, 2]
    assert dict(msg) == raw
    assert "uuid" in msg
    assert "nope" not in msg
    assert len(msg) == len(raw)
    assert list(msg) == list(raw)
    assert list(msg.keys()) == list(raw.keys())
    assert list(msg.values()) == list(raw.values())
    assert list(msg.items()) == list(raw.items())
    with pytest.raises(KeyError):
        msg["nope"]


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (
            AssistantMessage(
                session_id="s", message=AssistantBody(content=[TextBlock(text="hi")], model="m")
            ),
            {
                "type": "assistant",
                "session_id": "s",
                "parent_tool_use_id": None,
                "message": {
                    "role": "assistant",
                    "model": "m",
                    "content": [{"type": "text", "text": "hi"}],
                },
            },
        ),
        (
            UserMessage(message=UserBody(content="x")),
            {
                "type": "user",
                "parent_tool_use_id": None,
                "message": {"role": "user", "content": "x"},
            },
        ),
        (
            StreamEventMessage(event={"type": "message_stop"}),
            {"type": "stream_event", "parent_tool_use_id": None, "event": {"type": "message_stop"}},
        ),
        (
            SystemMessage(session_id="s", permission_mode="plan"),
            {"type": "system", "subtype": "init", "session_id": "s", "permissionMode": "plan"},
        ),
        (
            ResultMessage(subtype="error_max_turns", is_error=True, errors=["max turns"]),
            {
                "type": "result",
                "subtype": "error_max_turns",
                "is_error": True,
                "num_turns": 0,
                "duration_ms": 0,
                "duration_api_ms": 0,
                "total_cost_usd": 0.0,
                "usage": {
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
                "errors": ["max turns"],
            },
        ),
        (
            ErrorMessage(error={"message": "x", "code": "RATE_LIMIT"}),
            {"type": "error", "error": {"message": "x", "code": "RATE_LIMIT"}},
        ),
        (ToolUseBlock(id="t", name="n"), {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
        (ThinkingBlock(thinking="z"), {"type": "thinking", "thinking": "z"}),
    ],
)
def test_models_built_in_code_serialise_and_map_their_wire_form(
    message: Any, wire: dict[str, Any]
) -> None:
    assert message.to_wire() == wire
    assert dict(message) == wire
    assert list(message) == list(message.to_wire())
    assert len(message) == len(wire)
    assert message["type"] == wire["type"]


def test_parsed_messages_round_trip_through_the_wire_form() -> None:
    msg = parse_message(ASSISTANT)
    again = parse_message(msg.to_wire())
    assert again == msg


def test_equality_does_not_depend_on_the_cached_mapping_view() -> None:
    first = ResultMessage(session_id="s", result="hi")
    second = ResultMessage(session_id="s", result="hi")
    assert first == second
    assert first.get("result") == "hi"  # computes the first one's mapping view
    assert first == second
    assert parse_message(first.to_wire()) == first
    assert ResultMessage(session_id="other") != first
    error = ErrorMessage(error={"message": "x"})
    assert error.exception is not None
    assert error == ErrorMessage(error={"message": "x"})
    assert first != "not a model"


def test_model_copy_with_update_refreshes_the_mapping_view() -> None:
    msg = parse_message({"type": "result", "subtype": "success", "session_id": "old", "extra": 1})
    assert msg["session_id"] == "old"
    changed = msg.model_copy(update={"session_id": "new"})
    assert changed.session_id == "new"
    assert changed["session_id"] == "new"
    assert changed["extra"] == 1
    assert msg["session_id"] == "old"
    same = msg.model_copy()
    assert same["session_id"] == "old"


def test_model_copy_of_an_error_message_refreshes_the_exception() -> None:
    msg = ErrorMessage(error={"message": "Rate limit", "code": "RATE_LIMIT"})
    assert isinstance(msg.exception, RateLimitError)
    changed = msg.model_copy(update={"error": {"message": "Budget exceeded"}})
    assert isinstance(changed.exception, BudgetExceededError)
    assert changed["error"] == {"message": "Budget exceeded"}


# --- lax integers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12, 12), (12.0, 12), (7.6, 8), ("3", 3), ("3.0", 3), ("2.5", 2), (True, 1)],
)
def test_lax_integers(value: Any, expected: int) -> None:
    msg = ResultMessage.model_validate({"num_turns": value, "usage": {"output_tokens": value}})
    assert msg.num_turns == expected
    assert type(msg.num_turns) is int
    assert msg.usage.output_tokens == expected


@pytest.mark.parametrize("value", ["many", "inf", "-inf", "nan", "1e999", [1], float("inf")])
def test_unusable_integers_are_validation_errors(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="duration_ms"):
        ResultMessage.model_validate({"duration_ms": value})


def test_null_counters_of_a_result_mean_the_default() -> None:
    assert ResultMessage.model_validate({"duration_ms": None, "usage": None}).duration_ms == 0


# --- helpers ----------------------------------------------------------------------------------


def test_get_assistant_text_on_typed_and_plain_messages() -> None:
    assert get_assistant_text(parse_message(ASSISTANT)) == "Adding now."
    assert get_assistant_text(ASSISTANT) == "Adding now."
    assert get_assistant_text({"type": "assistant", "message": {"content": "plain"}}) == "plain"
    # The official client's helper reads any dict with a message; a dict without type works.
    assert get_assistant_text({"message": {"content": [{"type": "text", "text": "t"}]}}) == "t"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "user", "message": {"content": [{"type": "text", "text": "mine"}]}},
        {"type": "user", "message": {"content": "mine"}},
        UserMessage(message=UserBody(content=[TextBlock(text="mine")])),
        ResultMessage(result="final"),
        {"type": "result", "subtype": "success", "result": "final"},
        {"type": "system", "subtype": "init"},
        {"type": "error", "error": {"message": "x"}},
    ],
)
def test_get_assistant_text_is_empty_for_other_kinds(message: Any) -> None:
    assert get_assistant_text(message) == ""


@pytest.mark.parametrize(
    "message",
    [
        {"type": "assistant"},
        {"type": "assistant", "message": None},
        {"type": "assistant", "message": "x"},
        {"type": "assistant", "message": {"content": 5}},
        {"type": "assistant", "message": {"content": [5, None, {"type": "text"}]}},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": None}]}},
    ],
)
def test_get_assistant_text_tolerates_malformed_dicts(message: dict[str, Any]) -> None:
    assert get_assistant_text(message) == ""


def test_get_result_text() -> None:
    typed = ResultMessage(result="4")
    assert get_result_text(typed) == "4"
    assert get_result_text(parse_message({"type": "result", "subtype": "success", "result": "4"}))
    assert get_result_text({"type": "result", "subtype": "success", "result": "4"}) == "4"
    assert get_result_text({"type": "result", "subtype": "error_max_turns", "result": "4"}) is None
    assert get_result_text(ResultMessage(subtype="error_during_execution", is_error=True)) is None
    assert get_result_text({"type": "result", "subtype": "success"}) is None
    assert get_result_text({"type": "result", "subtype": "success", "result": 4}) is None
    assert get_result_text({"type": "assistant", "subtype": "success", "result": "4"}) is None
    assert get_result_text(parse_message(ASSISTANT)) is None


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"message": "Budget exceeded", "code": "BUDGET_EXCEEDED"}, BudgetExceededError),
        (
            {"message": "x", "code": "SESSION_ERROR", "details": {"reason": "session_not_found"}},
            SessionNotFoundError,
        ),
        ({"message": "rate limit hit"}, RateLimitError),
        ({}, ChuckyError),
    ],
)
def test_error_message_exception_maps(error: dict[str, Any], expected: type[ChuckyError]) -> None:
    msg = ErrorMessage(error=error)
    assert type(msg.exception) is expected
    assert msg.exception is msg.exception  # computed once


def test_error_message_from_exception_keeps_it() -> None:
    exc = SessionNotFoundError("Session not found: s", details={"reason": "session_not_found"})
    msg = ErrorMessage.from_exception(exc)
    assert msg.exception is exc
    assert msg["error"] == {
        "message": "Session not found: s",
        "code": "SESSION_ERROR",
        "details": {"reason": "session_not_found"},
    }
    assert msg.get("type") == "error"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}, "Hi"),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": ""}}, ""),
        ({"type": "content_block_delta", "delta": {"type": "input_json_delta"}}, None),
        ({"type": "content_block_delta", "delta": {"type": "thinking_delta"}}, None),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": 5}}, None),
        ({"type": "content_block_delta", "delta": "text"}, None),
        ({"type": "content_block_delta"}, None),
        ({"type": "message_start", "message": {}}, None),
        ({}, None),
    ],
)
def test_text_delta(event: dict[str, Any], expected: str | None) -> None:
    assert StreamEventMessage(event=event).text_delta == expected


def test_assistant_text_and_tool_uses_when_empty() -> None:
    msg = AssistantMessage(message=AssistantBody())
    assert msg.text == ""
    assert msg.tool_uses == []


@given(st.lists(st.one_of(st.text(), st.none()), max_size=5))
def test_assistant_text_is_the_concatenation(texts: list[str | None]) -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": text}
        if text is not None
        else {"type": "tool_use", "id": "i", "name": "n"}
        for text in texts
    ]
    raw = {"type": "assistant", "message": {"content": content}}
    expected = "".join(text for text in texts if text is not None)
    assert get_assistant_text(raw) == expected
    msg = parse_message(raw)
    assert isinstance(msg, AssistantMessage)
    assert msg.text == expected == get_assistant_text(msg)


# -- immutability: the mapping view can never go stale (issue 11, finding 16) -----------------


def test_a_message_model_is_immutable_so_its_mapping_view_stays_current() -> None:
    block = TextBlock(text="a")
    assert block["text"] == "a" and dict(block)["text"] == "a"  # the view is cached now
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        block.text = "b"  # type: ignore[misc]
    assert block.text == "a" and block["text"] == "a"
    changed = block.model_copy(update={"text": "b"})
    assert changed.text == "b" and changed["text"] == "b" and dict(changed)["text"] == "b"
    assert block["text"] == "a"


def test_a_decoded_message_is_immutable_too() -> None:
    message = parse_message(
        {
            "type": "assistant",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
        }
    )
    assert isinstance(message, AssistantMessage)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        message.session_id = "other"  # type: ignore[misc]
    block = message.message.content[0]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        block.text = "b"  # type: ignore[union-attr]
    assert message["message"]["content"][0]["text"] == "a"
