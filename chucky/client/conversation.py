"""Conversations: :meth:`Chucky.converse`, :meth:`Chucky.chat` and :meth:`Chucky.stream_text`.

The three take the same input: a string (one user message), or a **message history** -- a list
of :class:`~chucky.history.Message` models or role dicts (``system``, ``user``, ``assistant``,
``tool``) whose last message is the user's turn. The messages before it seed the session's
transcript through the ``messages`` key of ``init`` (docs/protocol.md section 10).

:meth:`~Chucky.converse` yields typed chunks (:data:`ConverseChunk`, discriminated on
``type``): ``text`` (a fragment of the reply as it streams), ``tool_call`` (each tool call the
model made; ``on_tool_call`` observes it too), then ``done`` (the whole turn: its final text and
``result`` message), or ``error`` instead when the turn failed.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ChuckyError, ValidationError
from ..history import HistoryMessage, to_wire_history
from ..messages import (
    ResultMessage,
)
from .settings import SessionArgs

if TYPE_CHECKING:
    from .chucky import Chucky

__all__ = [
    "ConverseChunk",
    "ConverseInput",
    "DoneChunk",
    "ErrorChunk",
    "OnToolCall",
    "TextChunk",
    "ToolCallChunk",
    "converse",
]


class _Chunk(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


class TextChunk(_Chunk):
    """A fragment of the reply's text, as the model streams it."""

    type: Literal["text"] = "text"
    text: str


class ToolCallChunk(_Chunk):
    """A tool call the model made (the client's handler answers it as usual).

    Attributes:
        id: The call's id (the ``tool_use`` id).
        name: The tool's bare name (as declared, without ``mcp__<server>__``).
        input: The arguments.
    """

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ErrorChunk(_Chunk):
    """The turn failed: an ``error`` frame, or a ``result`` that is an error (``max_turns``,
    an interrupt, the budget...). It is the last chunk of the turn.

    Attributes:
        message: What went wrong.
        error: The typed exception :meth:`Chucky.chat` and :meth:`Chucky.stream_text` raise.
        result: The ``result`` message, when the turn ended with one.
    """

    type: Literal["error"] = "error"
    message: str
    error: ChuckyError
    result: ResultMessage | None = None


class DoneChunk(_Chunk):
    """The turn ended well; the last chunk.

    Attributes:
        session_id: The session's id (continue it with ``session_id=``).
        text: The final reply (the ``result`` text).
        result: The ``result`` message (usage, cost, durations).
    """

    type: Literal["done"] = "done"
    session_id: str | None
    text: str
    result: ResultMessage


ConverseChunk = Annotated[
    TextChunk | ToolCallChunk | ErrorChunk | DoneChunk, Field(discriminator="type")
]
"""A chunk of :meth:`Chucky.converse`."""

ConverseInput = str | Sequence[HistoryMessage]
"""A user message, or a message history ending with the user's message."""

OnToolCall = Callable[[ToolCallChunk], Awaitable[None] | None]
"""A callback observing each tool call (sync or async); what it returns is ignored."""


def split_input(value: ConverseInput) -> tuple[Any, list[dict[str, Any]]]:
    """The turn's content and the history before it.

    Raises:
        ValidationError: an empty history, one that does not end with a user message, or a
            malformed message.
    """
    if isinstance(value, str):
        return value, []
    history = to_wire_history(value)
    if not history or history[-1]["role"] != "user":
        raise ValidationError(
            "a message history must end with the user's message (role 'user')",
            details={"reason": "invalid_options"},
        )
    return history[-1]["content"], history[:-1]


def _result_error(msg: ResultMessage) -> ChuckyError:
    errors = [str(e) for e in msg.errors or []]
    text = f"the turn ended with {msg.subtype}" + (f": {'; '.join(errors)}" if errors else "")
    return ChuckyError(
        text,
        code=None,
        details={"reason": msg.subtype, "errors": errors},
        session_id=msg.session_id,
    )


async def converse(
    client: Chucky,
    value: ConverseInput,
    *,
    on_tool_call: OnToolCall | None,
    turn_timeout: float | None,
    options: SessionArgs,
) -> AsyncGenerator[ConverseChunk, None]:
    """The body of :meth:`Chucky.converse` (see there)."""
    content, history = split_input(value)
    options = SessionArgs(**options)  # a copy: the caller's dict stays as it was
    if history:
        options["history"] = history
    options.setdefault("include_partial_messages", True)
    # The events of Chucky.stream (one place reads a turn's frames), as typed chunks.
    events = client.stream(content, turn_timeout=turn_timeout, **options)
    async with contextlib.aclosing(events):
        async for event in events:
            if event.type == "message":
                yield TextChunk(text=event.data)
            elif event.type == "tool_use":
                assert event.id is not None and event.name is not None
                call = ToolCallChunk(id=event.id, name=event.name, input=event.input or {})
                if on_tool_call is not None:
                    outcome = on_tool_call(call)
                    if inspect.isawaitable(outcome):
                        await outcome
                yield call
            elif event.type == "result":
                msg = event.data
                if msg.is_error:
                    error = _result_error(msg)
                    yield ErrorChunk(message=error.message, error=error, result=msg)
                else:
                    yield DoneChunk(session_id=msg.session_id, text=msg.result or "", result=msg)
                return
            elif event.type == "error":
                exc = event.error
                assert exc is not None
                yield ErrorChunk(message=exc.message, error=exc)
                return
