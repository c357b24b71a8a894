"""What :meth:`Chucky.prompt` returns and what :meth:`Chucky.stream` yields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from ..errors import ChuckyError, StructuredOutputTruncatedError, ValidationError
from ..messages import ResultMessage, SDKMessage, Usage

__all__ = ["PromptResult", "StreamEvent", "structured_result"]

StreamEventType = Literal["message", "tool_use", "result", "error", "done"]


@dataclass(slots=True)
class StreamEvent:
    """One event of :meth:`Chucky.stream`.

    Attributes:
        type: ``message`` (``data`` = assistant text, or one text delta when partial messages
            are on), ``tool_use`` (``name``, ``input``, ``id``), ``result`` (``data`` = the
            result message), ``error`` (``data`` = the error message, ``error`` = the typed
            exception), ``done`` (``data`` = ``{"sessionId": ...}``).
        data: See ``type``.
        message: The whole SDK message the event comes from.
    """

    type: StreamEventType
    data: Any = None
    message: SDKMessage | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    id: str | None = None
    error: ChuckyError | None = None


class PromptResult(Mapping[str, Any]):
    """The outcome of :meth:`Chucky.prompt`: typed attributes, and a read-only mapping over the
    ``result`` message (what the official client returned as a dict).

    With ``output_format=SomeModel`` (a pydantic model class), :attr:`structured_output` is a
    ``SomeModel`` instance; the mapping (``result["structured_output"]``) and
    ``message.structured_output`` keep the JSON value the server sent.

    Attributes:
        message: The ``result`` message itself.
        messages: Every message of the turn, in order, the ``result`` last.
    """

    __slots__ = ("_structured", "message", "messages")

    def __init__(
        self,
        message: ResultMessage,
        messages: Sequence[SDKMessage],
        *,
        structured_output: Any = None,
    ) -> None:
        self.message = message
        self.messages = list(messages)
        self._structured = structured_output

    # Typed access --------------------------------------------------------------------------

    @property
    def result(self) -> str | None:
        """The final text (success only)."""
        return self.message.result

    @property
    def subtype(self) -> str:
        return self.message.subtype

    @property
    def is_error(self) -> bool:
        return self.message.is_error

    @property
    def session_id(self) -> str | None:
        return self.message.session_id

    @property
    def total_cost_usd(self) -> float:
        return self.message.total_cost_usd

    @property
    def usage(self) -> Usage:
        return self.message.usage

    @property
    def duration_ms(self) -> int:
        return self.message.duration_ms

    @property
    def duration_api_ms(self) -> int:
        return self.message.duration_api_ms

    @property
    def num_turns(self) -> int:
        return self.message.num_turns

    @property
    def structured_output(self) -> Any:
        """The validated answer of an ``output_format`` turn: an instance of the pydantic model
        given as ``output_format``, else the JSON value as sent (``None`` without one)."""
        if self._structured is not None:
            return self._structured
        return self.message.structured_output

    @property
    def stop_reason(self) -> str | None:
        return self.message.stop_reason

    @property
    def errors(self) -> list[str] | None:
        return self.message.errors

    # Mapping over the result message --------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.message[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.message)

    def __len__(self) -> int:
        return len(self.message)

    def __repr__(self) -> str:
        return (
            f"PromptResult(subtype={self.subtype!r}, result={self.result!r}, "
            f"session_id={self.session_id!r}, total_cost_usd={self.total_cost_usd!r})"
        )


def structured_result(
    msg: ResultMessage, messages: Sequence[SDKMessage], output_format: Any
) -> PromptResult:
    """The :class:`PromptResult` of a turn, its structured output validated as
    ``output_format`` when that is a pydantic model class.

    Raises:
        StructuredOutputTruncatedError: ``output_format`` was given and the answer was cut by
            the token limit before any structured output (carries the usage).
        ValidationError: the structured output does not validate as ``output_format``;
            ``details["structured_output"]`` holds the raw value, ``details["result"]`` the
            :class:`PromptResult`.
    """
    raw = msg.structured_output
    if output_format is not None and raw is None and msg.stop_reason == "max_tokens":
        raise StructuredOutputTruncatedError(
            "the structured output was cut by the token limit (max_tokens): "
            f"{msg.usage.output_tokens} output tokens",
            usage=msg.usage,
            details={
                "reason": "max_tokens",
                "subtype": msg.subtype,
                "result": PromptResult(msg, messages),
            },
            session_id=msg.session_id,
        )
    if not (
        isinstance(output_format, type)
        and issubclass(output_format, pydantic.BaseModel)
        and not msg.is_error
        and raw is not None
    ):
        return PromptResult(msg, messages)
    try:
        value = output_format.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ValidationError(
            f"structured output does not validate as {output_format.__name__}: "
            f"{where}: {first['msg']}",
            details={
                "reason": "invalid_structured_output",
                "structured_output": raw,
                "result": PromptResult(msg, messages),
            },
            session_id=msg.session_id,
        ) from exc
    return PromptResult(msg, messages, structured_output=value)
