"""The client side of the protocol as a state machine, without I/O.

Theory of operation
-------------------
One :class:`ClientProtocol` lives as long as one WebSocket. The I/O layer feeds it every text
frame it receives (:meth:`ClientProtocol.receive`) and gets back at most one event; it asks it for
the text of every frame it sends (:meth:`start`, :meth:`send_turn`, :meth:`send_tool_result`, ...).
The machine never touches a socket or a clock.

States (docs/protocol.md section 2)::

    HANDSHAKE --ready--> OPEN --control close / close()--> CLOSING --connection_lost--> CLOSED
        \\--error frame (auth failed) --> CLOSING

:meth:`start` is called as soon as the socket is open and returns the ``init`` frame: our client
sends ``init`` without waiting for ``ready`` (the T dialect) and accepts ``ready`` before or after
it, so connecting costs one round trip. Turns may only be sent once ``ready`` arrived (OPEN).

Turns: every :meth:`send_turn` opens one; a ``result`` or an ``error`` frame closes the oldest
(section 4: "a turn ends with exactly one result, or with an error frame"). An ``error`` frame
that arrives with no turn open ends nothing: it is returned as :class:`ServerError` for the I/O
layer to log and to remember as the cause if the socket then closes.

Tool calls: a ``tool_call`` frame is returned as :class:`ToolCall` for the I/O layer to run. A
call stays the client's business until it is answered or abandoned; the server abandons a pending
call when it interrupts the turn, when the call times out server-side and when the turn ends
otherwise (section 6). A server that accepted our ``tool_cancel`` extension (section 10) says so
with ``control`` ``tool_cancel``, returned as :class:`ToolCancelled`; whatever the server, the
end of a turn (its ``result`` or the ``error`` frame that ends it) abandons every call of that
turn still running, and so does the loss of the socket. No result is sent for an abandoned call.

The session id is tracked from ``system``/``init``, ``session_info`` and ``result`` messages.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Final

import pydantic

from ..errors import ChuckyError, InvalidStateError, error_from_payload
from ..messages import (
    AssistantMessage,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
    SystemMessage,
    UserMessage,
)
from .frames import (
    ErrorFrame,
    PongFrame,
    ServerControlFrame,
    ToolCallFrame,
    ToolCancelData,
    UnknownFrame,
    _describe,
    decode_server_frame,
    encode,
)

__all__ = [
    "ClientEvent",
    "ClientProtocol",
    "ClientState",
    "HandshakeFailed",
    "Ignored",
    "Pong",
    "Ready",
    "ServerClosing",
    "ServerError",
    "SessionInfo",
    "ToolCall",
    "ToolCancelled",
    "TurnFailed",
]

EXTENSIONS: Final = ("interrupt", "tool_cancel")
"""The protocol extensions (docs/protocol.md section 10) this client announces."""


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Ready:
    """The server accepted the token (``control`` ``ready``)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """``control`` ``session_info``: ``sessionId``, ``model``, ``tools``, ..."""

    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The server asks the client to run a tool (``tool_call``)."""

    call_id: str
    tool_name: str
    input: Any


@dataclass(frozen=True, slots=True)
class ToolCancelled:
    """The server abandoned the pending tool call ``call_id`` (``control`` ``tool_cancel``, our
    extension, docs/protocol.md section 10): it no longer waits for its result.

    ``reason`` is ``"interrupted"`` (the turn was interrupted), ``"timeout"`` (the server's
    per-call timeout expired) or ``"turn_ended"`` (the turn ended otherwise); a newer server may
    send other reasons, kept as they are.
    """

    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """An ``error`` frame before ``ready``: the server refused the connection."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """An ``error`` frame that ended the oldest open turn (``payload`` as the server sent it)."""

    error: ChuckyError
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame while no turn was open (e.g. about a frame we sent)."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class ServerClosing:
    """``control`` ``close``: the server is ending the session."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that could not be used (malformed, unknown type, out of place)."""

    reason: str


ClientEvent = (
    SDKMessage
    | Ready
    | SessionInfo
    | ToolCall
    | ToolCancelled
    | HandshakeFailed
    | TurnFailed
    | ServerError
    | Pong
    | ServerClosing
    | Ignored
)


class ClientProtocol:
    """Sans-I/O client state machine for one WebSocket (see the module docstring)."""

    __slots__ = ("_init_payload", "open_turns", "session_id", "state")

    def __init__(self, init_payload: dict[str, Any], *, session_id: str | None = None) -> None:
        self._init_payload = init_payload
        self.state = ClientState.HANDSHAKE
        self.session_id = session_id
        self.open_turns = 0

    # -- outgoing ------------------------------------------------------------------------------

    def start(self) -> str:
        """The ``init`` frame, to send as soon as the socket is open."""
        return encode({"type": "init", "payload": self._init_payload})

    def send_turn(self, content: str | list[dict[str, Any]]) -> str:
        """The ``user`` frame of a new turn.

        Raises:
            InvalidStateError: the handshake is not complete or the connection is closing.
        """
        if self.state is not ClientState.OPEN:
            raise InvalidStateError(f"cannot start a turn: connection is {self.state.value}")
        self.open_turns += 1
        return encode(
            {
                "type": "user",
                "session_id": self.session_id or "",
                "message": {"role": "user", "content": content},
                "parent_tool_use_id": None,
            }
        )

    def send_tool_result(self, call_id: str, result: dict[str, Any]) -> str:
        """The ``tool_result`` frame answering ``call_id`` (``result`` in MCP wire shape)."""
        return encode({"type": "tool_result", "payload": {"callId": call_id, "result": result}})

    def send_ping(self, timestamp_ms: int) -> str:
        return encode({"type": "ping", "payload": {"timestamp": timestamp_ms}})

    def send_control(self, action: str) -> str:
        """``control`` ``close`` / ``end_input`` / ``interrupt``; ``close`` starts CLOSING."""
        if action == "close" and self.state is not ClientState.CLOSED:
            self.state = ClientState.CLOSING
        return encode({"type": "control", "payload": {"action": action}})

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, text: str | bytes) -> ClientEvent:
        """Process one received frame and return what it means."""
        frame = decode_server_frame(text)
        if isinstance(frame, StreamEventMessage | AssistantMessage | UserMessage):
            return frame  # the bulk of a turn: nothing to track
        if isinstance(frame, ResultMessage):
            if self.open_turns:
                self.open_turns -= 1
            if frame.session_id:
                self.session_id = frame.session_id
            return frame
        if isinstance(frame, SystemMessage):
            if frame.subtype == "init" and frame.session_id:
                self.session_id = frame.session_id
            return frame
        if isinstance(frame, ToolCallFrame):
            body = frame.payload
            return ToolCall(body.call_id, body.tool_name, body.input)
        if isinstance(frame, ServerControlFrame):
            return self._control(frame)
        if isinstance(frame, ErrorFrame):
            return self._error(frame)
        if isinstance(frame, PongFrame):
            return Pong(_timestamp(frame.payload.get("timestamp")))
        if isinstance(frame, UnknownFrame):
            return Ignored(f"{frame.reason} (type {frame.type!r})")
        return frame

    def _control(self, frame: ServerControlFrame) -> ClientEvent:
        action = frame.payload.action
        if action == "ready":
            if self.state is ClientState.HANDSHAKE:
                self.state = ClientState.OPEN
                return Ready()
            return Ignored("repeated ready")
        if action == "session_info":
            data = frame.payload.data or {}
            session_id = data.get("sessionId")
            if isinstance(session_id, str) and session_id:
                self.session_id = session_id
            return SessionInfo(data)
        if action == "close":
            if self.state is not ClientState.CLOSED:
                self.state = ClientState.CLOSING
            return ServerClosing()
        if action == "tool_cancel":
            try:
                cancel = ToolCancelData.model_validate(frame.payload.data)
            except pydantic.ValidationError as exc:
                return Ignored(f"malformed tool_cancel: {_describe(exc)}")
            return ToolCancelled(cancel.call_id, cancel.reason)
        return Ignored(f"unknown control action {action!r}")

    def _error(self, frame: ErrorFrame) -> ClientEvent:
        error = error_from_payload(frame.payload, session_id=self.session_id)
        if self.state is ClientState.HANDSHAKE:
            self.state = ClientState.CLOSING
            return HandshakeFailed(error)
        if self.open_turns:
            self.open_turns -= 1
            return TurnFailed(error, frame.payload)
        return ServerError(error)

    def connection_lost(self) -> int:
        """The socket is gone; returns how many turns were left open (they cannot end now)."""
        self.state = ClientState.CLOSED
        open_turns, self.open_turns = self.open_turns, 0
        return open_turns


def _timestamp(value: Any) -> int | None:
    # json.loads yields NaN/Infinity for non-standard input, and bool is an int subclass.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None
