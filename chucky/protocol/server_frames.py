"""Frames a server sends (docs/protocol.md section 4), as the client decodes them.

Bare SDK messages (:mod:`chucky.messages`), :class:`ServerControlFrame` (with
:class:`ToolCancelData` for ``tool_cancel``, section 10), :class:`ErrorFrame`,
:class:`PongFrame`, :class:`ToolCallFrame`, and the legacy ``sdk_message`` envelope, decoded
tolerantly (:func:`decode_server_frame`): unknown fields and unknown message kinds pass
through, and nothing raises. The frames a client sends, and the shared helpers, are
:mod:`.frames`'.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..messages import ResultMessage, SDKMessage, parse_message
from .frames import _describe, _load

__all__ = [
    "ErrorFrame",
    "PongFrame",
    "ServerControlBody",
    "ServerControlFrame",
    "ServerFrame",
    "ToolCallBody",
    "ToolCallFrame",
    "ToolCancelData",
    "UnknownFrame",
    "decode_server_frame",
    "decode_server_frame_seq",
]


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ServerControlBody(_Tolerant):
    action: str
    data: dict[str, Any] | None = None


class ServerControlFrame(_Tolerant):
    """``control`` from the server: ``ready``, ``session_info``, ``close``, or (our extension
    ``tool_cancel``, docs/protocol.md section 10) ``tool_cancel``."""

    type: Literal["control"] = "control"
    payload: ServerControlBody


class ToolCancelData(_Tolerant):
    """``data`` of ``control`` ``tool_cancel``: the server abandoned the pending call ``callId``.

    ``reason`` is ``interrupted``, ``timeout`` or ``turn_ended`` today; other strings are kept
    as they are (a newer server may add reasons).
    """

    call_id: str = Field(alias="callId", min_length=1)
    reason: str


class ErrorFrame(_Tolerant):
    type: Literal["error"] = "error"
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("payload", mode="before")
    @classmethod
    def _any_payload(cls, value: Any) -> Any:
        # An error frame must always reach the client as an error (it may end the turn), so
        # a payload that is not an object is kept as its message.
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        return {"message": value if isinstance(value, str) else json.dumps(value)}


class PongFrame(_Tolerant):
    type: Literal["pong"] = "pong"
    payload: dict[str, Any] = Field(default_factory=dict)


class ToolCallBody(_Tolerant):
    call_id: str = Field(alias="callId")
    tool_name: str = Field(alias="toolName")
    input: Any = Field(default_factory=dict)


class ToolCallFrame(_Tolerant):
    type: Literal["tool_call"] = "tool_call"
    payload: ToolCallBody


class UnknownFrame(_Tolerant):
    """A frame the client does not understand (logged and skipped)."""

    type: Any = None
    reason: str = ""


ServerFrame = (
    SDKMessage | ServerControlFrame | ErrorFrame | PongFrame | ToolCallFrame | UnknownFrame
)
"""Anything :func:`decode_server_frame` returns."""

_SDK_TYPES: Final = frozenset({"system", "assistant", "user", "stream_event", "result"})
_FRAME_MODELS: Final[dict[str, type[BaseModel]]] = {
    "control": ServerControlFrame,
    "error": ErrorFrame,
    "pong": PongFrame,
    "tool_call": ToolCallFrame,
}


def decode_server_frame(text: str | bytes) -> ServerFrame:
    """Decode one frame a server sent, tolerantly: never raises.

    SDK messages come back as :mod:`chucky.messages` models (also when wrapped in the legacy
    ``sdk_message`` envelope); an ``error`` frame comes back as :class:`ErrorFrame`; anything
    unusable as :class:`UnknownFrame` with a ``reason``. A top-level ``seq`` (our ``seq``
    extension, docs/protocol.md section 10) is taken off first: see
    :func:`decode_server_frame_seq`.
    """
    return decode_server_frame_seq(text)[0]


def decode_server_frame_seq(text: str | bytes) -> tuple[ServerFrame, int | None]:
    """:func:`decode_server_frame`, and the frame's ``seq`` (``None`` when it has none).

    The ``seq`` is removed from the frame before it is validated, so it never shows in a
    message object or its mapping view. A ``seq`` that is not an integer >= 1 counts as none.
    """
    try:
        data = _load(text, strict=False)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return UnknownFrame(reason="not valid JSON"), None
    if not isinstance(data, dict):
        return UnknownFrame(reason="not a JSON object"), None
    raw_seq = data.pop("seq", None)
    seq = (
        raw_seq
        if isinstance(raw_seq, int) and not isinstance(raw_seq, bool) and raw_seq >= 1
        else None
    )
    return _decode_object(data), seq


def _decode_object(data: dict[str, Any]) -> ServerFrame:
    kind = data.get("type")
    if kind == "sdk_message":
        inner = data.get("payload")
        if not isinstance(inner, dict):
            return UnknownFrame(type=kind, reason="sdk_message without a payload object")
        data, kind = inner, inner.get("type")
    if not isinstance(kind, str):
        return UnknownFrame(type=kind, reason="unknown frame type")
    try:
        if kind in _SDK_TYPES:
            return parse_message(data)
        model = _FRAME_MODELS.get(kind)
        if model is None:
            return UnknownFrame(type=kind, reason="unknown frame type")
        return model.model_validate(data)  # type: ignore[return-value]
    except pydantic.ValidationError as exc:
        if kind == "result":
            # Section 4: a turn ends with its result; never leave the turn open over a field.
            return ResultMessage.salvage(data)
        return UnknownFrame(type=kind, reason=_describe(exc))
    except RecursionError:
        return UnknownFrame(type=kind, reason="nested too deeply")
