"""Typed events of one turn, and :class:`TurnAccumulator`, which makes them from its messages.

The accumulator is a pure object (no socket, no clock): feed it the turn's
:class:`~chucky.messages.SDKMessage` objects in order with :meth:`TurnAccumulator.feed`, and
it returns the events each one completes and keeps the turn's state (its text, its tool calls,
its result). :class:`~chucky.client.stream.TurnStream` is its asyncio shell; it is usable by hand
on the messages of :meth:`Session.stream() <chucky.client.session.Session.stream>`.

Events, in the order a turn produces them::

    TextDelta*  TextDone            per text block of a model response
    ToolCallStarted  ToolCallArgumentsDone      per tool_use block
    ToolResultEvent                      per tool result echoed back into the transcript
    StructuredOutputDone            with output_format, before the result
    TurnResult                      last

With ``include_partial_messages`` the text comes in many :class:`TextDelta` (the model's
stream); without it, one :class:`TextDelta` holds a response's whole text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from ..errors import ChuckyError
from ..messages import (
    AssistantMessage,
    ErrorMessage,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from .results import PromptResult, structured_result

__all__ = [
    "StructuredOutputDone",
    "TextDelta",
    "TextDone",
    "ToolCallArgumentsDone",
    "ToolCallStarted",
    "ToolResultEvent",
    "TurnAccumulator",
    "TurnEvent",
    "TurnResult",
]


def _bare(name: str) -> str:
    return name.rsplit("__", 1)[-1] if name.startswith("mcp__") else name


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of the assistant's text.

    Attributes:
        text: The fragment.
        snapshot: The text of the current block so far, this fragment included.
    """

    text: str
    snapshot: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True, slots=True)
class TextDone:
    """A text block of a model response is complete.

    Attributes:
        text: The block's whole text.
    """

    text: str
    type: Literal["text_done"] = "text_done"


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The model began a tool call (its arguments follow).

    Attributes:
        id: The ``tool_use`` id.
        name: The tool's bare name (``greet`` for ``mcp__people__greet``).
    """

    id: str
    name: str
    type: Literal["tool_call_started"] = "tool_call_started"


@dataclass(frozen=True, slots=True)
class ToolCallArgumentsDone:
    """A tool call's arguments are complete.

    Attributes:
        id: The ``tool_use`` id.
        name: The tool's bare name.
        arguments: The parsed arguments (a dict).
    """

    id: str
    name: str
    arguments: dict[str, Any]
    type: Literal["tool_call_arguments_done"] = "tool_call_arguments_done"


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    """A tool call's result, as the server put it into the transcript.

    Attributes:
        tool_use_id: The call's id.
        content: The result's content (a string or content items).
        is_error: Whether the call failed (or was denied).
    """

    tool_use_id: str
    content: str | list[dict[str, Any]] | None
    is_error: bool
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class StructuredOutputDone:
    """The turn's structured output (``output_format``), parsed.

    Attributes:
        output: An instance of the ``output_format`` pydantic model, or the JSON value when
            ``output_format`` was a JSON Schema.
    """

    output: Any
    type: Literal["structured_output_done"] = "structured_output_done"


@dataclass(frozen=True, slots=True)
class TurnResult:
    """The turn ended.

    Attributes:
        result: Its :class:`~chucky.client.results.PromptResult`.
    """

    result: PromptResult
    type: Literal["result"] = "result"


TurnEvent: TypeAlias = (
    TextDelta
    | TextDone
    | ToolCallStarted
    | ToolCallArgumentsDone
    | ToolResultEvent
    | StructuredOutputDone
    | TurnResult
)
"""Any event of a turn; match on the class or on ``type``."""


@dataclass(slots=True)
class _Block:
    kind: Literal["text", "tool_use", "other"]
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


class TurnAccumulator:
    """Builds a turn's typed events and final result from its messages (see the module
    docstring).

    Args:
        output_format: The turn's ``output_format`` (a pydantic model class makes
            :class:`StructuredOutputDone` carry an instance of it).

    Attributes:
        messages: Every message fed, in order.
        text: All the assistant text of the turn so far.
        tool_calls: Every completed tool call (:class:`ToolCallArgumentsDone`), in order.
        result: The :class:`PromptResult`, once the turn's ``result`` was fed.
        error: The typed error that ended the turn instead, if one did.
    """

    def __init__(self, *, output_format: Any = None) -> None:
        self.output_format = output_format
        self.messages: list[SDKMessage] = []
        self.text = ""
        self.tool_calls: list[ToolCallArgumentsDone] = []
        self.result: PromptResult | None = None
        self.error: ChuckyError | None = None
        self._blocks: dict[int, _Block] = {}
        self._streamed = False  # the current response came as stream events

    @property
    def done(self) -> bool:
        """Whether the turn is over (a ``result`` or an ``error`` was fed)."""
        return self.result is not None or self.error is not None

    def feed(self, message: SDKMessage) -> list[TurnEvent]:
        """Take the turn's next message; return the events it completes.

        Raises:
            ChuckyError: the message is an ``error`` (its typed exception).
            StructuredOutputTruncatedError: the turn's structured output was cut by
                ``max_tokens`` (it carries the usage).
            ValidationError: the structured output does not validate as ``output_format``.
        """
        self.messages.append(message)
        if isinstance(message, StreamEventMessage):
            return self._stream_event(message.event)
        if isinstance(message, AssistantMessage):
            if self._streamed:
                self._streamed = False
                self._blocks.clear()
                return []
            return self._whole_response(message)
        if isinstance(message, UserMessage) and isinstance(message.message.content, list):
            return [
                ToolResultEvent(b.tool_use_id, b.content, bool(b.is_error))
                for b in message.message.content
                if isinstance(b, ToolResultBlock)
            ]
        if isinstance(message, ResultMessage):
            return self._result(message)
        if isinstance(message, ErrorMessage):
            self.error = message.exception
            raise self.error
        return []

    def _text(self, delta: str, snapshot: str) -> TextDelta:
        self.text += delta
        return TextDelta(delta, snapshot)

    def _tool_done(self, id: str, name: str, arguments: dict[str, Any]) -> ToolCallArgumentsDone:
        done = ToolCallArgumentsDone(id, _bare(name), arguments)
        self.tool_calls.append(done)
        return done

    def _whole_response(self, message: AssistantMessage) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for block in message.message.content:
            if isinstance(block, TextBlock) and block.text:
                events += [self._text(block.text, block.text), TextDone(block.text)]
            elif isinstance(block, ToolUseBlock):
                events.append(ToolCallStarted(block.id, _bare(block.name)))
                events.append(self._tool_done(block.id, block.name, block.input))
        return events

    def _stream_event(self, event: dict[str, Any]) -> list[TurnEvent]:
        kind = event.get("type")
        index = event.get("index", 0)
        if kind == "message_start":
            self._streamed = True
            self._blocks.clear()
        elif kind == "content_block_start":
            start = event.get("content_block") or {}
            if start.get("type") == "text":
                self._blocks[index] = _Block("text")
            elif start.get("type") == "tool_use":
                call = _Block("tool_use", str(start.get("id", "")), str(start.get("name", "")))
                self._blocks[index] = call
                return [ToolCallStarted(call.id, _bare(call.name))]
            else:
                self._blocks[index] = _Block("other")
        elif kind == "content_block_delta":
            current = self._blocks.get(index)
            delta = event.get("delta") or {}
            if current is None:
                return []
            block = current
            if block.kind == "text" and delta.get("type") == "text_delta":
                block.parts.append(str(delta.get("text", "")))
                return [self._text(block.parts[-1], "".join(block.parts))]
            if block.kind == "tool_use" and delta.get("type") == "input_json_delta":
                block.parts.append(str(delta.get("partial_json", "")))
        elif kind == "content_block_stop":
            ended = self._blocks.get(index)
            if ended is not None and ended.kind == "text":
                return [TextDone("".join(ended.parts))]
            if ended is not None and ended.kind == "tool_use":
                return [self._tool_done(ended.id, ended.name, _arguments("".join(ended.parts)))]
        return []

    def _result(self, message: ResultMessage) -> list[TurnEvent]:
        output_format = self.output_format
        try:
            result = structured_result(message, self.messages, output_format)
        except ChuckyError as exc:
            self.error = exc
            raise
        self.result = result
        events: list[TurnEvent] = []
        if output_format is not None and result.structured_output is not None:
            events.append(StructuredOutputDone(result.structured_output))
        events.append(TurnResult(result))
        return events


def _arguments(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
