"""Hypothesis strategies for frame-shaped JSON, shared by the protocol property tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "BLOCK_TYPES",
    "CLIENT_TYPES",
    "FIELD_NAMES",
    "SERVER_TYPES",
    "TYPES",
    "fields",
    "frame_like",
    "frames",
    "leaves",
    "shape",
    "shaped",
]

CLIENT_TYPES = ["init", "user", "prompt", "sdk_message", "tool_result", "control", "ping"]
SERVER_TYPES = ["system", "assistant", "stream_event", "result", "error", "pong", "tool_call"]
BLOCK_TYPES = ["text", "image", "document", "tool_use", "tool_result", "thinking", "base64"]
# Field names of every frame, message and block, so that generated dicts look like frames.
FIELD_NAMES = [
    *("type", "payload", "message", "content", "role", "options", "model", "maxTurns"),
    *("callId", "toolName", "input", "result", "isError", "action", "timestamp", "text"),
    *("source", "media_type", "data", "url", "mcpServers", "tools", "inputSchema", "required"),
    *("event", "delta", "usage", "num_turns", "duration_ms", "output_tokens", "session_id"),
    *("subtype", "id", "name", "tool_use_id", "systemPrompt", "sessionId", "continue"),
    *("details", "reason", "code"),
]
TYPES = [
    *CLIENT_TYPES,
    *SERVER_TYPES,
    *BLOCK_TYPES,
    *("ready", "close", "end_input", "interrupt", "session_info", "user_message", "url"),
]
# Leaves include what json.loads accepts beyond JSON (NaN, Infinity, huge numbers), numbers as
# strings, and (through the recursion) unhashable values where a ``type`` is expected.
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["3", "2.5", "inf", "nan", "1e999", "-1", "c1", "c2"])
    | st.sampled_from(TYPES)
)


def shaped(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=5)


frame_like = st.recursive(
    leaves, lambda children: st.lists(children, max_size=3) | shaped(children), max_leaves=25
)
frames = st.builds(
    lambda kind, body: {**body, "type": kind},
    st.sampled_from(TYPES) | frame_like,
    shaped(frame_like),
).map(lambda value: json.dumps(value, allow_nan=True))


def shape(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """Frames of one ``kind`` whose (optional) fields hold arbitrary leaves, as JSON text."""
    return st.fixed_dictionaries({"type": st.just(kind)}, optional=fields).map(
        lambda value: json.dumps(value, allow_nan=True)
    )


def fields(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)
