"""Frame decoding and encoding (docs/protocol.md sections 3 and 4), without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.strategies import (
    CLIENT_TYPES,
    SERVER_TYPES,
    fields,
    frame_like,
    leaves,
    shaped,
)

from chucky.errors import SessionNotFoundError, ValidationError
from chucky.messages import (
    AssistantMessage,
    ErrorMessage,
    ResultMessage,
    StreamEventMessage,
    SystemMessage,
    TextBlock,
    ToolUseBlock,
    UserMessage,
)
from chucky.options import SessionOptions, SystemPromptPreset
from chucky.protocol.client import ClientProtocol, TurnFailed
from chucky.protocol.frames import (
    ClientControlFrame,
    FrameError,
    InitFrame,
    PingFrame,
    PromptFrame,
    SdkMessageFrame,
    ToolResultFrame,
    UserFrame,
    decode_client_frame,
    encode,
    turn_content,
)
from chucky.protocol.server_frames import (
    ErrorFrame,
    PongFrame,
    ServerControlFrame,
    ToolCallFrame,
    UnknownFrame,
    decode_server_frame,
)


def dumps(value: Any) -> str:
    return json.dumps(value)


def rejected(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_client_frame(text)
    return info.value


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": content}, **extra}


def turn(frame: dict[str, Any]) -> tuple[Any, SessionOptions | None]:
    decoded = decode_client_frame(dumps(frame))
    assert isinstance(decoded, UserFrame | PromptFrame | SdkMessageFrame)
    return turn_content(decoded)


PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}


# --- client -> server: init -----------------------------------------------------------------


def test_init_reads_camel_case_options() -> None:
    frame = decode_client_frame(
        dumps(
            {
                "type": "init",
                "payload": {
                    "model": "sonnet",
                    "fallbackModel": "haiku",
                    "systemPrompt": {"type": "preset", "preset": "claude_code", "append": "Hi"},
                    "maxTurns": 4,
                    "maxBudgetUsd": 0.5,
                    "maxThinkingTokens": 1024,
                    "allowedTools": ["mcp__t__echo"],
                    "disallowedTools": ["Bash"],
                    "includePartialMessages": True,
                    "forkSession": True,
                    "resumeSessionAt": "uuid-1",
                    "permissionMode": "bypassPermissions",
                    "outputFormat": {"type": "json_schema", "schema": {"type": "object"}},
                    "chuckyExtensions": ["interrupt"],
                },
            }
        )
    )
    assert isinstance(frame, InitFrame)
    options = frame.payload
    assert options.model == "sonnet"
    assert options.fallback_model == "haiku"
    assert options.system_prompt == SystemPromptPreset(append="Hi")
    assert options.max_turns == 4
    assert options.max_budget_usd == 0.5
    assert options.max_thinking_tokens == 1024
    assert options.allowed_tools == ["mcp__t__echo"]
    assert options.disallowed_tools == ["Bash"]
    assert options.include_partial_messages is True
    assert options.fork_session is True
    assert options.resume_session_at == "uuid-1"
    assert options.permission_mode == "bypassPermissions"
    assert options.output_format is not None
    assert options.output_format.schema_ == {"type": "object"}
    assert options.chucky_extensions == ["interrupt"]


@pytest.mark.parametrize("key", ["sessionId", "resume"])
def test_init_resume_is_an_alias_of_session_id(key: str) -> None:
    frame = decode_client_frame(dumps({"type": "init", "payload": {key: "sess-1"}}))
    assert isinstance(frame, InitFrame)
    assert frame.payload.session_id == "sess-1"
    assert frame.payload.to_wire() == {"sessionId": "sess-1"}


def test_init_continue() -> None:
    frame = decode_client_frame(dumps({"type": "init", "payload": {"continue": True}}))
    assert isinstance(frame, InitFrame)
    assert frame.payload.continue_session is True
    assert frame.payload.to_wire() == {"continue": True}


def test_init_null_means_absent() -> None:
    payload = {"model": None, "maxTurns": None, "systemPrompt": None, "mcpServers": None}
    frame = decode_client_frame(dumps({"type": "init", "payload": payload}))
    assert isinstance(frame, InitFrame)
    assert frame.payload.model is None
    assert frame.payload.max_turns is None
    assert frame.payload.to_wire() == {}


@pytest.mark.parametrize("frame", [{"type": "init"}, {"type": "init", "payload": None}])
def test_init_without_payload_has_default_options(frame: dict[str, Any]) -> None:
    decoded = decode_client_frame(dumps(frame))
    assert isinstance(decoded, InitFrame)
    assert decoded.payload == SessionOptions()


def test_init_ignores_unknown_keys() -> None:
    frame = decode_client_frame(
        dumps({"type": "init", "payload": {"model": "m", "someFutureOption": {"x": 1}}})
    )
    assert isinstance(frame, InitFrame)
    assert frame.payload.to_wire() == {"model": "m"}


def test_init_of_the_official_python_client() -> None:
    # P's init: model may be null; inline tools in an ``inline-tools`` server, executeIn browser.
    payload = {
        "model": None,
        "systemPrompt": "Be brief.",
        "maxTurns": 3,
        "mcpServers": [
            {
                "name": "inline-tools",
                "version": "1.0.0",
                "tools": [
                    {
                        "name": "add",
                        "description": "Add",
                        "inputSchema": {"type": "object", "properties": {}, "required": None},
                        "executeIn": "browser",
                    }
                ],
            }
        ],
    }
    frame = decode_client_frame(dumps({"type": "init", "payload": payload}))
    assert isinstance(frame, InitFrame)
    (server,) = frame.payload.mcp_server_list()
    assert server.name == "inline-tools"
    assert server.tools is not None
    assert server.tools[0].input_schema == {"type": "object", "properties": {}}
    assert server.tools[0].runs_on_client


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"maxTurns": "many"}, "maxTurns"),
        ({"maxTurns": 0}, "maxTurns"),
        ({"model": 123}, "model"),
        ({"maxBudgetUsd": -1}, "maxBudgetUsd"),
        ({"includePartialMessages": [1]}, "includePartialMessages"),
        ({"mcpServers": "nope"}, "mcpServers"),
        ({"systemPrompt": 5}, "systemPrompt"),
        ({"outputFormat": {"type": "json_schema"}}, "schema"),
        ({"env": {"A": 1}}, "env"),
        ({"allowedTools": "Read"}, "allowedTools"),
        ({"sessionId": 7}, "sessionId"),
        ({"maxBudgetUsd": "inf"}, "maxBudgetUsd"),
        ({"maxBudgetUsd": "NaN"}, "maxBudgetUsd"),
    ],
)
def test_init_with_wrong_types_is_invalid_options(payload: dict[str, Any], field: str) -> None:
    error = rejected(dumps({"type": "init", "payload": payload}))
    assert error.details["reason"] == "invalid_options"
    assert error.code == "VALIDATION_ERROR"
    assert field in error.message
    assert error.message.startswith("Invalid options: ")


def test_init_payload_not_an_object_is_invalid_options() -> None:
    assert rejected('{"type":"init","payload":[1]}').details["reason"] == "invalid_options"


def attempt(text: str | bytes) -> Any:
    """The decoded frame or the FrameError (any other exception propagates)."""
    try:
        return decode_client_frame(text)
    except FrameError as error:
        return error


def test_deeply_nested_frames_never_raise_recursion_error() -> None:
    # Depths around the recursion limit: json.loads may cope and the schema clean-up not.
    for depth in range(100, 1300, 20):
        schema = '{"a":' * depth + "1" + "}" * depth
        text = '{"type":"init","payload":{"tools":[{"name":"x","inputSchema":' + schema + "}]}}"
        outcome = attempt(text)
        assert isinstance(outcome, InitFrame | FrameError), depth
        if isinstance(outcome, FrameError):
            assert outcome.details["reason"] in {"invalid_options", "invalid_frame"}
        flat = '{"type":"prompt","payload":{"message":"m","tools":[{"name":"x","inputSchema":'
        prompt = attempt(flat + schema + "}]}}")
        if isinstance(prompt, PromptFrame):
            try:
                turn_content(prompt)
            except FrameError as error:
                prompt = error
        assert isinstance(prompt, PromptFrame | FrameError), depth


# --- client -> server: user -----------------------------------------------------------------


def test_user_with_string_content() -> None:
    frame = decode_client_frame(dumps(user("Hello")))
    assert isinstance(frame, UserFrame)
    assert turn_content(frame) == ("Hello", None)


def test_user_frame_of_the_typescript_client() -> None:
    # T invents session_id/uuid (Go sends "unknown"); the server ignores them.
    text = dumps(
        user("Hi", session_id="unknown", uuid="0b1c", parent_tool_use_id=None)
        | {"message": {"role": "user", "content": "Hi"}}
    )
    frame = decode_client_frame(text)
    assert isinstance(frame, UserFrame)
    assert turn_content(frame) == ("Hi", None)


def test_user_role_defaults_to_user() -> None:
    frame = decode_client_frame(dumps({"type": "user", "message": {"content": "x"}}))
    assert isinstance(frame, UserFrame)
    assert frame.message.role == "user"


@pytest.mark.parametrize(
    "blocks",
    [
        [{"type": "text", "text": "hi"}],
        [{"type": "text", "text": "what is this?"}, {"type": "image", "source": PNG}],
        [{"type": "document", "source": PDF, "title": "Spec"}],
        [{"type": "document", "source": PDF}],
        [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}],
        [{"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}],
    ],
)
def test_user_with_content_blocks(blocks: list[dict[str, Any]]) -> None:
    content, options = turn(user(blocks))
    assert content == blocks
    assert options is None


def test_user_document_with_a_text_source_gets_its_media_type() -> None:
    block = {"type": "document", "source": {"type": "text", "data": "plain words"}}
    content, _ = turn(user([block]))
    assert content == [
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "plain words"},
        }
    ]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ([{"type": "video", "url": "x"}], "message.content.0"),
        ([{"type": "text", "text": "ok"}, {"type": "audio"}], "message.content.1"),
        ([{"type": "text"}], "text"),
        ([{"type": "text", "text": 5}], "text"),
        ([{"type": "image"}], "source"),
        ([{"type": "image", "source": {"type": "ftp", "data": "x"}}], "source"),
        ([{"type": "image", "source": {"type": "base64", "data": "x"}}], "media_type"),
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "", "data": "x"}}],
            "media_type",
        ),
        ([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}], "data"),
        ([{"type": "image", "source": {"type": "base64", "media_type": "a/b", "data": 1}}], "data"),
        ([{"type": "image", "source": {"type": "text", "data": "x"}}], "source"),
        ([{"type": "document", "source": {"type": "url"}}], "url"),
        ([{"no": "type"}], "message.content.0"),
        ([5], "message.content.0"),
        ({"type": "text", "text": "not a list"}, "message.content"),
        (None, "message.content"),
    ],
)
def test_user_with_a_bad_block_is_invalid_frame(content: Any, named: str) -> None:
    error = rejected(dumps(user(content)))
    assert error.details == {"reason": "invalid_frame", "type": "user"}
    assert error.message.startswith("Invalid user frame: ")
    assert named in error.message


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "user"},
        {"type": "user", "message": "hi"},
        {"type": "user", "message": {"role": "assistant", "content": "hi"}},
        {"type": "user", "message": {"role": "user"}},
    ],
)
def test_user_without_a_proper_message_is_invalid_frame(frame: dict[str, Any]) -> None:
    error = rejected(dumps(frame))
    assert error.details["reason"] == "invalid_frame"
    assert "message" in error.message


def test_an_error_message_stays_utf8_encodable() -> None:
    # A lone surrogate (a legal JSON escape) quoted back by pydantic must not make the error
    # frame unencodable.
    error = rejected(json.dumps(user([{"type": "\ud800"}])))
    assert "message.content.0" in error.message
    error.message.encode("utf-8")


# --- client -> server: prompt ---------------------------------------------------------------


def test_prompt_nested_options() -> None:
    frame = {
        "type": "prompt",
        "payload": {
            "message": "What is 2 + 2?",
            "options": {"model": "opus", "systemPrompt": "Be brief.", "maxTurns": 2},
        },
    }
    content, options = turn(frame)
    assert content == "What is 2 + 2?"
    assert options == SessionOptions(model="opus", system_prompt="Be brief.", max_turns=2)


def test_prompt_of_the_official_python_client_with_no_model() -> None:
    content, options = turn(
        {"type": "prompt", "payload": {"message": "x", "options": {"model": None}}}
    )
    assert content == "x"
    assert options is not None
    assert options.to_wire() == {}


def test_prompt_flat_options() -> None:
    frame = {
        "type": "prompt",
        "payload": {"message": "hi", "model": "haiku", "maxTurns": 1, "systemPrompt": "S"},
    }
    content, options = turn(frame)
    assert content == "hi"
    assert options == SessionOptions(model="haiku", max_turns=1, system_prompt="S")


def test_prompt_nested_options_win_over_flat_keys() -> None:
    frame = {
        "type": "prompt",
        "payload": {"message": "hi", "model": "a", "options": {"model": "b"}},
    }
    _, options = turn(frame)
    assert options is not None
    assert options.model == "b"


@pytest.mark.parametrize(
    "payload",
    [{"message": "hi"}, {"message": "hi", "options": None}, {"message": "hi", "options": {}}],
)
def test_prompt_without_options(payload: dict[str, Any]) -> None:
    assert turn({"type": "prompt", "payload": payload}) == ("hi", None)


def test_prompt_with_content_blocks() -> None:
    blocks = [{"type": "text", "text": "see"}, {"type": "image", "source": PNG}]
    assert turn({"type": "prompt", "payload": {"message": blocks}}) == (blocks, None)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"message": "hi", "options": {"maxTurns": "x"}}, "maxTurns"),
        ({"message": "hi", "options": {"model": ["a"]}}, "model"),
        ({"message": "hi", "maxTurns": -3}, "maxTurns"),
        ({"message": "hi", "systemPrompt": 1}, "systemPrompt"),
        ({"message": "hi", "options": [1]}, "dictionary"),
        ({"message": "hi", "options": "opus"}, "dictionary"),
    ],
)
def test_prompt_with_bad_options_is_invalid_options(payload: dict[str, Any], field: str) -> None:
    frame = decode_client_frame(dumps({"type": "prompt", "payload": payload}))
    assert isinstance(frame, PromptFrame)
    with pytest.raises(FrameError) as info:
        turn_content(frame)
    assert info.value.details == {"reason": "invalid_options", "type": "prompt"}
    assert field in info.value.message


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "prompt"},
        {"type": "prompt", "payload": {}},
        {"type": "prompt", "payload": {"message": 42}},
        {"type": "prompt", "payload": "hi"},
    ],
)
def test_prompt_without_a_message_is_invalid_frame(frame: dict[str, Any]) -> None:
    error = rejected(dumps(frame))
    assert error.details == {"reason": "invalid_frame", "type": "prompt"}


# --- client -> server: sdk_message ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["user", "user_message"])
@pytest.mark.parametrize(
    "body",
    [
        {"message": "hello"},
        {"message": {"role": "user", "content": "hello"}},
        {"message": {"content": "hello"}},
        {"content": "hello"},
    ],
)
def test_sdk_message_forms(kind: str, body: dict[str, Any]) -> None:
    assert turn({"type": "sdk_message", "payload": {"type": kind, **body}}) == ("hello", None)


def test_sdk_message_with_blocks() -> None:
    blocks = [{"type": "text", "text": "a"}, {"type": "document", "source": PDF}]
    payload = {"type": "user", "message": {"role": "user", "content": blocks}}
    assert turn({"type": "sdk_message", "payload": payload}) == (blocks, None)
    assert turn({"type": "sdk_message", "payload": {"type": "user", "content": blocks}}) == (
        blocks,
        None,
    )


@pytest.mark.parametrize(
    "payload", [{"type": "user"}, {"type": "user", "message": None}, {"type": "user_message"}]
)
def test_sdk_message_without_content_is_rejected(payload: dict[str, Any]) -> None:
    frame = decode_client_frame(dumps({"type": "sdk_message", "payload": payload}))
    assert isinstance(frame, SdkMessageFrame)
    with pytest.raises(FrameError) as info:
        turn_content(frame)
    assert info.value.details == {"reason": "invalid_frame", "type": "sdk_message"}
    assert "no message content" in info.value.message


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"type": "assistant", "message": "x"}, "type"),
        ({"message": "x"}, "type"),
        ({"type": "user", "message": {"role": "user"}}, "content"),
        ({"type": "user", "message": {"role": "system", "content": "x"}}, "role"),
        ({"type": "user", "content": 5}, "content"),
    ],
)
def test_sdk_message_malformed(payload: dict[str, Any], named: str) -> None:
    error = rejected(dumps({"type": "sdk_message", "payload": payload}))
    assert error.details == {"reason": "invalid_frame", "type": "sdk_message"}
    assert named in error.message


# --- client -> server: tool_result, control, ping -------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"), [({}, None), ({"isError": False}, False), ({"isError": True}, True)]
)
def test_tool_result_is_error(extra: dict[str, Any], expected: bool | None) -> None:
    content = [
        {"type": "text", "text": "4"},
        {"type": "image", "data": "AA==", "mimeType": "image/png"},
    ]
    frame = decode_client_frame(
        dumps(
            {
                "type": "tool_result",
                "payload": {"callId": "c1", "result": {"content": content, **extra}},
            }
        )
    )
    assert isinstance(frame, ToolResultFrame)
    assert frame.payload.call_id == "c1"
    assert frame.payload.result.content == content
    assert frame.payload.result.is_error is expected


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"result": {"content": []}}, "callId"),
        ({"callId": "", "result": {"content": []}}, "callId"),
        ({"callId": 5, "result": {"content": []}}, "callId"),
        ({"callId": "c1"}, "result"),
        ({"callId": "c1", "result": {}}, "content"),
        ({"callId": "c1", "result": {"content": "4"}}, "content"),
        ({"callId": "c1", "result": {"content": ["4"]}}, "content"),
        ({"callId": "c1", "result": {"content": [], "isError": "maybe"}}, "isError"),
    ],
)
def test_tool_result_malformed(payload: dict[str, Any], named: str) -> None:
    error = rejected(dumps({"type": "tool_result", "payload": payload}))
    assert error.details == {"reason": "invalid_frame", "type": "tool_result"}
    assert named in error.message


@pytest.mark.parametrize("action", ["close", "end_input", "interrupt"])
def test_control_actions(action: str) -> None:
    frame = decode_client_frame(dumps({"type": "control", "payload": {"action": action}}))
    assert isinstance(frame, ClientControlFrame)
    assert frame.payload.action == action
    assert frame.payload.data is None


def test_control_keeps_data() -> None:
    frame = decode_client_frame(
        dumps({"type": "control", "payload": {"action": "close", "data": {"why": "done"}}})
    )
    assert isinstance(frame, ClientControlFrame)
    assert frame.payload.data == {"why": "done"}


@pytest.mark.parametrize(
    "payload", [{"action": "explode"}, {"action": "ready"}, {}, {"action": None}]
)
def test_control_unknown_action_is_invalid_frame(payload: dict[str, Any]) -> None:
    error = rejected(dumps({"type": "control", "payload": payload}))
    assert error.details == {"reason": "invalid_frame", "type": "control"}
    assert "action" in error.message


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"timestamp": 1_700_000_000_123}, 1_700_000_000_123),
        ({"timestamp": 2**60 + 1}, 2**60 + 1),
        ({"timestamp": 12.5}, 12.5),
        ({}, None),
        (None, None),
    ],
)
def test_ping(payload: dict[str, Any] | None, expected: float | None) -> None:
    frame = decode_client_frame(dumps({"type": "ping", "payload": payload}))
    assert isinstance(frame, PingFrame)
    assert frame.payload.timestamp == expected
    assert type(frame.payload.timestamp) is type(expected)


def test_ping_without_payload() -> None:
    frame = decode_client_frame('{"type":"ping"}')
    assert isinstance(frame, PingFrame)
    assert frame.payload.timestamp is None


@pytest.mark.parametrize("stamp", ['"soon"', '"inf"', '"-inf"', '"nan"', '"1e999"', "[1]"])
def test_ping_with_a_bad_timestamp(stamp: str) -> None:
    error = rejected(f'{{"type":"ping","payload":{{"timestamp":{stamp}}}}}')
    assert error.details == {"reason": "invalid_frame", "type": "ping"}
    assert error.message.startswith("Invalid ping frame: payload.timestamp: ")


# --- client -> server: garbage ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not valid JSON"),
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"type":"ping","x":"\xc3"}', "not valid JSON"),
        ('{"type":"ping"}'.encode("utf-16"), "not valid JSON"),
        ('{"type":"ping","payload":{"timestamp":NaN}}', "not valid JSON"),
        ('{"type":"ping","payload":{"timestamp":Infinity}}', "not valid JSON"),
        ('{"type":"ping","payload":{"timestamp":-Infinity}}', "not valid JSON"),
        ('{"type":"ping","payload":{"timestamp":1e999}}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("42", "must be a JSON object"),
        ('"user"', "must be a JSON object"),
        ("null", "must be a JSON object"),
        ("{}", "unknown frame type None"),
        ('{"payload":{}}', "unknown frame type None"),
        ('{"type":"hello"}', "unknown frame type 'hello'"),
        ('{"type":"result"}', "unknown frame type 'result'"),
        ('{"type":null}', "unknown frame type None"),
        ('{"type":7}', "unknown frame type 7"),
        ('{"type":["user"]}', "unknown frame type ['user']"),
        ('{"type":{"a":1}}', "unknown frame type {'a': 1}"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_garbage_is_invalid_frame(text: str | bytes, says: str) -> None:
    error = rejected(text)
    assert error.details["reason"] == "invalid_frame"
    assert error.code == "VALIDATION_ERROR"
    assert says in error.message
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)


def test_unknown_type_is_named_in_details() -> None:
    assert rejected('{"type":"hello"}').details == {"reason": "invalid_frame", "type": "hello"}
    assert rejected('{"type":7}').details == {"reason": "invalid_frame", "type": None}


def test_utf8_bytes_are_accepted() -> None:
    frame = decode_client_frame(dumps(user("héllo ✓")).encode("utf-8"))
    assert isinstance(frame, UserFrame)
    assert frame.message.content == "héllo ✓"


# --- server -> client -------------------------------------------------------------------------

SYSTEM_INIT = {
    "type": "system",
    "subtype": "init",
    "uuid": "u0",
    "session_id": "sess-1",
    "cwd": "/work",
    "tools": ["mcp__t__echo"],
    "mcp_servers": [{"name": "t", "status": "connected"}],
    "model": "claude-sonnet-4-5",
    "permissionMode": "default",
}
ASSISTANT = {
    "type": "assistant",
    "uuid": "u1",
    "session_id": "sess-1",
    "parent_tool_use_id": None,
    "message": {
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me "},
            {"type": "tool_use", "id": "tu1", "name": "mcp__t__echo", "input": {"x": 1}},
            {"type": "text", "text": "check."},
        ],
    },
}
USER_ECHO = {
    "type": "user",
    "uuid": "u2",
    "session_id": "sess-1",
    "parent_tool_use_id": None,
    "message": {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "tu1", "content": "1", "is_error": False}
        ],
    },
}
STREAM_EVENT = {
    "type": "stream_event",
    "uuid": "u3",
    "session_id": "sess-1",
    "parent_tool_use_id": None,
    "event": {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi"},
    },
}
RESULT = {
    "type": "result",
    "subtype": "success",
    "uuid": "u4",
    "session_id": "sess-1",
    "is_error": False,
    "num_turns": 2,
    "duration_ms": 1234,
    "duration_api_ms": 1000,
    "total_cost_usd": 0.0123,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 3,
    },
    "result": "Let me check.",
    "stop_reason": "end_turn",
}


def test_bare_system_init() -> None:
    msg = decode_server_frame(dumps(SYSTEM_INIT))
    assert isinstance(msg, SystemMessage)
    assert msg.subtype == "init"
    assert msg.session_id == "sess-1"
    assert msg.tools == ["mcp__t__echo"]
    assert msg.mcp_servers == [{"name": "t", "status": "connected"}]
    assert msg.permission_mode == "default"
    assert dict(msg) == SYSTEM_INIT


def test_bare_assistant() -> None:
    msg = decode_server_frame(dumps(ASSISTANT))
    assert isinstance(msg, AssistantMessage)
    assert msg.text == "Let me check."
    assert msg.tool_uses == [ToolUseBlock(id="tu1", name="mcp__t__echo", input={"x": 1})]
    assert msg.message.model == "claude-sonnet-4-5"
    assert isinstance(msg.message.content[1], TextBlock)


def test_bare_user_echo() -> None:
    msg = decode_server_frame(dumps(USER_ECHO))
    assert isinstance(msg, UserMessage)
    assert msg["message"]["content"][0]["tool_use_id"] == "tu1"


def test_bare_stream_event() -> None:
    msg = decode_server_frame(dumps(STREAM_EVENT))
    assert isinstance(msg, StreamEventMessage)
    assert msg.text_delta == "Hi"


def test_bare_result() -> None:
    msg = decode_server_frame(dumps(RESULT))
    assert isinstance(msg, ResultMessage)
    assert msg.result == "Let me check."
    assert msg.usage.cache_read_input_tokens == 3
    assert msg.duration_ms == 1234
    assert msg.total_cost_usd == 0.0123


@pytest.mark.parametrize("inner", [SYSTEM_INIT, ASSISTANT, USER_ECHO, STREAM_EVENT, RESULT])
def test_legacy_sdk_message_envelope_is_unwrapped(inner: dict[str, Any]) -> None:
    bare = decode_server_frame(dumps(inner))
    wrapped = decode_server_frame(dumps({"type": "sdk_message", "payload": inner}))
    assert type(wrapped) is type(bare)
    assert wrapped == bare
    assert dict(wrapped) == inner


@pytest.mark.parametrize("payload", [None, "x", [1]])
def test_sdk_message_envelope_without_an_object(payload: Any) -> None:
    frame = decode_server_frame(dumps({"type": "sdk_message", "payload": payload}))
    assert isinstance(frame, UnknownFrame)
    assert frame.type == "sdk_message"
    assert "payload" in frame.reason


def test_control_ready() -> None:
    frame = decode_server_frame('{"type":"control","payload":{"action":"ready"}}')
    assert isinstance(frame, ServerControlFrame)
    assert frame.payload.action == "ready"
    assert frame.payload.data is None


def test_control_session_info() -> None:
    data = {"sessionId": "s", "model": "m", "tools": [], "createdAt": "2025-01-01T00:00:00Z"}
    frame = decode_server_frame(
        dumps({"type": "control", "payload": {"action": "session_info", "data": data}})
    )
    assert isinstance(frame, ServerControlFrame)
    assert frame.payload.action == "session_info"
    assert frame.payload.data == data


def test_control_close() -> None:
    frame = decode_server_frame('{"type":"control","payload":{"action":"close"}}')
    assert isinstance(frame, ServerControlFrame)
    assert frame.payload.action == "close"


def test_error_frame() -> None:
    payload = {"message": "Budget exceeded", "code": "BUDGET_EXCEEDED", "details": {"limit": 5}}
    frame = decode_server_frame(dumps({"type": "error", "payload": payload}))
    assert isinstance(frame, ErrorFrame)
    assert frame.payload == payload


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("boom", {"message": "boom"}),
        (None, {}),
        ([1, 2], {"message": "[1, 2]"}),
        (5, {"message": "5"}),
    ],
)
def test_error_frame_with_a_payload_that_is_not_an_object(
    payload: Any, expected: dict[str, Any]
) -> None:
    # An error must reach the client as an error (it may end a turn), whatever its shape.
    frame = decode_server_frame(dumps({"type": "error", "payload": payload}))
    assert isinstance(frame, ErrorFrame)
    assert frame.payload == expected


def test_error_message_keeps_the_frame_payload() -> None:
    payload = {
        "message": "x",
        "code": "SESSION_ERROR",
        "details": {"reason": "session_not_found"},
        "requestId": "r-1",
    }
    proto = ClientProtocol({})
    proto.receive(dumps({"type": "control", "payload": {"action": "ready"}}))
    proto.send_turn("hi")
    event = proto.receive(dumps({"type": "error", "payload": payload}))
    assert isinstance(event, TurnFailed)
    msg = ErrorMessage.from_exception(event.error, event.payload)
    assert dict(msg) == {"type": "error", "error": payload}
    assert isinstance(msg.exception, SessionNotFoundError)


def test_error_frame_without_payload() -> None:
    frame = decode_server_frame('{"type":"error"}')
    assert isinstance(frame, ErrorFrame)
    assert frame.payload == {}


def test_pong() -> None:
    frame = decode_server_frame('{"type":"pong","payload":{"timestamp":17}}')
    assert isinstance(frame, PongFrame)
    assert frame.payload == {"timestamp": 17}


def test_tool_call() -> None:
    frame = decode_server_frame(
        dumps(
            {"type": "tool_call", "payload": {"callId": "c1", "toolName": "add", "input": {"a": 1}}}
        )
    )
    assert isinstance(frame, ToolCallFrame)
    assert (frame.payload.call_id, frame.payload.tool_name, frame.payload.input) == (
        "c1",
        "add",
        {"a": 1},
    )


def test_tool_call_without_input() -> None:
    frame = decode_server_frame('{"type":"tool_call","payload":{"callId":"c1","toolName":"add"}}')
    assert isinstance(frame, ToolCallFrame)
    assert frame.payload.input == {}


@pytest.mark.parametrize(
    ("text", "type_", "says"),
    [
        ('{"type":"hello"}', "hello", "unknown frame type"),
        ("{}", None, "unknown frame type"),
        ('{"type":["a"]}', ["a"], "unknown frame type"),
        ('{"type":{"a":1}}', {"a": 1}, "unknown frame type"),
        ('{"type":"sdk_message","payload":{"type":["x"]}}', ["x"], "unknown frame type"),
        ("not json", None, "not valid JSON"),
        (b"\xff", None, "not valid JSON"),
        ("[" * 100_000, None, "not valid JSON"),
        ("[1]", None, "not a JSON object"),
        ('"x"', None, "not a JSON object"),
        ('{"type":"tool_call","payload":{"toolName":"add"}}', "tool_call", "callId"),
        ('{"type":"tool_call"}', "tool_call", "payload"),
        ('{"type":"control","payload":{}}', "control", "action"),
        ('{"type":"control","payload":{"action":"session_info","data":"x"}}', "control", "data"),
        ('{"type":"assistant"}', "assistant", "message"),
        ('{"type":"assistant","message":{"content":"x"}}', "assistant", "content"),
        ('{"type":"stream_event"}', "stream_event", "event"),
        ('{"type":"assistant","message":{"content":[{"type":["x"]}]}}', "assistant", "type"),
        ('{"type":"pong","payload":"x"}', "pong", "payload"),
    ],
)
def test_unusable_server_frames_are_unknown(text: str | bytes, type_: Any, says: str) -> None:
    frame = decode_server_frame(text)
    assert isinstance(frame, UnknownFrame)
    assert frame.type == type_
    assert says in frame.reason


def test_extra_fields_are_preserved() -> None:
    raw = RESULT | {"brand_new": {"x": [1, 2]}, "modelUsage": {"sonnet": {"inputTokens": 1}}}
    msg = decode_server_frame(dumps(raw))
    assert isinstance(msg, ResultMessage)
    assert msg["brand_new"] == {"x": [1, 2]}
    assert msg.get("modelUsage") == {"sonnet": {"inputTokens": 1}}
    assert msg.model_extra is not None
    assert msg.model_extra["brand_new"] == {"x": [1, 2]}
    assert dict(msg) == raw

    frame = decode_server_frame(
        dumps(
            {
                "type": "tool_call",
                "payload": {"callId": "c", "toolName": "t", "serverName": "s"},
                "flag": 4,
            }
        )
    )
    assert isinstance(frame, ToolCallFrame)
    assert frame.model_extra == {"flag": 4}
    assert frame.payload.model_extra == {"serverName": "s"}


def test_non_standard_numbers_from_a_server_do_not_raise() -> None:
    msg = decode_server_frame('{"type":"result","total_cost_usd":NaN,"duration_ms":1e999}')
    assert isinstance(msg, UnknownFrame | ResultMessage)


# --- encode -------------------------------------------------------------------------------------


def test_encode_is_compact() -> None:
    assert (
        encode({"type": "ping", "payload": {"timestamp": 1}})
        == '{"type":"ping","payload":{"timestamp":1}}'
    )


def test_encode_keeps_non_ascii() -> None:
    assert encode({"text": "héllo 日本 ✓"}) == '{"text":"héllo 日本 ✓"}'


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_refuses_nan(value: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode({"x": value})


# --- properties -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def frames_of(types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    kinds = st.sampled_from(types) | st.lists(st.sampled_from(types), max_size=1) | frame_like
    return st.builds(lambda kind, body: {**body, "type": kind}, kinds, shaped(frame_like))


def frame(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of one ``kind`` whose (optional) fields hold arbitrary leaves."""
    return st.fixed_dictionaries({"type": st.just(kind)}, optional=fields)


blocks = st.lists(fields(type=leaves | frame_like, text=leaves, source=frame_like), max_size=3)
# The known shapes with arbitrary values where it matters: numbers, types, payloads.
targeted_client = st.one_of(
    frame("ping", payload=fields(timestamp=leaves) | frame_like),
    frame("init", payload=shaped(frame_like) | frame_like),
    frame("user", message=fields(role=leaves, content=blocks | leaves)),
    frame("prompt", payload=fields(message=leaves | blocks, options=shaped(frame_like) | leaves)),
    frame("sdk_message", payload=fields(type=leaves, message=frame_like, content=blocks)),
    frame("tool_result", payload=fields(callId=leaves, result=fields(content=frame_like))),
    frame("control", payload=fields(action=leaves, data=frame_like)),
)
targeted_server = st.one_of(
    frame("pong", payload=fields(timestamp=leaves) | frame_like),
    frame("result", num_turns=leaves, total_cost_usd=leaves, usage=fields(output_tokens=leaves)),
    frame("error", payload=fields(message=leaves, code=leaves, details=frame_like) | frame_like),
    frame("assistant", message=fields(content=blocks | leaves)),
    frame("user", message=fields(content=blocks | leaves)),
    frame("stream_event", event=frame_like),
    frame("tool_call", payload=fields(callId=leaves, toolName=leaves, input=frame_like)),
    frame("control", payload=fields(action=leaves, data=frame_like)),
    frame("sdk_message", payload=frame_like | fields(type=leaves, message=frame_like)),
)


def dumps_lax(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN/Infinity literals, as a careless peer sends


def decode_or_frame_error(text: str | bytes) -> None:
    outcome = attempt(text)
    if isinstance(outcome, UserFrame | PromptFrame | SdkMessageFrame):
        try:
            turn_content(outcome)
        except FrameError as error:
            outcome = error
    if isinstance(outcome, FrameError):
        assert outcome.details["reason"] in {"invalid_frame", "invalid_options"}
        assert outcome.code == "VALIDATION_ERROR"


@given(st.text())
def test_decode_client_frame_on_any_text(text: str) -> None:
    decode_or_frame_error(text)


@given(st.binary())
def test_decode_client_frame_on_any_bytes(data: bytes) -> None:
    decode_or_frame_error(data)


@given(json_values)
def test_decode_client_frame_on_any_json(value: Any) -> None:
    decode_or_frame_error(json.dumps(value))


@settings(max_examples=500)
@given(frames_of(CLIENT_TYPES) | targeted_client)
def test_decode_client_frame_on_frame_shaped_json(value: dict[str, Any]) -> None:
    decode_or_frame_error(dumps_lax(value))


@settings(max_examples=500)
@given(
    st.text()
    | st.binary()
    | json_values.map(json.dumps)
    | frames_of([*SERVER_TYPES, "user", "control", "sdk_message"]).map(dumps_lax)
    | targeted_server.map(dumps_lax)
)
def test_decode_server_frame_never_raises(text: str | bytes) -> None:
    frame = decode_server_frame(text)
    if isinstance(frame, UnknownFrame):
        assert frame.reason


@given(
    st.text()
    | st.lists(st.sampled_from([{"type": "text", "text": "a"}, {"type": "image", "source": PNG}])),
    st.sampled_from(["user", "prompt", "sdk_message"]),
)
def test_turn_frames_round_trip(content: Any, form: str) -> None:
    frame = {
        "user": user(content, session_id="", parent_tool_use_id=None),
        "prompt": {"type": "prompt", "payload": {"message": content}},
        "sdk_message": {"type": "sdk_message", "payload": {"type": "user", "message": content}},
    }[form]
    decoded = decode_client_frame(encode(frame))
    assert decoded.type == form
    assert isinstance(decoded, UserFrame | PromptFrame | SdkMessageFrame)
    assert turn_content(decoded) == (content, None)


@given(
    st.integers(min_value=-(2**63), max_value=2**63), st.text(min_size=1), st.booleans() | st.none()
)
def test_ping_and_tool_result_round_trip(stamp: int, call_id: str, is_error: bool | None) -> None:
    ping = decode_client_frame(encode({"type": "ping", "payload": {"timestamp": stamp}}))
    assert isinstance(ping, PingFrame)
    assert ping.payload.timestamp == stamp
    result: dict[str, Any] = {"content": [{"type": "text", "text": call_id}]}
    if is_error is not None:
        result["isError"] = is_error
    frame = decode_client_frame(
        encode({"type": "tool_result", "payload": {"callId": call_id, "result": result}})
    )
    assert isinstance(frame, ToolResultFrame)
    assert frame.payload.call_id == call_id
    assert frame.payload.result.is_error is is_error
    assert frame.payload.result.content == result["content"]


@given(
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, max_value=1e6),
    st.text(),
    st.text(),
)
def test_server_messages_round_trip(count: int, cost: float, text: str, session_id: str) -> None:
    result = ResultMessage(
        session_id=session_id, num_turns=count, duration_ms=count, total_cost_usd=cost, result=text
    )
    assistant = AssistantMessage(
        session_id=session_id, message={"content": [{"type": "text", "text": text}]}
    )
    for msg in (result, assistant):
        decoded = decode_server_frame(encode(msg.to_wire()))
        assert decoded == msg
        assert dict(decoded) == msg.to_wire()


# --- a result always ends its turn; error frames stay small ------------------------------------


def test_result_with_null_counters_is_read_with_defaults() -> None:
    frame = decode_server_frame(
        json.dumps(
            {
                "type": "result",
                "subtype": "success",
                "usage": None,
                "total_cost_usd": None,
                "num_turns": None,
                "result": "x",
            }
        )
    )
    assert isinstance(frame, ResultMessage)
    assert frame.usage.input_tokens == 0
    assert frame.total_cost_usd == 0.0
    assert frame["usage"] is None  # the mapping view is the frame as sent


@pytest.mark.parametrize("turns", ["many", "1e999"])
def test_a_result_with_a_bad_counter_still_ends_the_turn(turns: str) -> None:
    frame = decode_server_frame(json.dumps({"type": "result", "num_turns": turns}))
    assert isinstance(frame, ResultMessage)
    assert frame.num_turns == 0
    assert frame["num_turns"] == turns


def test_a_result_that_does_not_validate_is_salvaged_not_dropped() -> None:
    raw = {
        "type": "result",
        "subtype": "error_during_execution",
        "usage": {"input_tokens": "many"},
        "num_turns": 2,
        "errors": "not a list",
    }
    frame = decode_server_frame(json.dumps(raw))
    assert isinstance(frame, ResultMessage)
    assert frame.subtype == "error_during_execution"
    assert frame.num_turns == 2
    assert frame["errors"] == "not a list"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "h" * 100_000},
        {"type": "user", "message": {"content": [{"type": "h" * 100_000}]}},
        {
            "type": "user",
            "message": {"content": [{"type": "image", "source": {"type": "x" * 100_000}}]},
        },
        {"type": "init", "payload": {"model": ["m" * 100_000]}},
    ],
    ids=["unknown-type", "block-tag", "source-tag", "option"],
)
def test_error_messages_never_quote_client_input_in_full(frame: dict[str, object]) -> None:
    with pytest.raises(FrameError) as info:
        decode_client_frame(json.dumps(frame))
    assert len(json.dumps(info.value.to_payload())) < 2_000


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"assistant","message":{"content":[{"type":"text","text":"a\\udc00b"}]}}',
        '{"type":"assistant","message":{"content":[]},"deep":' + "[" * 300 + "]" * 300 + "}",
    ],
    ids=["lone-surrogate-escape", "nesting-over-200"],
)
def test_client_decoding_falls_back_where_the_fast_parser_refuses(text: str) -> None:
    frame = decode_server_frame(text)
    assert isinstance(frame, AssistantMessage)
    assert frame == decode_server_frame(text.encode())
