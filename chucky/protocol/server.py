"""The server side of the protocol as a state machine, without I/O.

Theory of operation
-------------------
One :class:`ServerProtocol` lives as long as one authenticated WebSocket. The I/O layer sends
:meth:`ServerProtocol.ready` first (PROTOCOL.md section 2: ``ready`` goes out before anything
else and before ``init`` arrives, or the official Python client deadlocks), then feeds every
received frame to :meth:`receive` and acts on the events it returns. It asks the machine for the
text of the frames it sends, so that tool calls are tracked here.

States::

    AWAITING_INIT --init--> OPEN --control end_input--> ENDING --> (turns drain) --> CLOSED
          |                   \\--control close--> CLOSED
          \\--turn (no init)--> OPEN   (implicit init with default options, for legacy clients)

Rules implemented here, by PROTOCOL.md section:

* 2.2 exactly one ``init``: a second one is rejected with ``VALIDATION_ERROR``.
* 2.3 turns are never dropped: a turn that arrives right after ``init`` is returned like any
  other, the I/O layer queues it.
* 3 the three turn forms (``user``, ``prompt`` nested and flat, ``sdk_message``) all become
  :class:`TurnReceived`; unknown types, invalid JSON and non-objects are rejected with
  ``VALIDATION_ERROR`` and the connection goes on; more than ``max_invalid_frames`` rejected
  frames is fatal (error frame, then close 1008).
* 6 every ``tool_call`` sent is pending until its ``tool_result`` arrives (any order) or the call
  is abandoned (timeout, interrupt); a ``tool_result`` for no pending call is rejected.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ChuckyError, ValidationError
from ..messages import WireModel
from ..options import SessionOptions
from .frames import (
    ClientControlFrame,
    FrameError,
    InitFrame,
    PingFrame,
    PromptFrame,
    SdkMessageFrame,
    ToolResultFrame,
    ToolResultPayload,
    UserFrame,
    clip,
    decode_client_frame,
    encode,
    turn_content,
)

__all__ = [
    "DEFAULT_MAX_INVALID_FRAMES",
    "ControlReceived",
    "FrameRejected",
    "InitReceived",
    "PingReceived",
    "ServerEvent",
    "ServerProtocol",
    "ServerState",
    "ToolResultReceived",
    "TurnReceived",
]

DEFAULT_MAX_INVALID_FRAMES: Final = 10


class ServerState(enum.Enum):
    AWAITING_INIT = "awaiting_init"
    OPEN = "open"
    ENDING = "ending"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class InitReceived:
    """The session options (``implicit`` when a turn came first and defaults apply)."""

    options: SessionOptions
    implicit: bool = False


@dataclass(frozen=True, slots=True)
class TurnReceived:
    """A user turn: its content and the per-turn options of P's ``prompt`` form."""

    content: str | list[dict[str, Any]]
    options: SessionOptions | None
    form: str


@dataclass(frozen=True, slots=True)
class ToolResultReceived:
    call_id: str
    result: ToolResultPayload


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """``close``, ``end_input`` or ``interrupt``."""

    action: str


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A JSON ping; :attr:`pong` is the frame to answer with."""

    pong: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was refused: send :attr:`error`; if :attr:`fatal`, then close with 1008."""

    error: ChuckyError
    fatal: bool


ServerEvent = (
    InitReceived
    | TurnReceived
    | ToolResultReceived
    | ControlReceived
    | PingReceived
    | FrameRejected
)


class ServerProtocol:
    """Sans-I/O server state machine for one connection (see the module docstring)."""

    def __init__(self, *, max_invalid_frames: int = DEFAULT_MAX_INVALID_FRAMES) -> None:
        self.state = ServerState.AWAITING_INIT
        self.max_invalid_frames = max_invalid_frames
        self.invalid_frames = 0
        self._pending_calls: dict[str, str] = {}

    # -- outgoing ------------------------------------------------------------------------------

    @staticmethod
    def ready() -> str:
        return encode({"type": "control", "payload": {"action": "ready"}})

    @staticmethod
    def session_info(data: Mapping[str, Any]) -> str:
        return encode(
            {"type": "control", "payload": {"action": "session_info", "data": dict(data)}}
        )

    def close(self) -> str:
        """``control`` ``close`` (only after the turn's ``result``); the session is over."""
        self.state = ServerState.CLOSED
        return encode({"type": "control", "payload": {"action": "close"}})

    @staticmethod
    def message(message: WireModel) -> str:
        """A bare SDK message (PROTOCOL.md section 4: never wrapped)."""
        return encode(message.to_wire())

    @staticmethod
    def error(error: ChuckyError) -> str:
        return encode({"type": "error", "payload": error.to_payload()})

    def tool_call(self, call_id: str, tool_name: str, tool_input: Mapping[str, Any]) -> str:
        """The ``tool_call`` frame; the call is pending until its result or :meth:`abandon`."""
        self._pending_calls[call_id] = tool_name
        return encode(
            {
                "type": "tool_call",
                # dict(): json cannot encode other Mapping types.
                "payload": {"callId": call_id, "toolName": tool_name, "input": dict(tool_input)},
            }
        )

    def abandon(self, call_id: str) -> None:
        """Stop waiting for ``call_id`` (timeout, interrupt); a late result is rejected."""
        self._pending_calls.pop(call_id, None)

    @property
    def pending_calls(self) -> int:
        return len(self._pending_calls)

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[ServerEvent]:
        """Process one received frame."""
        if self.state is ServerState.CLOSED:
            return []
        try:
            frame = decode_client_frame(text)
            return self._handle(frame)
        except ChuckyError as exc:
            return [self._reject(exc)]

    def _reject(self, error: ChuckyError) -> FrameRejected:
        self.invalid_frames += 1
        fatal = self.invalid_frames > self.max_invalid_frames
        if fatal:
            self.state = ServerState.CLOSED
            error = ValidationError(
                f"{error.message} (too many invalid frames: closing the connection)",
                details=error.details,
            )
        return FrameRejected(error, fatal)

    def _handle(self, frame: Any) -> list[ServerEvent]:
        if isinstance(frame, UserFrame | PromptFrame | SdkMessageFrame):
            return self._turn(frame)
        if isinstance(frame, ToolResultFrame):
            call_id = frame.payload.call_id
            if self._pending_calls.pop(call_id, None) is None:
                raise FrameError(
                    f"Invalid tool_result: no pending tool call with callId {clip(call_id)}",
                    details={"reason": "invalid_frame", "type": "tool_result"},
                )
            return [ToolResultReceived(call_id, frame.payload.result)]
        if isinstance(frame, PingFrame):
            stamp = frame.payload.timestamp
            pong = encode({"type": "pong", "payload": {"timestamp": int(stamp or 0)}})
            return [PingReceived(pong)]
        if isinstance(frame, ClientControlFrame):
            action = frame.payload.action
            if action == "close":
                self.state = ServerState.CLOSED
            elif action == "end_input" and self.state is not ServerState.CLOSED:
                self.state = ServerState.ENDING
            return [ControlReceived(action)]
        if isinstance(frame, InitFrame):
            if self.state is not ServerState.AWAITING_INIT:
                raise FrameError(
                    "Invalid frame: init was already received on this connection",
                    details={"reason": "invalid_frame", "type": "init"},
                )
            self.state = ServerState.OPEN
            return [InitReceived(frame.payload)]
        raise FrameError(  # pragma: no cover - decode_client_frame admits nothing else
            "Invalid frame", details={"reason": "invalid_frame"}
        )

    def _turn(self, frame: UserFrame | PromptFrame | SdkMessageFrame) -> list[ServerEvent]:
        if self.state is ServerState.ENDING:
            raise FrameError(
                "Invalid turn: the client sent end_input, no more turns are accepted",
                details={"reason": "invalid_frame", "type": frame.type},
            )
        content, options = turn_content(frame)
        events: list[ServerEvent] = []
        if self.state is ServerState.AWAITING_INIT:
            self.state = ServerState.OPEN
            events.append(InitReceived(options or SessionOptions(), implicit=True))
        events.append(TurnReceived(content, options, frame.type))
        return events
