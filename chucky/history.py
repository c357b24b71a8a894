"""Message histories: a conversation given as role messages, and the transcript it seeds.

A history is a list of messages in the roles a chat API uses -- ``system``, ``user``,
``assistant``, ``tool`` -- given as :class:`Message` models or as plain dicts of the same
shape. Our client sends a history in the ``messages`` key of ``init`` (docs/protocol.md
section 10); the server turns it into the session's transcript with :func:`seed_transcript`:

* ``system`` messages (anywhere) become the session's system prompt, joined by blank lines;
* ``user`` and ``assistant`` messages are copied (string content, or a list of content blocks);
  an assistant message's ``tool_calls`` become ``tool_use`` blocks after its content;
* a ``tool`` message becomes a ``tool_result`` block (``tool_call_id`` names the call of an
  earlier assistant message) in a user message;
* messages of the same role in a row are merged into one message of blocks, so the transcript
  alternates as the providers require.

Pure functions, no I/O: the client and the server share them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from .errors import ValidationError

__all__ = ["HistoryMessage", "Message", "ToolCallRef", "seed_transcript", "to_wire_history"]

Role = Literal["system", "user", "assistant", "tool"]


class ToolCallRef(BaseModel):
    """A tool call an assistant message made: ``{"id", "name", "input"}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("input", "arguments")
    )


class Message(BaseModel):
    """One message of a history.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: The text, or a list of content blocks (``text``, ``image``, ``tool_use``...).
        tool_calls: On an assistant message, the tool calls it made.
        tool_call_id: On a tool message, the id of the call it answers (required there).
        is_error: On a tool message, whether the tool failed.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    role: Role
    content: str | list[dict[str, Any]] = ""
    tool_calls: list[ToolCallRef] | None = Field(
        default=None, validation_alias=AliasChoices("tool_calls", "toolCalls")
    )
    tool_call_id: str | None = Field(
        default=None, validation_alias=AliasChoices("tool_call_id", "toolCallId")
    )
    is_error: bool | None = Field(
        default=None, validation_alias=AliasChoices("is_error", "isError")
    )


HistoryMessage = Message | Mapping[str, Any]
"""A message of a history: a :class:`Message`, or a dict of the same shape."""


def _invalid(index: int, message: str) -> ValidationError:
    return ValidationError(
        f"Invalid options: messages[{index}]: {message}",
        details={"reason": "invalid_options", "index": index},
    )


def _parse(index: int, item: HistoryMessage | Any) -> Message:
    if isinstance(item, Message):
        return item
    if not isinstance(item, Mapping):
        raise _invalid(index, "a message must be an object with a role and a content")
    try:
        message = Message.model_validate(dict(item))
    except PydanticValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(message)"
        raise _invalid(index, f"{where}: {first['msg']}") from None
    if message.role == "tool" and not message.tool_call_id:
        raise _invalid(index, "a tool message needs the tool_call_id of the call it answers")
    if message.role != "tool" and (message.tool_call_id or message.is_error is not None):
        raise _invalid(index, "tool_call_id and is_error belong to tool messages")
    if message.role != "assistant" and message.tool_calls:
        raise _invalid(index, "tool_calls belong to assistant messages")
    return message


def to_wire_history(messages: Iterable[HistoryMessage]) -> list[dict[str, Any]]:
    """The ``messages`` value of ``init`` for ``messages`` (unset fields left out).

    Raises:
        ValidationError: a message is malformed (``invalid_options``, ``details["index"]``).
    """
    return [
        _parse(index, item).model_dump(mode="json", by_alias=False, exclude_none=True)
        for index, item in enumerate(messages)
    ]


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [dict(block) for block in content]


def seed_transcript(
    messages: Iterable[HistoryMessage | Any],
) -> tuple[str | None, list[tuple[str, Any]]]:
    """The system prompt and the transcript messages (``(role, content)``) of a history.

    Raises:
        ValidationError: ``invalid_options`` naming the message at fault: a malformed message,
            a tool message answering no earlier call (or one already answered), or a message
            with no content.
    """
    system: list[str] = []
    out: list[tuple[str, Any]] = []
    open_calls: set[str] = set()
    for index, item in enumerate(messages):
        message = _parse(index, item)
        content: Any
        if message.role == "system":
            if not isinstance(message.content, str):
                system.extend(
                    str(b.get("text", "")) for b in message.content if b.get("type") == "text"
                )
            else:
                system.append(message.content)
            continue
        if message.role == "tool":
            call_id = message.tool_call_id or ""
            if call_id not in open_calls:
                raise _invalid(
                    index, f"tool_call_id {call_id!r:.100} answers no earlier assistant tool call"
                )
            open_calls.discard(call_id)
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": message.content,
            }
            if message.is_error:
                block["is_error"] = True
            role, content = "user", [block]
        else:
            role = message.role
            content = message.content if not message.tool_calls else _blocks(message.content)
            for call in message.tool_calls or []:
                content.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
                )
            if isinstance(content, list):
                open_calls.update(
                    str(b["id"]) for b in content if b.get("type") == "tool_use" and "id" in b
                )
        if not content:
            raise _invalid(index, f"a {message.role} message needs a content")
        if out and out[-1][0] == role:
            previous = out[-1][1]
            out[-1] = (role, _blocks(previous) + _blocks(content))
        else:
            out.append((role, content))
    prompt = "\n\n".join(part for part in system if part) or None
    return prompt, out
