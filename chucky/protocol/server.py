"""The server side of the protocol as a state machine, without I/O.

Theory of operation
-------------------
One :class:`ServerProtocol` lives as long as one authenticated WebSocket. The I/O layer sends
:meth:`ServerProtocol.ready` first (docs/protocol.md section 2: ``ready`` goes out before anything
else and before ``init`` arrives, or the official Python client deadlocks), then feeds every
received frame to :meth:`receive` and acts on the events it returns. Every frame the server sends
is built here: the control frames, ``error``, ``pong``, ``tool_call``, ``tool_cancel``, and the
SDK messages (from the :mod:`chucky.messages` models, :meth:`message`).

States of the connection::

    AWAITING_INIT --init--> OPEN --control end_input--> ENDING --> (turns drain) --> CLOSED
          |                   \\--control close--> CLOSED
          \\--turn (no init)--> OPEN   (implicit init with default options, for legacy clients)

Each turn has a state machine of its own, :class:`~chucky.protocol.turns.Turn`; this machine
keeps the connection's turns in arrival order (:attr:`turns`) and decides which one an event
concerns: an ``interrupt`` stops the oldest turn not yet answered (the running one, or, when none
runs, the next to run: an interrupt sent right after a turn always reaches it); a lost socket
concerns them all; a shutdown refuses those not started.

Rules implemented here, by docs/protocol.md section:

* 2.2 exactly one ``init``: a second one is rejected with ``VALIDATION_ERROR``.
* 2.3 turns are never dropped: a turn that arrives right after ``init`` is queued like any
  other. 4: turns wait in a bounded queue (``max_queued_turns`` turns and ``max_queued_bytes``
  of frames, the turn being served not counted; a turn arriving at an empty queue is always
  accepted). Beyond it the turn is refused with ``RATE_LIMIT`` / ``queue_full`` before anything
  is kept of it, and the connection goes on.
* 3 the three turn forms (``user``, ``prompt`` nested and flat, ``sdk_message``) all become
  :class:`TurnReceived`; unknown types, invalid JSON and non-objects are rejected with
  ``VALIDATION_ERROR`` and the connection goes on; more than ``max_invalid_frames`` rejected
  frames is fatal (error frame, then close 1008).
* 6 every ``tool_call`` sent is pending until its ``tool_result`` arrives (any order) or the call
  is abandoned (timeout, interrupt, the turn ended). A result for an abandoned call is dropped
  quietly (the client may have sent it before it heard of the abandonment); a ``tool_result``
  for a call never made is rejected.
* 10 extensions: what the client announces in ``chuckyExtensions`` (``tool_cancel``: the server
  tells it when a call is abandoned, :meth:`tool_cancel`; ``seq``: every frame sent after
  ``init`` is numbered by :meth:`stamp`, the client's ``ack`` is :class:`AckReceived`). A turn
  frame's ``turnId`` is remembered (bounded): a turn re-sent with the id of a turn this machine
  has queued, run or answered is :class:`TurnDuplicate`, never run twice. A second
  ``tool_result`` for a call already answered is dropped quietly, like a late one.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ChuckyError, RateLimitError, SessionError, ValidationError
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
from .turns import (
    ClientGone,
    Drain,
    DrainExpired,
    Interrupt,
    ToolCallOut,
    ToolResultIn,
    Turn,
    TurnAction,
    TurnState,
    shutdown_refusal,
)

__all__ = [
    "DEFAULT_MAX_INVALID_FRAMES",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_MAX_QUEUED_TURNS",
    "AckReceived",
    "ControlReceived",
    "FrameRejected",
    "InitReceived",
    "InterruptReceived",
    "PingReceived",
    "ServerEvent",
    "ServerProtocol",
    "ServerState",
    "ToolResultReceived",
    "TurnDuplicate",
    "TurnReceived",
    "TurnRejected",
]

DEFAULT_MAX_INVALID_FRAMES: Final = 10
DEFAULT_MAX_QUEUED_TURNS: Final = 16
"""Turns that may wait behind the running one on a connection."""
DEFAULT_MAX_QUEUED_BYTES: Final = 8 * 1024 * 1024
"""Bytes of turn frames that may wait behind the running one (one turn always may)."""

_ABANDONED_KEPT: Final = 1024  # abandoned/answered call ids remembered, to drop late results
_TURN_IDS_KEPT: Final = 1024  # turn ids remembered, so that a re-sent turn runs once


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
    """A user turn, queued (its :class:`~chucky.protocol.turns.Turn` is in QUEUED)."""

    turn: Turn
    form: str

    @property
    def content(self) -> str | list[dict[str, Any]]:
        content: str | list[dict[str, Any]] = self.turn.content
        return content

    @property
    def options(self) -> SessionOptions | None:
        options: SessionOptions | None = self.turn.options
        return options


@dataclass(frozen=True, slots=True)
class TurnDuplicate:
    """A turn frame whose ``turnId`` names a turn this connection already has (queued, running
    or answered): dropped, not run twice (docs/protocol.md section 10)."""

    turn_id: str


@dataclass(frozen=True, slots=True)
class AckReceived:
    """``control`` ``ack`` (the ``seq`` extension): the client has every frame up to ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class TurnRejected:
    """A turn the queue cannot take: send :attr:`error` (the connection goes on)."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class ToolResultReceived:
    call_id: str
    result: ToolResultPayload


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """``close`` or ``end_input`` (an ``interrupt`` is :class:`InterruptReceived`)."""

    action: str


@dataclass(frozen=True, slots=True)
class InterruptReceived:
    """``control`` ``interrupt``: the turn it stopped (``None``: no turn to stop) and the
    actions that turn asks for."""

    turn: Turn | None
    actions: tuple[TurnAction, ...]


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
    | TurnDuplicate
    | AckReceived
    | TurnRejected
    | ToolResultReceived
    | ControlReceived
    | InterruptReceived
    | PingReceived
    | FrameRejected
)


class ServerProtocol:
    """Sans-I/O server state machine for one connection (see the module docstring)."""

    def __init__(
        self,
        *,
        max_invalid_frames: int = DEFAULT_MAX_INVALID_FRAMES,
        max_queued_turns: int = DEFAULT_MAX_QUEUED_TURNS,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        reject_when_busy: bool = False,
        allow_seq: bool = True,
    ) -> None:
        self.state = ServerState.AWAITING_INIT
        self.allow_seq = allow_seq
        self.seq = 0
        """The ``seq`` of the last frame numbered (:meth:`stamp`)."""
        self.max_invalid_frames = max_invalid_frames
        self.max_queued_turns = max_queued_turns
        self.max_queued_bytes = max_queued_bytes
        self.reject_when_busy = reject_when_busy
        self.draining = False
        self.invalid_frames = 0
        self.extensions: frozenset[str] = frozenset()
        self.turns: deque[Turn] = deque()
        """Turns not answered yet, oldest first (the one being served is the first)."""
        self._pending_calls: dict[str, Turn] = {}
        self._abandoned: dict[str, None] = {}  # insertion-ordered, bounded
        self._turn_ids: dict[str, None] = {}  # insertion-ordered, bounded

    # -- outgoing ------------------------------------------------------------------------------

    @property
    def sequenced(self) -> bool:
        """Whether frames are numbered: the client announced ``seq`` and the server allows it."""
        return self.allow_seq and "seq" in self.extensions

    def stamp(self, text: str) -> tuple[int, str]:
        """``text`` (a frame built here) with the next ``"seq"`` as its first key."""
        self.seq = seq = self.seq + 1
        return seq, f'{{"seq":{seq},{text[1:]}'

    @staticmethod
    def resumed(session_id: str, last_seq: int, replayed: int) -> str:
        """``control`` ``resumed``: a new socket took the session over; ``replayed`` frames
        after ``last_seq`` follow (sent without a ``seq`` of its own)."""
        data = {"sessionId": session_id, "lastSeq": last_seq, "replayed": replayed}
        return encode({"type": "control", "payload": {"action": "resumed", "data": data}})

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
        """A bare SDK message (docs/protocol.md section 4: never wrapped)."""
        return encode(message.to_wire())

    @staticmethod
    def error(error: ChuckyError) -> str:
        return encode({"type": "error", "payload": error.to_payload()})

    def tool_call(
        self, turn: Turn, call_id: str, tool_name: str, tool_input: Mapping[str, Any]
    ) -> str:
        """The ``tool_call`` frame of ``turn``; the call is pending until its result or
        :meth:`abandon`."""
        turn.process(ToolCallOut(call_id))
        self._pending_calls[call_id] = turn
        return encode(
            {
                "type": "tool_call",
                # dict(): json cannot encode other Mapping types.
                "payload": {"callId": call_id, "toolName": tool_name, "input": dict(tool_input)},
            }
        )

    def tool_cancel(self, call_id: str, reason: str) -> str | None:
        """The ``tool_cancel`` control frame (section 10), or ``None`` if the client did not
        announce the extension."""
        if "tool_cancel" not in self.extensions:
            return None
        return encode(
            {
                "type": "control",
                "payload": {"action": "tool_cancel", "data": {"callId": call_id, "reason": reason}},
            }
        )

    def abandon(self, call_id: str) -> bool:
        """Stop waiting for ``call_id`` (timeout, interrupt, the turn ended); its late result
        will be dropped quietly. Returns whether the call was pending."""
        turn = self._pending_calls.pop(call_id, None)
        if turn is None:
            return False
        self._remember_call(call_id)
        if turn.live:
            turn.process(ToolResultIn(call_id))
        return True

    @property
    def pending_calls(self) -> int:
        return len(self._pending_calls)

    # -- turns ---------------------------------------------------------------------------------

    @property
    def queued(self) -> list[Turn]:
        """The turns waiting to start, oldest first."""
        return [turn for turn in self.turns if turn.state is TurnState.QUEUED]

    def current(self) -> Turn | None:
        """The oldest turn not answered yet."""
        self._prune()
        return self.turns[0] if self.turns else None

    def interrupt(self) -> InterruptReceived:
        """An ``interrupt``: stop the oldest turn not answered yet (see the module docstring)."""
        turn = self.current()
        if turn is None:
            return InterruptReceived(None, ())
        return InterruptReceived(turn, tuple(turn.process(Interrupt())))

    def connection_lost(self) -> list[tuple[Turn, list[TurnAction]]]:
        """The socket is gone: every turn learns it. Returns each live turn and its actions."""
        self.state = ServerState.CLOSED
        self._prune()
        affected = [(turn, turn.process(ClientGone())) for turn in list(self.turns)]
        self._prune()
        return affected

    def drain(self) -> list[Turn]:
        """The server is shutting down: turns not started will not start. Returns them (each
        in ENDING, its end an ``error`` to send); the running turn is untouched."""
        self.draining = True
        refused = []
        for turn in list(self.turns):
            started = turn.state is not TurnState.QUEUED
            turn.process(Drain())
            if not started:
                refused.append(turn)
        return refused

    def drain_expired(self) -> list[TurnAction]:
        """The shutdown grace is over: stop the running turn (if any)."""
        turn = self.current()
        if turn is None or turn.state is TurnState.QUEUED:
            return []
        return turn.process(DrainExpired())

    def _prune(self) -> None:
        turns = self.turns
        while turns and turns[0].state is TurnState.DONE:
            turns.popleft()

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[ServerEvent]:
        """Process one received frame."""
        if self.state is ServerState.CLOSED:
            return []
        try:
            frame = decode_client_frame(text)
            return self._handle(frame, len(text))
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

    def _handle(self, frame: Any, size: int) -> list[ServerEvent]:
        if isinstance(frame, UserFrame | PromptFrame | SdkMessageFrame):
            return self._turn(frame, size)
        if isinstance(frame, ToolResultFrame):
            return self._tool_result(frame)
        if isinstance(frame, PingFrame):
            stamp = frame.payload.timestamp
            pong = encode({"type": "pong", "payload": {"timestamp": int(stamp or 0)}})
            return [PingReceived(pong)]
        if isinstance(frame, ClientControlFrame):
            action = frame.payload.action
            if action == "interrupt":
                return [self.interrupt()]
            if action == "ack":
                return self._ack(frame.payload.data)
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
            self.extensions = frozenset(frame.payload.chucky_extensions or ())
            return [InitReceived(frame.payload)]
        raise FrameError(  # pragma: no cover - decode_client_frame admits nothing else
            "Invalid frame", details={"reason": "invalid_frame"}
        )

    def _ack(self, data: Any) -> list[ServerEvent]:
        seq = data.get("seq") if isinstance(data, dict) else None
        if not self.sequenced or isinstance(seq, bool) or not isinstance(seq, int):
            return []  # ignored (section 10)
        return [AckReceived(seq)]

    def _tool_result(self, frame: ToolResultFrame) -> list[ServerEvent]:
        call_id = frame.payload.call_id
        turn = self._pending_calls.pop(call_id, None)
        if turn is None:
            if call_id in self._abandoned:
                return []  # answered after we gave up on it, or answered twice: nobody waits
            raise FrameError(
                f"Invalid tool_result: no pending tool call with callId {clip(call_id)}",
                details={"reason": "invalid_frame", "type": "tool_result"},
            )
        self._remember_call(call_id)  # a second result for it is dropped (a resent tool_call)
        if turn.live:
            turn.process(ToolResultIn(call_id))
        return [ToolResultReceived(call_id, frame.payload.result)]

    def _remember_call(self, call_id: str) -> None:
        self._abandoned[call_id] = None
        if len(self._abandoned) > _ABANDONED_KEPT:
            del self._abandoned[next(iter(self._abandoned))]

    def _turn(
        self, frame: UserFrame | PromptFrame | SdkMessageFrame, size: int
    ) -> list[ServerEvent]:
        if self.state is ServerState.ENDING:
            raise FrameError(
                "Invalid turn: the client sent end_input, no more turns are accepted",
                details={"reason": "invalid_frame", "type": frame.type},
            )
        turn_id = frame.turn_id
        if turn_id is not None and turn_id in self._turn_ids:
            return [TurnDuplicate(turn_id)]
        refusal = self._refusal(size)
        if refusal is not None:
            return [TurnRejected(refusal)]
        content, options = turn_content(frame)
        events: list[ServerEvent] = []
        if self.state is ServerState.AWAITING_INIT:
            self.state = ServerState.OPEN
            events.append(InitReceived(options or SessionOptions(), implicit=True))
        turn = Turn(content, options, size, turn_id=turn_id)
        if turn_id is not None:
            self.remember_turn(turn_id)
        self.turns.append(turn)
        events.append(TurnReceived(turn, frame.type))
        return events

    def remember_turn(self, turn_id: str) -> None:
        """A turn with this id is the session's: a turn frame re-sent with it is a
        :class:`TurnDuplicate`."""
        self._turn_ids[turn_id] = None
        if len(self._turn_ids) > _TURN_IDS_KEPT:
            del self._turn_ids[next(iter(self._turn_ids))]

    def _refusal(self, size: int) -> ChuckyError | None:
        """The error for a turn of ``size`` characters that cannot be queued, else ``None``."""
        if self.draining:
            return shutdown_refusal()
        self._prune()
        if self.reject_when_busy and self.turns:
            return SessionError(
                "Session busy: a turn is already running on this session",
                details={"reason": "session_busy"},
            )
        queued = self.queued
        if not queued:
            return None
        count = len(queued)
        held = sum(turn.size for turn in queued)
        if count < self.max_queued_turns and held + size <= self.max_queued_bytes:
            return None
        return RateLimitError(
            f"Rate limit exceeded: {count} turns ({held} bytes) already wait on this "
            f"connection (limit {self.max_queued_turns} turns, {self.max_queued_bytes} "
            "bytes); wait for a result before sending more",
            details={
                "reason": "queue_full",
                "queued": count,
                "queuedBytes": held,
                "limit": self.max_queued_turns,
                "limitBytes": self.max_queued_bytes,
            },
        )
