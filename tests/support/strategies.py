"""Hypothesis strategies for frame-shaped JSON, shared by the protocol property tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["FIELD_NAMES", "TYPES", "fields", "frame_like", "frames", "leaves", "shape", "shaped"]

FIELD_NAMES = [
    *("type", "payload", "message", "content", "role", "options", "model", "maxTurns"),
    *("callId", "toolName", "input", "result", "isError", "action", "timestamp", "text"),
    *("source", "media_type", "data", "session_id", "sessionId", "subtype", "num_turns"),
    *("usage", "output_tokens", "event", "delta", "details", "reason", "code", "tools"),
]
TYPES = [
    *("init", "user", "prompt", "sdk_message", "tool_result", "control", "ping", "pong"),
    *("system", "assistant", "stream_event", "result", "error", "tool_call", "text", "image"),
    *("ready", "close", "end_input", "interrupt", "session_info", "user_message", "init"),
]
# Leaves include what json.loads accepts beyond JSON (NaN, Infinity), numbers as strings, and
# (through the recursion) unhashable values where a ``type`` is expected.
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["3", "2.5", "inf", "1e999", "c1", "c2"])
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
