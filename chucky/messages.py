"""SDK messages and content blocks (docs/protocol.md section 4).

The server sends SDK messages bare: ``system``, ``assistant``, ``user``, ``stream_event`` and
``result``. Each kind has one pydantic model here; :data:`SDKMessage` is their union, decoded by
:func:`parse_message`. The models tolerate unknown fields (the server may add some) and unknown
content blocks.

Every message is also a read-only mapping over its wire form, so code written for the official
client, which handed out plain dicts, keeps working::

    msg.type == "assistant"             # typed access
    msg.get("type") == "assistant"      # and the official dict access
    msg["message"]["content"][0]["text"]
    dict(msg)

The client turns ``error`` frames into :class:`ErrorMessage` (``{"type": "error", "error": {...}}``,
the shape the official client queued) whose :attr:`ErrorMessage.exception` is the typed error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import ChuckyError, error_from_payload

__all__ = [
    "AssistantBody",
    "AssistantMessage",
    "ContentBlock",
    "DocumentBlock",
    "ErrorMessage",
    "ImageBlock",
    "ResultMessage",
    "SDKMessage",
    "StreamEventMessage",
    "SystemMessage",
    "TextBlock",
    "ThinkingBlock",
    "ToolResultBlock",
    "ToolUseBlock",
    "UnknownBlock",
    "UnknownMessage",
    "Usage",
    "UserBody",
    "UserMessage",
    "get_assistant_text",
    "get_result_text",
    "parse_content",
    "parse_message",
]


def _lax_int(value: Any) -> Any:
    # Servers other than ours may send 12.0 or "12" where docs/protocol.md asks for an integer.
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        # "inf" and "1e999" parse as infinite floats, which round() cannot take.
        return round(number) if math.isfinite(number) else value
    return value


LaxInt = Annotated[int, BeforeValidator(_lax_int)]


def _json_object(value: Any) -> dict[str, Any]:
    # Checked, not copied: pydantic's dict[str, Any] validation rebuilds the dict, and a
    # stream_event is decoded once per streamed delta.
    if isinstance(value, dict):
        return value
    raise ValueError("Input should be a valid dictionary")


class WireModel(BaseModel):
    """A model that is also a read-only mapping over its JSON form.

    Mapping access reads the dict the model was decoded from (or, for a model built in code, its
    serialisation, computed once). Attribute access is typed. Models are immutable (``frozen``:
    setting a field raises), so the mapping view can never disagree with the fields; derive a
    changed one with ``model_copy(update=...)``.
    """

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, protected_namespaces=(), frozen=True
    )

    # Fields that the wire form carries even when they are None (``parent_tool_use_id: null``).
    _always_null: ClassVar[tuple[str, ...]] = ()
    # Caches live in the instance ``__dict__`` under these keys, not in pydantic private
    # attributes: pydantic initialises private attributes in Python for every instance, which
    # doubled the cost of decoding a streamed delta. pydantic serialises, copies and compares
    # only the declared fields, and ``__eq__`` below skips these keys.
    _CACHE_KEYS: ClassVar[frozenset[str]] = frozenset({"_wire_view", "_exception_cache"})

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent on the wire (``None`` fields left out, aliases used)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name in self._always_null:
            data.setdefault(name, None)
        return data

    def _mapping(self) -> dict[str, Any]:
        view: dict[str, Any] | None = self.__dict__.get("_wire_view")
        if view is None:
            view = self.__dict__["_wire_view"] = self.to_wire()
        return view

    def _forget_caches(self) -> None:
        # The caches are views derived from the fields; they go when the fields change.
        for key in self._CACHE_KEYS:
            self.__dict__.pop(key, None)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Like :meth:`pydantic.BaseModel.model_copy`; with ``update``, the mapping view follows."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._forget_caches()
        return copied

    def _data(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._CACHE_KEYS}

    def __eq__(self, other: object) -> bool:
        # Equal data, whether or not a cache (the mapping view) has been filled yet.
        if not isinstance(other, WireModel):
            return NotImplemented
        return (
            type(self) is type(other)
            and self._data() == other._data()
            and (self.__pydantic_extra__ or {}) == (other.__pydantic_extra__ or {})
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    # Mapping protocol, over the wire form.
    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Like :meth:`dict.get` on the wire form (the official client's dict access)."""
        return self._mapping().get(key, default)

    def keys(self) -> Any:
        return self._mapping().keys()

    def values(self) -> Any:
        return self._mapping().values()

    def items(self) -> Any:
        return self._mapping().items()

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def __len__(self) -> int:
        return len(self._mapping())

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        # pydantic iterates (name, value) pairs; a mapping iterates its keys.
        return iter(self._mapping())


# --- content blocks ---------------------------------------------------------------------------


class TextBlock(WireModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(WireModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str | None = None


class ToolUseBlock(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(WireModel):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class Base64Source(WireModel):
    type: Literal["base64"] = "base64"
    media_type: str
    data: str


class ImageBlock(WireModel):
    """An image (base64 ``source``) in a user turn."""

    type: Literal["image"] = "image"
    source: Base64Source | dict[str, Any]


class DocumentBlock(WireModel):
    """A document, e.g. a PDF (base64 ``source``) in a user turn."""

    type: Literal["document"] = "document"
    source: Base64Source | dict[str, Any]
    title: str | None = None


class UnknownBlock(WireModel):
    """A content block of a kind this version does not know; its fields stay readable."""

    type: str


_BLOCK_TAGS = frozenset({"text", "thinking", "tool_use", "tool_result", "image", "document"})


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _BLOCK_TAGS else "unknown"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[UnknownBlock, Tag("unknown")],
    Discriminator(_block_tag),
]

_content_adapter: TypeAdapter[str | list[ContentBlock]] = TypeAdapter(str | list[ContentBlock])


def parse_content(content: Any) -> str | list[ContentBlock]:
    """Validate message ``content``: a string or a list of content blocks."""
    return _content_adapter.validate_python(content)


# --- messages ---------------------------------------------------------------------------------


class Usage(WireModel):
    input_tokens: LaxInt = 0
    output_tokens: LaxInt = 0
    cache_creation_input_tokens: LaxInt = 0
    cache_read_input_tokens: LaxInt = 0


class AssistantBody(WireModel):
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock] = Field(default_factory=list)
    model: str | None = None
    id: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None


class UserBody(WireModel):
    role: Literal["user"] = "user"
    content: str | list[ContentBlock] = ""


class SystemMessage(WireModel):
    """``system`` message; subtype ``init`` opens every turn and carries the session id."""

    type: Literal["system"] = "system"
    subtype: str = "init"
    uuid: str | None = None
    session_id: str | None = None
    cwd: str | None = None
    tools: list[str] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    model: str | None = None
    permission_mode: str | None = Field(default=None, alias="permissionMode")
    unsupported_options: list[str] | None = Field(default=None, alias="unsupportedOptions")
    """chucky: the session's ``init`` options the server does not act on (absent if none)."""


class AssistantMessage(WireModel):
    """One model response: text, tool_use and thinking blocks."""

    _always_null = ("parent_tool_use_id",)
    type: Literal["assistant"] = "assistant"
    uuid: str | None = None
    session_id: str | None = None
    parent_tool_use_id: str | None = None
    message: AssistantBody

    @property
    def text(self) -> str:
        """The concatenated text blocks."""
        return "".join(b.text for b in self.message.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        """The tool_use blocks, in order."""
        return [b for b in self.message.content if isinstance(b, ToolUseBlock)]


class UserMessage(WireModel):
    """A user message; from the server, the echo of tool results."""

    _always_null = ("parent_tool_use_id",)
    type: Literal["user"] = "user"
    uuid: str | None = None
    session_id: str | None = None
    parent_tool_use_id: str | None = None
    message: UserBody


class StreamEventMessage(WireModel):
    """A raw Anthropic stream event (only with ``include_partial_messages``)."""

    _always_null = ("parent_tool_use_id",)
    type: Literal["stream_event"] = "stream_event"
    uuid: str | None = None
    session_id: str | None = None
    parent_tool_use_id: str | None = None
    event: Annotated[dict[str, Any], PlainValidator(_json_object)]

    @property
    def text_delta(self) -> str | None:
        """The text of a ``text_delta`` event, else ``None``."""
        event = self.event
        if event.get("type") == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                return text if isinstance(text, str) else None
        return None


class ResultMessage(WireModel):
    """The last message of every turn: outcome, cost, usage, durations."""

    type: Literal["result"] = "result"
    subtype: str = "success"
    uuid: str | None = None
    session_id: str | None = None
    is_error: bool = False
    num_turns: LaxInt = 0
    duration_ms: LaxInt = 0
    duration_api_ms: LaxInt = 0
    total_cost_usd: float = 0.0
    usage: Usage = Field(default_factory=Usage)
    result: str | None = None
    structured_output: Any = None
    errors: list[str] | None = None
    stop_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # A result must end its turn whatever else is wrong with it: ``null`` counters and a
        # ``null`` usage are read as their defaults rather than failing validation.
        if isinstance(data, dict) and any(v is None for v in data.values()):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @classmethod
    def salvage(cls, data: dict[str, Any]) -> ResultMessage:
        """A result that ends the turn from a ``result`` frame that does not validate.

        Only the fields that validate on their own are kept; the raw frame stays readable
        through the mapping view.
        """
        kept: dict[str, Any] = {}
        for name, value in data.items():
            try:
                cls.model_validate({**kept, name: value})
            except ValidationError:
                continue
            kept[name] = value
        message = cls.model_validate(kept)
        message.__dict__["_wire_view"] = data
        return message


class ErrorMessage(WireModel):
    """An ``error`` frame as a message: ``{"type": "error", "error": {message, code, details}}``."""

    type: Literal["error"] = "error"
    error: dict[str, Any]

    @property
    def exception(self) -> ChuckyError:
        """The typed exception this error maps to (docs/protocol.md section 8)."""
        exc: ChuckyError | None = self.__dict__.get("_exception_cache")
        if exc is None:
            exc = self.__dict__["_exception_cache"] = error_from_payload(self.error)
        return exc

    @classmethod
    def from_exception(
        cls, exc: ChuckyError, payload: Mapping[str, Any] | None = None
    ) -> ErrorMessage:
        """The message for ``exc``; ``payload`` is the error frame's, when there was one."""
        msg = cls(error=dict(payload) if payload is not None else exc.to_payload())
        msg.__dict__["_exception_cache"] = exc
        return msg


class UnknownMessage(WireModel):
    """A message of a type this version does not know."""

    type: str


_MESSAGE_TAGS = frozenset({"system", "assistant", "user", "stream_event", "result", "error"})


def _message_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _MESSAGE_TAGS else "unknown"


SDKMessage = Annotated[
    Annotated[SystemMessage, Tag("system")]
    | Annotated[AssistantMessage, Tag("assistant")]
    | Annotated[UserMessage, Tag("user")]
    | Annotated[StreamEventMessage, Tag("stream_event")]
    | Annotated[ResultMessage, Tag("result")]
    | Annotated[ErrorMessage, Tag("error")]
    | Annotated[UnknownMessage, Tag("unknown")],
    Discriminator(_message_tag),
]
"""Any message a session yields."""


_MODEL_BY_TAG: dict[str, type[WireModel]] = {
    "system": SystemMessage,
    "assistant": AssistantMessage,
    "user": UserMessage,
    "stream_event": StreamEventMessage,
    "result": ResultMessage,
    "error": ErrorMessage,
}


def parse_message(data: dict[str, Any]) -> SDKMessage:
    """Validate a decoded SDK message dict; the dict stays available as the mapping view.

    Same result as validating with the :data:`SDKMessage` union, but dispatched on ``type``
    with a dict lookup: this runs once per streamed delta.

    Raises:
        pydantic.ValidationError: the message does not fit its model (callers at the I/O
            boundary translate it).
    """
    kind = data.get("type")
    model = _MODEL_BY_TAG.get(kind) if isinstance(kind, str) else None
    msg: SDKMessage = (model or UnknownMessage).model_validate(data)  # type: ignore[assignment]
    msg.__dict__["_wire_view"] = data
    return msg


def get_assistant_text(message: Mapping[str, Any] | WireModel) -> str:
    """The text of an ``assistant`` message (typed or a plain dict); ``""`` for other kinds.

    A dict without ``type`` is read as an assistant message, as the official client did.
    """
    if isinstance(message, AssistantMessage):
        return message.text
    if message.get("type", "assistant") != "assistant":
        return ""
    body = message.get("message") or {}
    content = body.get("content", []) if isinstance(body, Mapping) else []
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, Mapping) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def get_result_text(message: Mapping[str, Any] | WireModel) -> str | None:
    """The final text of a successful ``result`` message, else ``None``."""
    if message.get("type") != "result" or message.get("subtype") != "success":
        return None
    result = message.get("result")
    return result if isinstance(result, str) else None
