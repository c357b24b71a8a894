"""The life of one turn on the server, as a state machine without I/O.

Theory of operation
-------------------
A turn is what one user frame (``user``, ``prompt``, ``sdk_message``) asks for: from the moment
the server reads it to the moment it has answered it with exactly one ``result`` or one
``error`` frame (docs/protocol.md section 4), or knows it never can (the client is gone). Many
things can happen to it on the way, from two directions at once: the turn's own work (admission,
model calls, tool rounds) and the outside world (an ``interrupt``, a ``close``, a dropped
socket, the compute budget running out, a server shutting down). One :class:`Turn` per turn
owns its state; every one of those happenings is an event fed to :meth:`Turn.process`, which
looks the pair (state, event) up in :data:`TRANSITIONS`. A pair missing from the table is a bug
in the caller and raises :class:`~chucky.errors.InvalidStateError` at once. The state changes
nowhere else.

States, and the events that move a turn along (the whole table is :data:`TRANSITIONS`)::

    QUEUED    --Start-->                   ADMITTING
              --Interrupt, Drain-->        ENDING     (it never ran; the end says why)
              --ClientGone-->              DONE       (it never ran; nobody to tell)
    ADMITTING --Admitted-->                RUNNING
              --Refused-->                 ENDING     (an error frame; it never ran)
              --Interrupt, ClientGone,
                DrainExpired-->            STOPPING   (CancelWork)
    RUNNING   --LoopEnded, LoopFailed-->   ENDING
              --Refused-->                 ENDING     (its first model call cannot be paid)
              --Interrupt, ClientGone,
                ComputeExhausted,
                DrainExpired-->            STOPPING   (CancelWork)
    STOPPING  --LoopCancelled, LoopEnded,
                LoopFailed, Refused-->     ENDING
    ENDING    --Ended-->                   DONE

Rules, and where they come from:

* **Exactly one end** (section 4): a turn ends with one ``result``, or with one ``error`` frame
  when it could not run at all (refused at admission, failed, refused by a shutting-down
  server). :attr:`Turn.end` says which, and is fixed on entering ENDING; nothing changes it
  afterwards. A turn whose client is gone ends with nothing to send (:attr:`TurnEnd.deliver` is
  false), but its settlement still runs.
* **An interrupt always works**: in QUEUED it ends the turn before it starts (the result says
  ``interrupted``, nothing was stored or charged); in ADMITTING or RUNNING it asks the executor
  to cancel the turn's work (:class:`CancelWork`); once the turn is STOPPING or ENDING it changes
  nothing (the result is already on its way).
* **The first stop reason wins**: interrupt, compute exhausted, shutdown or client gone, in the
  order they arrive; a client that goes away later only makes the end undeliverable.
* **A loop that finished wins over a stop that came too late**: if the work ends normally after
  a stop was asked for (the cancellation found no ``await`` left), its own outcome is reported,
  since the answer it produced is stored and paid for.
* **Tool calls in flight** (section 6) are tracked from ``ToolCallOut`` to ``ToolResultIn``; when
  the turn stops or ends with calls pending, :class:`AbandonCalls` tells the executor to resolve
  them (and, with the ``tool_cancel`` extension, to tell the client).

The executor (:mod:`chucky.server.connection`) carries out the actions :meth:`Turn.process`
returns and reads :attr:`Turn.end` when the turn reaches ENDING. Settlement of the ledger is not
a state here: it runs, shielded, between ENDING and ``Ended`` whatever the way in.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ChuckyError, InvalidStateError

__all__ = [
    "TRANSITIONS",
    "AbandonCalls",
    "Admitted",
    "Answered",
    "CancelWork",
    "ClientGone",
    "ComputeExhausted",
    "Drain",
    "DrainExpired",
    "Ended",
    "Interrupt",
    "LoopCancelled",
    "LoopEnded",
    "LoopFailed",
    "ModelCallReserved",
    "ModelOutput",
    "Refused",
    "Start",
    "StopReason",
    "ToolCallOut",
    "ToolResultIn",
    "Turn",
    "TurnAction",
    "TurnEnd",
    "TurnEvent",
    "TurnState",
    "shutdown_refusal",
]


class TurnState(enum.Enum):
    QUEUED = "queued"
    """Received; waits for the session to open and for the turns before it."""
    ADMITTING = "admitting"
    """The checks before it runs: rate limit, compute grant, the first model call's reservation."""
    RUNNING = "running"
    """The agent loop: model calls and tool rounds."""
    STOPPING = "stopping"
    """Asked to stop; its work is being cancelled."""
    ENDING = "ending"
    """Its end is decided; it is being settled and saved, then the end frame goes out."""
    DONE = "done"
    """Answered (or its client is gone): nothing more happens to it."""


class StopReason(enum.Enum):
    """Why a turn was stopped before its work ended; the value is the ``result``'s error."""

    INTERRUPTED = "interrupted"
    COMPUTE_EXHAUSTED = "compute budget exhausted"
    SHUTDOWN = "server shutting down"
    CLIENT_GONE = "client gone"


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The executor takes the turn up (its turn in the queue has come)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """Rate limit passed and compute granted: the agent loop starts."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The turn cannot run (rate limit, budget, unknown model ...): answered with ``error``."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class ModelCallReserved:
    """A model call's worst case is reserved in the ledger."""


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """A model call produced output (an event, or its whole message)."""


@dataclass(frozen=True, slots=True)
class ToolCallOut:
    """A ``tool_call`` went to the client."""

    call_id: str


@dataclass(frozen=True, slots=True)
class ToolResultIn:
    """The client's ``tool_result`` for a pending call arrived (or the call timed out)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    """``control`` ``interrupt`` (or a ``close``, which interrupts and then closes)."""


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The socket is gone, or the client stopped reading: nothing more can be delivered."""


@dataclass(frozen=True, slots=True)
class ComputeExhausted:
    """The user's compute budget cannot extend the running turn's grant."""


@dataclass(frozen=True, slots=True)
class Drain:
    """The server is shutting down: a turn not started yet will not start."""


@dataclass(frozen=True, slots=True)
class DrainExpired:
    """The shutdown grace is over: a turn still running is stopped."""


@dataclass(frozen=True, slots=True)
class LoopEnded:
    """The agent loop finished with this ``result`` subtype (and errors)."""

    subtype: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoopFailed:
    """The agent loop raised (a provider failure, a budget refusal before anything ran ...)."""

    error: ChuckyError


@dataclass(frozen=True, slots=True)
class LoopCancelled:
    """The agent loop ended by the cancellation that a stop asked for."""


@dataclass(frozen=True, slots=True)
class Answered:
    """The turn ran before (the session has its ``turnId``, docs/protocol.md section 10): it is
    answered with ``frames`` -- its messages and its end, from the store -- not run again."""

    frames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ended:
    """The end frame was sent, or could not be (the client is gone)."""


TurnEvent = (
    Start
    | Admitted
    | Refused
    | ModelCallReserved
    | ModelOutput
    | ToolCallOut
    | ToolResultIn
    | Interrupt
    | ClientGone
    | ComputeExhausted
    | Drain
    | DrainExpired
    | LoopEnded
    | LoopFailed
    | LoopCancelled
    | Answered
    | Ended
)


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelWork:
    """Cancel the turn's work (admission or agent loop); its settlement still runs."""


@dataclass(frozen=True, slots=True)
class AbandonCalls:
    """Stop waiting for these client tool calls (each resolves to an error result)."""

    call_ids: tuple[str, ...]
    reason: str
    """``interrupted``, ``turn_ended`` (the ``tool_cancel`` frame's ``reason``)."""


TurnAction = CancelWork | AbandonCalls


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """How a turn ends: with a ``result`` (``subtype`` and ``errors``) or an ``error`` frame.

    ``deliver`` is false when the client is gone: the turn is settled, nothing is sent.
    ``ran`` is false when the turn never started its work (nothing stored, nothing charged).
    ``frames``: a turn that ran before is answered with these frames (:class:`Answered`).
    """

    subtype: str | None = None
    errors: tuple[str, ...] = ()
    error: ChuckyError | None = None
    deliver: bool = True
    ran: bool = True
    frames: tuple[str, ...] = ()

    @property
    def is_result(self) -> bool:
        return self.error is None and self.subtype is not None


# -- the table ---------------------------------------------------------------------------------

_Q, _A, _R, _S, _E, _D = (
    TurnState.QUEUED,
    TurnState.ADMITTING,
    TurnState.RUNNING,
    TurnState.STOPPING,
    TurnState.ENDING,
    TurnState.DONE,
)

TRANSITIONS: Final[Mapping[tuple[TurnState, type[Any]], TurnState]] = {
    (_Q, Start): _A,
    (_Q, Interrupt): _E,
    (_Q, ClientGone): _D,
    (_Q, Drain): _E,
    (_Q, Answered): _E,
    (_A, Admitted): _R,
    (_A, Refused): _E,
    (_A, Interrupt): _S,
    (_A, ClientGone): _S,
    (_A, Drain): _A,
    (_A, DrainExpired): _S,
    (_R, ModelCallReserved): _R,
    (_R, ModelOutput): _R,
    (_R, ToolCallOut): _R,
    (_R, ToolResultIn): _R,
    (_R, Interrupt): _S,
    (_R, ClientGone): _S,
    (_R, ComputeExhausted): _S,
    (_R, Drain): _R,
    (_R, DrainExpired): _S,
    (_R, Refused): _E,
    (_R, LoopEnded): _E,
    (_R, LoopFailed): _E,
    # Stopping: the cancellation is on its way; what the loop still reports is recorded, and
    # further stop requests change nothing.
    (_S, ToolResultIn): _S,
    (_S, Interrupt): _S,
    (_S, ClientGone): _S,
    (_S, ComputeExhausted): _S,
    (_S, Drain): _S,
    (_S, DrainExpired): _S,
    (_S, Refused): _E,
    (_S, LoopCancelled): _E,
    (_S, LoopEnded): _E,
    (_S, LoopFailed): _E,
    # Ending: the end is decided. A stop request or a late tool result changes nothing; a
    # client that goes away makes the end undeliverable.
    (_E, ToolResultIn): _E,
    (_E, Interrupt): _E,
    (_E, ClientGone): _E,
    (_E, ComputeExhausted): _E,
    (_E, Drain): _E,
    (_E, DrainExpired): _E,
    (_E, Ended): _D,
    (_D, Interrupt): _D,
    (_D, ClientGone): _D,
    (_D, ComputeExhausted): _D,
    (_D, Drain): _D,
    (_D, DrainExpired): _D,
    (_D, ToolResultIn): _D,
}
"""(state, event type) -> next state. A pair not listed is illegal."""

_SHUTDOWN_ERROR_MESSAGE: Final = "Session closed: the server is shutting down; the turn did not run"


def shutdown_refusal() -> ChuckyError:
    """The ``error`` a turn not started gets when the server shuts down."""
    return ChuckyError(
        _SHUTDOWN_ERROR_MESSAGE, code="SESSION_ERROR", details={"reason": "server_shutdown"}
    )


@dataclass(slots=True)
class Turn:
    """One turn's state (see the module docstring).

    Args:
        content: The user's message (a string or content blocks).
        options: Per-turn options (P's ``prompt`` form), or ``None``.
        size: Bytes of the frame that carried it (counted against the queue's limit).
        turn_id: The client's id of the turn (``turnId``, the ``seq`` extension of
            docs/protocol.md section 10), or ``None``.
    """

    content: Any
    options: Any = None
    size: int = 0
    turn_id: str | None = None
    state: TurnState = TurnState.QUEUED
    stop_reason: StopReason | None = None
    end: TurnEnd | None = None
    pending_calls: list[str] = field(default_factory=list)
    _deliver: bool = True

    @property
    def deliverable(self) -> bool:
        """Whether the client can still be told how the turn ended."""
        return self._deliver

    @property
    def live(self) -> bool:
        """Not answered yet (any state before DONE)."""
        return self.state is not TurnState.DONE

    def process(self, event: TurnEvent) -> list[TurnAction]:
        """Apply ``event``; returns the actions for the executor, in order.

        Raises:
            InvalidStateError: ``event`` is not allowed in the current state.
        """
        state = self.state
        target = TRANSITIONS.get((state, type(event)))
        if target is None:
            raise InvalidStateError(
                f"turn event {type(event).__name__} is not allowed in state {state.value}"
            )
        actions: list[TurnAction] = []
        if isinstance(event, ToolCallOut):
            self.pending_calls.append(event.call_id)
        elif isinstance(event, ToolResultIn):
            if event.call_id in self.pending_calls:
                self.pending_calls.remove(event.call_id)
        elif isinstance(event, ClientGone):
            self._deliver = False
            if self.end is not None:
                self.end = _undeliverable(self.end)
            self._stop(StopReason.CLIENT_GONE, actions)
        elif isinstance(event, Interrupt):
            self._stop(StopReason.INTERRUPTED, actions)
        elif isinstance(event, ComputeExhausted):
            self._stop(StopReason.COMPUTE_EXHAUSTED, actions)
        elif isinstance(event, DrainExpired):
            self._stop(StopReason.SHUTDOWN, actions)
        elif isinstance(event, Answered):
            self.end = TurnEnd(frames=event.frames, deliver=self._deliver, ran=False)
        elif isinstance(event, Drain) and state is TurnState.QUEUED:
            self.end = TurnEnd(error=shutdown_refusal(), ran=False)
        elif isinstance(event, Refused):
            self.end = TurnEnd(error=event.error, deliver=self._deliver, ran=False)
        elif isinstance(event, LoopEnded):
            self.end = TurnEnd(subtype=event.subtype, errors=event.errors, deliver=self._deliver)
        elif isinstance(event, LoopFailed):
            self.end = TurnEnd(error=event.error, deliver=self._deliver)
        elif isinstance(event, LoopCancelled):
            reason = self.stop_reason
            assert reason is not None  # STOPPING is only entered with a reason
            self.end = TurnEnd(
                subtype="error_during_execution", errors=(reason.value,), deliver=self._deliver
            )
        self.state = target
        if target is TurnState.ENDING and state is not TurnState.ENDING:
            if state is TurnState.QUEUED and self.end is None:
                # Interrupted before it started: nothing ran, nothing was stored or charged.
                self.end = TurnEnd(
                    subtype="error_during_execution",
                    errors=(StopReason.INTERRUPTED.value,),
                    ran=False,
                )
            if self.pending_calls:
                actions.append(AbandonCalls(tuple(self.pending_calls), "turn_ended"))
                self.pending_calls.clear()
        return actions

    def _stop(self, reason: StopReason, actions: list[TurnAction]) -> None:
        if self.state not in (TurnState.ADMITTING, TurnState.RUNNING):
            return  # queued (no work yet) or already stopping/ending: nothing to cancel
        self.stop_reason = reason
        actions.append(CancelWork())
        if self.pending_calls:
            why = "interrupted" if reason is not StopReason.CLIENT_GONE else "turn_ended"
            actions.append(AbandonCalls(tuple(self.pending_calls), why))
            self.pending_calls.clear()


def _undeliverable(end: TurnEnd) -> TurnEnd:
    return dataclasses.replace(end, deliver=False)
