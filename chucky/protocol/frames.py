"""Frames of the wire protocol (docs/protocol.md sections 3 and 4): models, decoding, encoding.

Every frame is one WebSocket text message holding one JSON object with a ``type``.

* Client to server (section 3): :class:`InitFrame`, :class:`UserFrame`, :class:`PromptFrame`,
  :class:`SdkMessageFrame`, :class:`ToolResultFrame`, :class:`ClientControlFrame`,
  :class:`PingFrame`. The server decodes them strictly (:func:`decode_client_frame`), accepting
  the documented aliases and both official dialects, and raises :class:`FrameError` otherwise.
* Server to client (section 4): :mod:`.server_frames`, decoded tolerantly by the client.

Encoding is plain ``json`` with compact separators; frames are built as dicts because this is
the hot path of streaming (thousands of ``stream_event`` frames per turn).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pydantic_core import from_json

from ..errors import ValidationError
from ..options import SessionOptions

__all__ = [
    "MAX_CLIENT_FRAME_BYTES",
    "MAX_SERVER_FRAME_BYTES",
    "Base64Source",
    "ClientControlFrame",
    "ClientFrame",
    "DocumentInput",
    "FrameError",
    "ImageInput",
    "InitFrame",
    "InputBlock",
    "PingFrame",
    "PromptFrame",
    "SdkMessageFrame",
    "TextInput",
    "ToolResultFrame",
    "ToolResultPayload",
    "UserFrame",
    "close_reason",
    "decode_client_frame",
    "encode",
    "turn_content",
]

MAX_SERVER_FRAME_BYTES: Final = 1024 * 1024
"""Frames a server sends stay below this (the official Python client closes with 1009 above)."""

MAX_CLIENT_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Default size limit of frames a server accepts (multimodal content)."""

encode: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""Serialise a frame (a JSON-ready dict) to the text of one WebSocket message."""


class FrameError(ValidationError):
    """A frame the server cannot accept: not JSON, not an object, unknown type, bad fields.

    ``details.reason`` is ``invalid_frame`` or (for a bad ``init`` payload) ``invalid_options``.
    """


# --- client -> server ---------------------------------------------------------------------------


class _Strict(BaseModel):
    # The server reads strictly: known fields are typed; unknown top-level keys are ignored
    # (the official clients add ``session_id``/``uuid``/``parent_tool_use_id``). No number may
    # be infinite or NaN, not even from a string such as "inf" (a pong must echo an integer).
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: str = Field(min_length=1)
    data: str


class UrlSource(_Strict):
    type: Literal["url"]
    url: str


class TextSource(_Strict):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class TextInput(_Strict):
    type: Literal["text"]
    text: str


class ImageInput(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class DocumentInput(_Strict):
    type: Literal["document"]
    source: Annotated[Base64Source | UrlSource | TextSource, Field(discriminator="type")]
    title: str | None = None


InputBlock = Annotated[TextInput | ImageInput | DocumentInput, Field(discriminator="type")]
"""A content block a user turn may carry: text, image or document."""

TurnContent = str | list[InputBlock]


def _null_is_absent(value: Any) -> Any:
    # docs/protocol.md section 5: ``null`` means absent (a Go client marshals a nil payload as
    # null).
    return {} if value is None else value


class InitFrame(_Strict):
    type: Literal["init"]
    payload: Annotated[SessionOptions, BeforeValidator(_null_is_absent)] = Field(
        default_factory=SessionOptions
    )


class UserTurnBody(_Strict):
    role: Literal["user"] = "user"
    content: TurnContent


TURN_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,100}$"
"""What a ``turnId`` may be (docs/protocol.md section 10)."""


class _TurnFrame(_Strict):
    # Our extension (section 10, ``seq``): the client's id of the turn; a turn re-sent with an
    # id the session has runs once.
    turn_id: str | None = Field(default=None, alias="turnId", pattern=TURN_ID_PATTERN)


class UserFrame(_TurnFrame):
    """T's turn form: ``{"type": "user", "message": {"role": "user", "content": ...}}``."""

    type: Literal["user"]
    message: UserTurnBody


class PromptPayload(BaseModel):
    # Flat form: every key besides ``message``/``options`` is an option.
    model_config = ConfigDict(extra="allow")
    message: TurnContent
    # Validated by :func:`turn_content`, so that bad options are ``invalid_options`` (section 8).
    options: Any = None


class PromptFrame(_TurnFrame):
    """P's turn form: ``{"type": "prompt", "payload": {"message": ..., "options": {...}}}``."""

    type: Literal["prompt"]
    payload: PromptPayload


class SdkMessagePayload(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["user", "user_message"]
    message: TurnContent | UserTurnBody | None = None
    content: TurnContent | None = None


class SdkMessageFrame(_TurnFrame):
    """The legacy documented turn form."""

    type: Literal["sdk_message"]
    payload: SdkMessagePayload


class ToolResultPayload(_Strict):
    content: list[dict[str, Any]]
    is_error: bool | None = Field(default=None, alias="isError")


class ToolResultBody(_Strict):
    call_id: str = Field(alias="callId", min_length=1)
    result: ToolResultPayload


class ToolResultFrame(_Strict):
    type: Literal["tool_result"]
    payload: ToolResultBody


class ClientControlBody(_Strict):
    # ``ack``: our extension (section 10, ``seq``).
    action: Literal["close", "end_input", "interrupt", "ack"]
    data: Any = None


class ClientControlFrame(_Strict):
    type: Literal["control"]
    payload: ClientControlBody


class PingBody(_Strict):
    # ``int`` first: a millisecond timestamp is echoed exactly (a float loses digits above 2**53).
    timestamp: int | float | None = None


class PingFrame(_Strict):
    type: Literal["ping"]
    payload: Annotated[PingBody, BeforeValidator(_null_is_absent)] = Field(default_factory=PingBody)


ClientFrame = Annotated[
    InitFrame
    | UserFrame
    | PromptFrame
    | SdkMessageFrame
    | ToolResultFrame
    | ClientControlFrame
    | PingFrame,
    Field(discriminator="type"),
]
"""Any frame a client sends."""

_CLIENT_TYPES: Final = frozenset(
    {"init", "user", "prompt", "sdk_message", "tool_result", "control", "ping"}
)
_client_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


_UNION_LABELS: Final = frozenset({"str", "int", "float", "bool", "none"})


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: error frames quote client input, and a
    frame the server sends must stay small whatever the client sent."""
    return _clip_text(repr(value), limit)


MAX_CLOSE_REASON_BYTES: Final = 123
"""A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 section 5.5: a control frame's
payload is at most 125 bytes, two of them the code)."""


def close_reason(text: str) -> str:
    """``text`` as a close frame's reason: valid UTF-8 (a lone surrogate becomes ``?``) cut to
    :data:`MAX_CLOSE_REASON_BYTES` bytes on a character boundary."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return encoded.decode("utf-8")
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _describe(exc: pydantic.ValidationError, tag: str | None = None) -> str:
    # The deepest error is the most specific one (unions report one error per member).
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda error: len(error["loc"]))
    loc = list(first["loc"])
    if loc and loc[0] == tag:  # the discriminated union's tag, not a field
        loc = loc[1:]
    # Drop union-member labels such as ``str`` or ``list[...]``; keep field names and indexes.
    where = ".".join(
        _clip_text(str(part), 40)
        for part in loc
        if not (isinstance(part, str) and ("[" in part or part in _UNION_LABELS))
    )
    message = _clip_text(str(first["msg"]), 200)  # pydantic quotes the offending input
    return f"{_clip_text(where, 200)}: {message}" if where else message


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # ``1e999``: JSON has no infinities
        raise ValueError(f"number out of range: {literal}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # ``NaN``/``Infinity``, which json.loads allows


_STRICT_DECODER: Final = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_reject_constant
)


def _load(text: str | bytes, *, strict: bool) -> Any:
    if not strict:
        # The client's hot path (one call per streamed delta): pydantic-core's parser is about
        # 2.4x faster than json.loads. Where it refuses what json.loads accepts (a lone
        # surrogate escape, nesting deeper than ~200), json.loads decides.
        try:
            return from_json(text)
        except ValueError:
            pass
    # A frame is UTF-8 text; json.loads would also sniff UTF-16/32 in bytes.
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    if strict:
        return _STRICT_DECODER.decode(text)
    return json.loads(text)


def _invalid_options(exc: pydantic.ValidationError | RecursionError, kind: str) -> FrameError:
    text = _describe(exc) if isinstance(exc, pydantic.ValidationError) else "nested too deeply"
    return FrameError(
        f"Invalid options: {text}", details={"reason": "invalid_options", "type": kind}
    )


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


_CONTENT_PATHS: Final = frozenset(
    {"message.content", "payload.message", "payload.content", "payload.result"}
)
"""Where a frame carries message or tool result content (``user``, ``prompt``, ``sdk_message``,
``tool_result``): a lone surrogate there is text, stored and sent back as a JSON escape."""


def _lone_surrogate(data: Any) -> str | None:
    """Where a string of ``data`` (a key or a value, at any depth, content aside) holds a lone
    surrogate (its dotted path), or ``None``: JSON's ``\\udXXX`` escapes decode to one
    unpaired, which an id, a name or an option cannot carry (a database column, a close
    reason, a provider's parameter take UTF-8)."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path or "(the frame)"
        elif isinstance(item, dict):
            for key, value in item.items():
                where = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    return f"{path} (a key)" if path else "(a key)"
                if where not in _CONTENT_PATHS:
                    stack.append((value, where))
        elif isinstance(item, list):
            stack.extend((value, f"{path}.{i}" if path else str(i)) for i, value in enumerate(item))
    return None


def decode_client_frame(text: str | bytes) -> ClientFrame:
    """Decode one frame a client sent.

    Raises:
        FrameError: not JSON (or not UTF-8), not an object, a lone surrogate (``\\ud800``) in
            an id, a name or an option (content may hold one), an unknown ``type``, or fields
            that do not fit (``details.reason`` = ``invalid_options`` for a bad ``init``
            payload).
    """
    try:
        data = _load(text, strict=True)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FrameError(
            "Invalid frame: not valid JSON", details={"reason": "invalid_frame"}
        ) from exc
    if not isinstance(data, dict):
        raise FrameError(
            "Invalid frame: a frame must be a JSON object", details={"reason": "invalid_frame"}
        )
    kind = data.get("type")
    text_form = text if isinstance(text, str) else None
    where = None
    if text_form is None or _SURROGATE_ESCAPE.search(text_form):
        where = _lone_surrogate(data)
    if where is not None:
        known = isinstance(kind, str) and kind in _CLIENT_TYPES
        raise FrameError(
            f"Invalid {f'{kind} ' if known else ''}frame: {_clip_text(where, 80)}: a lone "
            "surrogate (an unpaired \\ud800-\\udfff escape); text must be valid Unicode",
            details={
                "reason": "invalid_options" if kind == "init" else "invalid_frame",
                "type": kind if known else None,
            },
        )
    if not isinstance(kind, str) or kind not in _CLIENT_TYPES:
        raise FrameError(
            f"Invalid frame: unknown frame type {clip(kind)}",
            details={
                "reason": "invalid_frame",
                "type": _clip_text(kind, 80) if isinstance(kind, str) else None,
            },
        )
    try:
        return _client_adapter.validate_python(data)
    except pydantic.ValidationError as exc:
        reason = "invalid_options" if kind == "init" else "invalid_frame"
        noun = "options" if kind == "init" else f"{kind} frame"
        raise FrameError(
            f"Invalid {noun}: {_describe(exc, kind)}", details={"reason": reason, "type": kind}
        ) from exc
    except RecursionError as exc:  # schema clean-up of a pathologically nested inputSchema
        if kind == "init":
            raise _invalid_options(exc, kind) from exc
        raise FrameError(
            f"Invalid {kind} frame: nested too deeply",
            details={"reason": "invalid_frame", "type": kind},
        ) from exc


def _plain_content(content: TurnContent) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [block.model_dump(mode="json", exclude_none=True) for block in content]


def turn_content(
    frame: UserFrame | PromptFrame | SdkMessageFrame,
) -> tuple[str | list[dict[str, Any]], SessionOptions | None]:
    """The user content of a turn frame and the per-turn options it carries (P's ``prompt``).

    Raises:
        FrameError: an ``sdk_message`` without content, or bad per-turn options.
    """
    if isinstance(frame, UserFrame):
        return _plain_content(frame.message.content), None
    if isinstance(frame, PromptFrame):
        payload = frame.payload
        # Nested ``options``, else the flat form's extra keys; ``null`` or ``{}`` = none.
        raw_options = payload.options if payload.options is not None else payload.model_extra
        options = None
        if raw_options is not None and raw_options != {}:
            try:
                options = SessionOptions.model_validate(raw_options)
            except (pydantic.ValidationError, RecursionError) as exc:
                raise _invalid_options(exc, "prompt") from exc
        return _plain_content(payload.message), options
    body = frame.payload.message
    if isinstance(body, UserTurnBody):
        return _plain_content(body.content), None
    if body is not None:
        return _plain_content(body), None
    if frame.payload.content is not None:
        return _plain_content(frame.payload.content), None
    raise FrameError(
        "Invalid sdk_message frame: no message content",
        details={"reason": "invalid_frame", "type": "sdk_message"},
    )
