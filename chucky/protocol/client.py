"""The client side of the protocol as a state machine, without I/O.

Theory of operation
-------------------
One :class:`ClientProtocol` lives as long as one logical connection: one WebSocket, or, with
our ``seq`` extension (docs/protocol.md section 10), the successive sockets of a session that
survives the network. The I/O layer feeds it every text frame it receives
(:meth:`ClientProtocol.receive`) and gets back at most one event; it asks it for the text of
every frame it sends (:meth:`start`, :meth:`send_turn`, :meth:`send_tool_result`, ...). The
machine never touches a socket or a clock.

States (docs/protocol.md sections 2 and 10)::

    HANDSHAKE --ready--> OPEN --control close / close()--> CLOSING --connection_lost--> CLOSED
        \\--error frame (auth failed) --> CLOSING
    OPEN --detach()--> DETACHED --resume()--> RESUMING --control resumed--> OPEN
    RESUMING --error replay_unavailable--> REOPENING --session_info--> OPEN
    RESUMING, REOPENING --any other error (ResumeFailed), a lost socket--> DETACHED

:meth:`start` is called as soon as the socket is open and returns the ``init`` frame: our client
sends ``init`` without waiting for ``ready`` (the T dialect) and accepts ``ready`` before or after
it, so connecting costs one round trip. Turns may only be sent once ``ready`` arrived (OPEN).

Turns: every :meth:`send_turn` opens one, with a fresh ``turnId``; a ``result`` or an ``error``
frame closes the oldest (section 4: "a turn ends with exactly one result, or with an error
frame"). An ``error`` frame that arrives with no turn open ends nothing: it is returned as
:class:`ServerError` for the I/O layer to log and to remember as the cause if the socket then
closes.

``seq`` (only with ``seq=True``, announced in ``init``): every frame the server numbers moves
the :class:`~chucky.protocol.resume.SeqCursor`; a frame numbered at or below the highest
``seq`` received is returned as :class:`Ignored` (a replay never repeats a frame), and the
``seq`` never reaches a message object. When the socket is lost unexpectedly the I/O layer
calls :meth:`detach` (the turns stay open) and, on a new socket, sends :meth:`resume` (the
first ``init`` naming ``sessionId`` and ``lastSeq``). The answer is ``control`` ``resumed``
(:class:`Resumed`: the frames after ``lastSeq`` follow), or the non-fatal ``SESSION_ERROR``
``replay_unavailable`` (:class:`ReplayUnavailable`; unlike other error frames it ends no turn):
the server opens the session again from its store under a new numbering, and the session is
OPEN again at its ``session_info``. Then the I/O layer sends :meth:`resend` (every turn not
ended, same ``turnId``: the server runs a turn once per id). After a resume, a message whose
``uuid`` was delivered already is dropped: the server sends a re-sent turn's stored messages
(and its ``result``) again, with their first ``uuid`` (the last 4,096 ``uuid``s of
``system``, ``assistant``, ``user`` and ``result`` messages are remembered). Any other error
during a resume is :class:`ResumeFailed`: the I/O layer decides whether to try again. After
each turn's end the I/O layer sends :meth:`ack` (the server may forget what it buffered for a
replay).

Tool calls: a ``tool_call`` frame is returned as :class:`ToolCall` for the I/O layer to run. A
call stays the client's business until it is answered or abandoned; the server abandons a pending
call when it interrupts the turn, when the call times out server-side and when the turn ends
otherwise (section 6). A server that accepted our ``tool_cancel`` extension (section 10) says so
with ``control`` ``tool_cancel``, returned as :class:`ToolCancelled`; whatever the server, the
end of a turn (its ``result`` or the ``error`` frame that ends it) abandons every call of that
turn still running, and so does the loss of the socket (unless the session is resumed). No
result is sent for an abandoned call.

The session id is tracked from ``system``/``init``, ``session_info`` and ``result`` messages.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Final

import pydantic

from ..errors import (
    ChuckyError,
    ConnectionError,
    InvalidStateError,
    error_from_payload,
)
from ..messages import (
    AssistantMessage,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
    SystemMessage,
    UserMessage,
)
from .frames import _describe, encode
from .resume import (
    DeliveredUuids,
    OpenTurns,
    SeqCursor,
    TurnIdFactory,
    new_turn_id,
    resume_payload,
    with_seq,
)
from .server_frames import (
    ErrorFrame,
    PongFrame,
    ServerControlFrame,
    ServerFrame,
    ToolCallFrame,
    ToolCancelData,
    UnknownFrame,
    decode_server_frame_seq,
)

__all__ = [
    "EXTENSIONS",
    "ClientEvent",
    "ClientProtocol",
    "ClientState",
    "HandshakeFailed",
    "Ignored",
    "Pong",
    "Ready",
    "ReplayUnavailable",
    "ResumeFailed",
    "Resumed",
    "ServerClosing",
    "ServerError",
    "SessionInfo",
    "ToolCall",
    "ToolCancelled",
    "TurnFailed",
]

EXTENSIONS: Final = ("interrupt", "tool_cancel")
"""The protocol extensions (docs/protocol.md section 10) this client always announces; ``seq``
is added when the client may reconnect (``ClientProtocol(seq=True)``)."""


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DETACHED = "detached"  # the socket was lost; the session may be resumed on a new one
    RESUMING = "resuming"  # a resume init was sent: waiting for resumed / replay_unavailable
    REOPENING = "reopening"  # replay_unavailable: waiting for the session to open again
    CLOSING = "closing"
    CLOSED = "closed"


_RESUMABLE: Final = frozenset(
    {ClientState.OPEN, ClientState.DETACHED, ClientState.RESUMING, ClientState.REOPENING}
)
"""States in which the session may still go on over another socket."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The server accepted the token (``control`` ``ready``)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """``control`` ``session_info``: ``sessionId``, ``model``, ``tools``, ...

    ``reopened``: it completes a resume answered with ``replay_unavailable`` (the session was
    opened again from the server's store).
    """

    data: dict[str, Any]
    reopened: bool = False


@dataclass(frozen=True, slots=True)
class Resumed:
    """``control`` ``resumed``: the server resumes the session; the ``replayed`` frames after
    ``last_seq`` follow, then the live ones."""

    session_id: str | None
    last_seq: int
    replayed: int


@dataclass(frozen=True, slots=True)
class ReplayUnavailable:
    """The non-fatal ``SESSION_ERROR`` ``replay_unavailable`` answering a resume: the server
    opens the session again from its store, with a new numbering (no turn ends)."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class ResumeFailed:
    """A resume was refused (an ``error`` frame, or an answer that is no resume at all)."""

    error: ChuckyError


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
    """A frame that could not be used (malformed, unknown type, out of place, repeated)."""

    reason: str


ClientEvent = (
    SDKMessage
    | Ready
    | SessionInfo
    | Resumed
    | ReplayUnavailable
    | ResumeFailed
    | ToolCall
    | ToolCancelled
    | HandshakeFailed
    | TurnFailed
    | ServerError
    | Pong
    | ServerClosing
    | Ignored
)

_TRANSCRIPT_TYPES: Final = (AssistantMessage, UserMessage, ResultMessage, SystemMessage)
"""Messages with a transcript ``uuid``: the ones a server sends again for a re-sent turn."""


class ClientProtocol:
    """Sans-I/O client state machine (see the module docstring).

    Args:
        init_payload: The session options of ``init`` (camelCase).
        session_id: The session to resume, if any.
        seq: Announce our ``seq`` extension and keep what a resume needs (the client may
            reconnect).
        turn_id: Makes each turn's ``turnId`` (default: 32 random hex digits).
    """

    __slots__ = (
        "_dedupe",
        "_delivered",
        "_init_payload",
        "cursor",
        "seq",
        "session_id",
        "state",
        "turn_id",
        "turns",
    )

    def __init__(
        self,
        init_payload: dict[str, Any],
        *,
        session_id: str | None = None,
        seq: bool = False,
        turn_id: TurnIdFactory = new_turn_id,
    ) -> None:
        self._init_payload = init_payload
        self.state = ClientState.HANDSHAKE
        self.session_id = session_id
        self.seq = seq
        self.turn_id = turn_id
        self.cursor = SeqCursor()
        self.turns = OpenTurns()
        self._delivered = DeliveredUuids()
        # After a resume: drop a message whose uuid was delivered already (a turn sent again
        # whose messages the server sends again, section 10).
        self._dedupe = False

    @property
    def open_turns(self) -> int:
        """Turns sent and not ended yet."""
        return len(self.turns)

    @property
    def resumable(self) -> bool:
        """Whether a lost socket may be followed by a resume: the client announced ``seq``, the
        server numbers its frames, the session has an id, and no side ended it."""
        return (
            self.seq and self.cursor.numbered and bool(self.session_id) and self.state in _RESUMABLE
        )

    # -- outgoing ------------------------------------------------------------------------------

    def start(self) -> str:
        """The ``init`` frame, to send as soon as the socket is open."""
        payload = self._init_payload
        if self.seq:
            payload = {**payload, "chuckyExtensions": with_seq(payload.get("chuckyExtensions"))}
        return encode({"type": "init", "payload": payload})

    def send_turn(self, content: str | list[dict[str, Any]]) -> str:
        """The ``user`` frame of a new turn, with a fresh ``turnId``.

        While the session is being resumed the turn is recorded all the same: send the frame
        only when :attr:`state` is OPEN; otherwise :meth:`resend` includes it.

        Raises:
            InvalidStateError: the handshake is not complete or the connection is closing.
        """
        if self.state is not ClientState.OPEN and not (self.seq and self.state in _RESUMABLE):
            raise InvalidStateError(f"cannot start a turn: connection is {self.state.value}")
        turn_id = self.turn_id()
        frame = encode(
            {
                "type": "user",
                "session_id": self.session_id or "",
                "message": {"role": "user", "content": content},
                "parent_tool_use_id": None,
                "turnId": turn_id,
            }
        )
        # Kept only when it may be sent again: a turn may hold megabytes of images.
        self.turns.add(turn_id, frame if self.seq else None)
        return frame

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

    def ack(self) -> str | None:
        """The ``control`` ``ack`` frame to send after a turn ended, if the server numbers its
        frames and there is something new to acknowledge; else ``None``."""
        if self.state is not ClientState.OPEN:
            return None
        seq = self.cursor.take_ack()
        if seq is None:
            return None
        return encode({"type": "control", "payload": {"action": "ack", "data": {"seq": seq}}})

    # -- a new socket for the same session -----------------------------------------------------

    def detach(self) -> None:
        """The socket was lost and the session will be resumed: the turns stay open.

        Raises:
            InvalidStateError: the session cannot be resumed (see :attr:`resumable`).
        """
        if not self.resumable:
            raise InvalidStateError(f"cannot resume: connection is {self.state.value}")
        self.state = ClientState.DETACHED

    def resume(self) -> str:
        """The ``init`` frame that resumes the session on a new socket (send it as soon as the
        socket is open): the first ``init`` without the options that opened the session, with
        ``sessionId`` and ``lastSeq``.

        Raises:
            InvalidStateError: not DETACHED.
        """
        if self.state is not ClientState.DETACHED or not self.session_id:
            raise InvalidStateError(f"cannot resume: connection is {self.state.value}")
        self.state = ClientState.RESUMING
        payload = resume_payload(
            self._init_payload, session_id=self.session_id, last_seq=self.cursor.last_seq
        )
        return encode({"type": "init", "payload": payload})

    def resend(self) -> list[str]:
        """The frames of the turns not ended yet, oldest first: send them again after a resume
        (same ``turnId``: a turn the server has already runs once)."""
        return self.turns.frames()

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, text: str | bytes) -> ClientEvent:
        """Process one received frame and return what it means."""
        frame, seq = decode_server_frame_seq(text)
        if self.state is ClientState.RESUMING:
            return self._resuming(frame)
        if self.state is ClientState.REOPENING:
            if isinstance(frame, ErrorFrame):
                self.state = ClientState.DETACHED
                return ResumeFailed(error_from_payload(frame.payload, session_id=self.session_id))
            if isinstance(frame, PongFrame | UnknownFrame):
                return self._event(frame)
            self.state = ClientState.OPEN  # the session is open again, under a new numbering
            if not self.cursor.accept(seq):  # pragma: no cover - the first frame of a numbering
                return Ignored(f"seq {seq} already received")
            if isinstance(frame, ServerControlFrame) and frame.payload.action == "session_info":
                return self._session_info(frame, reopened=True)
            return self._event(frame)
        if seq is not None and self.seq and not self.cursor.accept(seq):
            return Ignored(f"seq {seq} already received")
        return self._event(frame)

    def _event(self, frame: ServerFrame) -> ClientEvent:
        if isinstance(frame, StreamEventMessage):
            return frame  # the bulk of a turn: nothing to track
        if isinstance(frame, _TRANSCRIPT_TYPES):
            if self.seq and self.cursor.numbered and frame.uuid:
                if self._dedupe and frame.uuid in self._delivered:
                    return Ignored(f"message {frame.uuid} already delivered")
                self._delivered.add(frame.uuid)
            if isinstance(frame, ResultMessage):
                self._end_turn()
                if frame.session_id:
                    self.session_id = frame.session_id
            elif isinstance(frame, SystemMessage) and frame.subtype == "init" and frame.session_id:
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

    def _end_turn(self) -> None:
        self.turns.end_oldest()

    def _resuming(self, frame: ServerFrame) -> ClientEvent:
        # Section 10: ready, then resumed (no seq) or the replay_unavailable error.
        if isinstance(frame, ServerControlFrame):
            action = frame.payload.action
            if action == "ready":
                return Ready()
            if action == "resumed":
                data = frame.payload.data or {}
                self.state = ClientState.OPEN
                self._dedupe = True
                replayed = data.get("replayed")
                session_id = data.get("sessionId")
                return Resumed(
                    session_id if isinstance(session_id, str) else self.session_id,
                    self.cursor.last_seq,
                    replayed if isinstance(replayed, int) and not isinstance(replayed, bool) else 0,
                )
        if isinstance(frame, ErrorFrame):
            error = error_from_payload(frame.payload, session_id=self.session_id)
            if error.reason == "replay_unavailable":
                self.state = ClientState.REOPENING
                self.cursor.restart()
                self._dedupe = True
                return ReplayUnavailable(error)
            self.state = ClientState.DETACHED
            return ResumeFailed(error)
        if isinstance(frame, PongFrame | UnknownFrame):
            return self._event(frame)
        # A server that opened the session without resuming it does not speak seq (an older
        # node): its frames cannot be matched with ours, and a re-sent turn would run twice.
        self.state = ClientState.DETACHED
        kind = getattr(frame, "type", type(frame).__name__)
        return ResumeFailed(
            ConnectionError(
                f"the server did not resume the session (it answered with {kind!r}): "
                "it does not support the seq extension",
                details={"reason": "resume_unsupported"},
                session_id=self.session_id,
            )
        )

    def _control(self, frame: ServerControlFrame) -> ClientEvent:
        action = frame.payload.action
        if action == "ready":
            if self.state is ClientState.HANDSHAKE:
                self.state = ClientState.OPEN
                return Ready()
            return Ignored("repeated ready")
        if action == "session_info":
            return self._session_info(frame)
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

    def _session_info(self, frame: ServerControlFrame, *, reopened: bool = False) -> SessionInfo:
        data = frame.payload.data or {}
        session_id = data.get("sessionId")
        if isinstance(session_id, str) and session_id:
            self.session_id = session_id
        if self.seq and isinstance(data.get("resume"), dict):
            self.cursor.numbered = True  # section 10: the server keeps what a resume needs
        return SessionInfo(data, reopened=reopened)

    def _error(self, frame: ErrorFrame) -> ClientEvent:
        error = error_from_payload(frame.payload, session_id=self.session_id)
        if self.state is ClientState.HANDSHAKE:
            self.state = ClientState.CLOSING
            return HandshakeFailed(error)
        if self.turns:
            self._end_turn()
            return TurnFailed(error, frame.payload)
        return ServerError(error)

    def connection_lost(self) -> int:
        """The socket is gone for good; returns how many turns were left open (they cannot end
        now)."""
        self.state = ClientState.CLOSED
        self._delivered.clear()
        return self.turns.clear()


def _timestamp(value: Any) -> int | None:
    # json.loads yields NaN/Infinity for non-standard input, and bool is an int subclass.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None
