"""Fuzz: whatever a client sends, the server neither crashes nor closes the socket early.

Random text, random bytes and random JSON objects (with and without a known ``type``) go to
an open session; the invalid-frame limit is set high so that no close is legitimate. Then a
valid turn must still be answered on the same socket.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.raw import FRAME_TIMEOUT, open_session, recv, send, user_frame
from websockets.exceptions import ConnectionClosed

from chucky.testing import scripted_server

CLIENT_TYPES = ["init", "user", "prompt", "sdk_message", "tool_result", "control", "ping"]

# Characters that have broken JSON and UTF-8 handling before: lone surrogates (json.dumps writes
# them as "\\udXXX" escapes; they are no valid UTF-8), escapes, NUL, astral code points.
TRICKY = ["\ud800", "\udfff", "\udc00", '"', "\\", "\x00", "\n", "\u2028", "\U0001f600", "é"]
chars = st.one_of(st.sampled_from(TRICKY), st.characters(), st.characters(categories=["Cs"]))
wild_text = st.text(alphabet=chars, max_size=20)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them, JSON has none
    | wild_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(wild_text, inner, max_size=4),
    max_leaves=12,
)

# Turn content the scripted model echoes back ("~" keeps it from being a script command).
turn_text = st.text(alphabet=chars, min_size=1, max_size=20).map(lambda text: "~" + text)
turn_content = turn_text | st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": turn_text}),
        st.dictionaries(wild_text, json_values, max_size=3),
    ),
    max_size=3,
)
option_values = st.dictionaries(
    st.sampled_from(
        ["model", "maxTurns", "systemPrompt", "includePartialMessages", "tools", "outputFormat"]
    ),
    json_values,
    max_size=3,
)
turns = st.one_of(
    st.builds(
        lambda content, extra: (
            {"type": "user", "message": {"role": "user", "content": content}} | extra
        ),
        turn_content,
        st.dictionaries(st.sampled_from(["session_id", "uuid", "parent_tool_use_id"]), json_values),
    ),
    st.builds(
        lambda message, options, flat: {
            "type": "prompt",
            "payload": (
                {"message": message, "options": options}
                if flat is None
                else {"message": message, **flat}
            ),
        },
        turn_content,
        option_values,
        st.none() | option_values,
    ),
    st.builds(
        lambda kind, key, content: {"type": "sdk_message", "payload": {"type": kind, key: content}},
        st.sampled_from(["user", "user_message", "assistant"]),
        st.sampled_from(["message", "content"]),
        turn_content,
    ),
)

# Objects shaped like client frames, so the fuzz gets past the type check.
framed = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_TYPES, "error", "result", ""])},
    optional={
        "payload": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "message": json_values,
                "content": json_values,
                "type": st.sampled_from(["user", "user_message", "x"]),
                "callId": wild_text,
                "result": json_values,
                "action": st.sampled_from(["interrupt", "bogus", ""]),
                "timestamp": json_values,
                "options": json_values,
                "model": json_values,
            },
        ),
        "message": json_values
        | st.fixed_dictionaries({"content": json_values}, optional={"role": json_values}),
        "session_id": json_values,
    },
)

frames = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60),
    st.binary(max_size=60),
    st.dictionaries(wild_text, json_values, max_size=5),
    framed,
    turns,
    turns,  # twice: valid turns reach the model and come back in replies
)


def _ends_the_session(frame: Any) -> bool:
    # close and end_input legitimately close the socket.
    return (
        isinstance(frame, dict)
        and frame.get("type") == "control"
        and isinstance(frame.get("payload"), dict)
        and frame["payload"].get("action") in ("close", "end_input")
    )


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is never a fluke
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(frames.filter(lambda f: not _ends_the_session(f)), min_size=1, max_size=8))
async def test_random_frames_never_break_the_session(batch: list[Any]) -> None:
    async with (
        scripted_server(max_invalid_frames=1_000_000) as server,
        open_session(server) as (ws, _),
    ):
        for frame in batch:
            if isinstance(frame, bytes):
                await ws.send(frame)
            else:
                await send(ws, frame if isinstance(frame, str) else json.dumps(frame))
        # Fuzzed turns (queued, answered in order) come back before this one.
        await send(ws, user_frame("echo fuzz survived"))
        codes = []
        try:
            while True:
                frame = await recv(ws, FRAME_TIMEOUT)
                if frame["type"] == "error":
                    codes.append(frame["payload"]["code"])
                if frame["type"] == "result" and frame.get("result") == "fuzz survived":
                    break
        except ConnectionClosed:
            raise AssertionError(f"closed early: {ws.close_code} {ws.close_reason}") from None
        assert set(codes) <= {"VALIDATION_ERROR"}, codes
