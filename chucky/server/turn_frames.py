"""What a turn sends besides the agent loop's own messages: tool-result blocks and their echo
(cut to fit one frame), the ``result`` of a turn that never ran, and the messages of a turn
that ended already, sent again from the transcript (the ``seq`` extension, docs/protocol.md
section 10).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..messages import (
    AssistantBody,
    AssistantMessage,
    ResultMessage,
    Usage,
    UserBody,
    UserMessage,
    WireModel,
)
from ..protocol.frames import MAX_SERVER_FRAME_BYTES, ToolResultPayload
from .catalog import mcp_content_to_blocks
from .store import SessionRecord, new_id

__all__ = [
    "INTERRUPTED",
    "empty_result",
    "error_payload",
    "fit_echo",
    "outcome",
    "result_blocks",
    "transcript_messages",
]

# Room left for the envelope when a tool-result echo is truncated to fit one frame.
_ECHO_BUDGET: Final = MAX_SERVER_FRAME_BYTES - 64 * 1024


def error_payload(text: str) -> ToolResultPayload:
    """A tool result that failed, holding ``text`` for the model to read."""
    return ToolResultPayload(content=[{"type": "text", "text": text}], isError=True)


INTERRUPTED: Final = error_payload("Tool call interrupted before it returned a result")


def outcome(call: asyncio.Future[ToolResultPayload]) -> ToolResultPayload:
    """A call's result if it has one; else an error result."""
    if not call.done() or call.cancelled() or call.exception() is not None:
        return INTERRUPTED
    return call.result()


def result_blocks(
    tool_uses: list[dict[str, Any]], results: list[ToolResultPayload]
) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_result",
            "tool_use_id": block["id"],
            "content": mcp_content_to_blocks(result.content),
            "is_error": bool(result.is_error),
        }
        for block, result in zip(tool_uses, results, strict=True)
    ]


def _json_size(value: Any) -> int:
    """Bytes of ``value`` in a frame (UTF-8 JSON, escapes included, as the connection sends)."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace"))


def _cut_text(text: str, limit: int) -> str:
    """A prefix of ``text`` whose JSON string form takes at most ``limit`` bytes."""
    cut = text
    while cut and (size := _json_size(cut)) > limit:
        # Shrink in proportion; escapes (``\"``, ``\u0001``) make bytes != characters.
        cut = cut[: min(len(cut) - 1, len(cut) * limit // size)]
    return cut


def fit_echo(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool-result echo, with oversized text cut so the frame stays under 1 MiB.

    Only the echo is cut; the transcript keeps the full results. Images are left out of an
    oversized echo; text items share the room, each cut one ending with a marker.
    """
    if _json_size(blocks) <= _ECHO_BUDGET:
        return blocks
    room = _ECHO_BUDGET
    while True:
        fitted = _cut_echo(blocks, room)
        if _json_size(fitted) <= _ECHO_BUDGET or room == 0:
            return fitted
        room //= 2  # the envelope of many blocks took more than its reserve


def _cut_echo(blocks: list[dict[str, Any]], room: int) -> list[dict[str, Any]]:
    left = sum(len(block["content"]) for block in blocks)
    fitted: list[dict[str, Any]] = []
    for block in blocks:
        items = []
        for item in block["content"]:
            share = max(0, room) // max(1, left)  # small items leave their room to later ones
            if item.get("type") == "text" and _json_size(item["text"]) > share:
                text = _cut_text(item["text"], max(0, share - 64))
                dropped = _json_size(item["text"]) - _json_size(text)
                item = {"type": "text", "text": f"{text}\n[truncated: {dropped} more bytes]"}
            elif item.get("type") == "image":
                item = {"type": "text", "text": "[image omitted from echo]"}
            room -= _json_size(item)
            left -= 1
            items.append(item)
        fitted.append({**block, "content": items})
    return fitted


def empty_result(session_id: str, subtype: str, errors: tuple[str, ...]) -> ResultMessage:
    """The ``result`` of a turn that ended before its loop started (interrupted while queued
    or admitted): no model call, no cost."""
    return ResultMessage(
        subtype=subtype,
        uuid=new_id(),
        session_id=session_id,
        is_error=subtype != "success",
        num_turns=0,
        duration_ms=0,
        duration_api_ms=0,
        total_cost_usd=0.0,
        usage=Usage(),
        errors=list(errors) or None,
    )


def transcript_messages(
    session: SessionRecord, messages: Sequence[Mapping[str, Any]]
) -> list[WireModel]:
    """Transcript messages as the SDK messages a turn sent for them, with their ``uuid``
    (what a client already has, it recognises). The transcript keeps no per-message usage,
    id or stop reason: an assistant message comes back without them."""
    out: list[WireModel] = []
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant":
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            out.append(
                AssistantMessage(
                    uuid=message["uuid"],
                    session_id=session.session_id,
                    message=AssistantBody(
                        id=f"msg_{message['uuid']}", model=session.model, content=blocks
                    ),
                )
            )
        else:
            echo = fit_echo(content) if isinstance(content, list) else content
            out.append(
                UserMessage(
                    uuid=message["uuid"],
                    session_id=session.session_id,
                    message=UserBody(content=echo),
                )
            )
    return out
