"""A multi-turn session: ``send`` a message, ``stream`` the turn's messages, repeat.

The socket opens lazily on the first :meth:`Session.send` and every turn of the session uses it.

A turn may have a deadline (``turn_timeout``): when it passes before the turn's ``result``,
:meth:`Session.stream` sends ``interrupt`` (the server stops the turn, docs/protocol.md
section 4) and raises :class:`~chucky.errors.TimeoutError`. The turn is then **abandoned**:
whatever of it still arrives -- the ``result`` of the interrupt included -- is dropped, so the
next turn's :meth:`~Session.stream` starts with the next turn's messages.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import inspect
import math
import os
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from ..errors import ChuckyError, InvalidStateError, TimeoutError, ValidationError
from ..messages import ErrorMessage, ResultMessage, SDKMessage, SystemMessage, WireModel
from .connection import ClientConnection, ConnectionSettings
from .settings import SessionSpec

__all__ = ["Session", "SessionState"]

_BLOCK_TYPES = frozenset({"text", "image", "document"})

# How long the interrupt of a turn past its deadline may take to go out: the socket may be
# blocked (a server that stopped reading); the turn is given up on all the same.
_INTERRUPT_SEND_TIMEOUT: Final = 5.0


def check_turn_timeout(value: float | None) -> float | None:
    """``value`` if it is ``None`` or a number of seconds > 0.

    Raises:
        ValidationError: anything else.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(
            f"turn_timeout must be a number of seconds > 0 or None, got {value!r}",
            details={"reason": "invalid_options"},
        )
    return float(value)


@dataclass(slots=True)
class _SentTurn:
    """A turn sent and not ended yet, as the session tracks it."""

    timeout: float | None
    deadline: float | None  # event-loop time
    abandoned: bool = False


class SessionState(enum.Enum):
    NEW = "new"  # no socket yet: it opens on the first send()
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"  # the socket was lost; the session is being resumed
    CLOSED = "closed"


Content = str | Sequence[Mapping[str, Any] | WireModel]


def _content(message: Content) -> str | list[dict[str, Any]]:
    if isinstance(message, str):
        return message
    if isinstance(message, Mapping | WireModel) or not isinstance(message, Sequence):
        raise ValidationError(
            "a message is a string or a list of content blocks (text, image, document)"
        )
    blocks: list[dict[str, Any]] = []
    for index, block in enumerate(message):
        if isinstance(block, WireModel):
            data = block.to_wire()
        elif isinstance(block, Mapping):
            data = dict(block)
        else:
            raise ValidationError(f"content block {index} is a {type(block).__name__}, not a dict")
        if data.get("type") not in _BLOCK_TYPES:
            raise ValidationError(
                f"content block {index} has type {data.get('type')!r}; "
                "expected text, image or document"
            )
        blocks.append(data)
    return blocks


class Session:
    """One conversation with the agent, over one WebSocket (or, when the client reconnects,
    the successive sockets that resume it: see ``Chucky(reconnect=...)``).

    Create it with :meth:`Chucky.create_session` (returns at once) or
    :meth:`Chucky.resume_session`. ``async with session:`` closes it on exit.
    """

    def __init__(
        self,
        spec: SessionSpec,
        settings: ConnectionSettings,
        *,
        idle_timeout: float | None = None,
        turn_timeout: float | None = None,
        on_close: Callable[[Session], None] | None = None,
    ) -> None:
        self._spec = spec
        self._on_close = on_close
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._turn_timeout = check_turn_timeout(turn_timeout)
        self._turns: deque[_SentTurn] = deque()
        self._state = SessionState.NEW
        self._conn: ClientConnection | None = None
        self._lock = asyncio.Lock()
        self._session_id = spec.options.session_id
        self._warned_unsupported = False

    @property
    def state(self) -> SessionState:
        """``NEW``, ``CONNECTING``, ``OPEN``, ``RECONNECTING`` (the socket was lost and the
        session is being resumed: ``stream()`` goes on when it is back) or ``CLOSED``."""
        conn = self._conn
        if self._state is SessionState.OPEN and conn is not None and conn.reconnecting:
            return SessionState.RECONNECTING
        return self._state

    @property
    def session_id(self) -> str | None:
        """The server's id for this session; known after the first message of a turn."""
        if self._conn is not None and self._conn.session_id:
            return self._conn.session_id
        return self._session_id

    @property
    def options(self) -> Any:
        """The :class:`~chucky.options.SessionOptions` sent in ``init``."""
        return self._spec.options

    @property
    def info(self) -> dict[str, Any]:
        """The server's ``session_info`` (``sessionId``, ``model``, ``tools``, ...), if sent."""
        return dict(self._conn.session_info) if self._conn is not None else {}

    async def _connection(self) -> ClientConnection:
        if self._conn is not None and self._state is SessionState.OPEN:
            return self._conn
        async with self._lock:
            if self._state is SessionState.CLOSED:
                raise InvalidStateError("the session is closed")
            if self._conn is None:
                self._state = SessionState.CONNECTING
                options = self._spec.options
                conn = ClientConnection(
                    self._settings,
                    options.to_wire(),
                    self._spec.registry,
                    session_id=options.session_id,
                )
                try:
                    await conn.open()
                except BaseException:
                    self._state = SessionState.CLOSED
                    raise
                self._conn = conn
                self._state = SessionState.OPEN
            return self._conn

    async def send(self, message: Content, *, turn_timeout: float | None = None) -> None:
        """Start a turn with ``message`` (a string, or text / image / document blocks).

        The first call opens the connection. Read the turn with :meth:`stream`.

        Args:
            message: The user's message.
            turn_timeout: Seconds the turn may take, from this call to its ``result``; ``None``
                uses the client's ``turn_timeout`` (by default none). Past it, :meth:`stream`
                interrupts the turn and raises :class:`~chucky.errors.TimeoutError`.

        Raises:
            ValidationError: ``message`` is not a string or a list of content blocks, or
                ``turn_timeout`` is not a number of seconds > 0.
            AuthenticationError: the server refused the token.
            ConnectionError: the server cannot be reached or the connection was lost.
            TimeoutError: the server did not answer the handshake within ``timeout``.
            InvalidStateError: the session is closed.
        """
        content = _content(message)
        timeout = check_turn_timeout(turn_timeout)
        if timeout is None:
            timeout = self._turn_timeout
        began = asyncio.get_running_loop().time()
        conn = await self._connection()
        await conn.send_turn(content)
        self._turns.append(_SentTurn(timeout, None if timeout is None else began + timeout))

    async def stream(self) -> AsyncIterator[SDKMessage]:
        """The messages of the current turn, up to and including its ``result``.

        An ``error`` frame is yielded as an :class:`~chucky.messages.ErrorMessage` (its
        ``exception`` is the typed error) and ends the iteration. Nothing is ever dropped:
        messages of a turn not read yet wait in order for the next call.

        Raises:
            ConnectionError: the connection was lost or the server stopped answering.
            TimeoutError: the turn's ``turn_timeout`` passed (the turn was interrupted and is
                abandoned, ``details["reason"]`` is ``turn_timeout``), or no message came for
                ``idle_timeout`` seconds (only when set).
            InvalidStateError: no turn was sent, or another ``stream()`` is reading.
        """
        if self._conn is None:
            if self._state is SessionState.CLOSED:
                raise InvalidStateError("the session is closed")
            raise InvalidStateError("nothing to read: send() a message first")
        conn = self._conn
        inbox = conn.inbox
        turns = self._turns
        while True:
            ready, message = inbox.try_get()
            if not ready:
                message = await self._wait(conn)
            assert message is not None
            ends = isinstance(message, ResultMessage | ErrorMessage)
            abandoned = bool(turns) and turns[0].abandoned
            if ends and turns:
                turns.popleft()
            if abandoned:
                continue  # the rest of a turn given up on at its deadline
            if (
                not self._warned_unsupported
                and isinstance(message, SystemMessage)
                and message.unsupported_options
            ):
                self._warned_unsupported = True
                warn_unsupported(message.unsupported_options)
            yield message
            if ends:
                return

    async def _wait(self, conn: ClientConnection) -> SDKMessage:
        inbox = conn.inbox
        if inbox.waiting:
            raise InvalidStateError("another stream() is already reading this session")
        # The reader counts a turn's result before it can queue it (when the inbox is full),
        # so a blocked put also means more is coming.
        if not (conn.proto.open_turns or inbox.pending_put or inbox.error):
            raise InvalidStateError("no turn in progress: send() a message first")
        idle = self._idle_timeout
        turn = next((turn for turn in self._turns if not turn.abandoned), None)
        turn_deadline = turn.deadline if turn is not None else None
        if idle is None and turn_deadline is None:
            return await inbox.get()
        loop = asyncio.get_running_loop()
        idle_deadline = None if idle is None else loop.time() + idle
        by_turn = turn_deadline is not None and (
            idle_deadline is None or turn_deadline <= idle_deadline
        )
        when = turn_deadline if by_turn else idle_deadline
        try:
            async with asyncio.timeout_at(when):
                return await inbox.get()
        except builtins.TimeoutError as exc:
            if not by_turn:
                raise TimeoutError(
                    f"no message from the server for {idle:g} s", session_id=self.session_id
                ) from exc
            assert turn is not None and turn.timeout is not None
            await self._abandon(conn, turn)
            raise TimeoutError(
                f"the turn did not end within {turn.timeout:g} s (turn_timeout); "
                "it was interrupted",
                details={"reason": "turn_timeout", "turnTimeout": turn.timeout},
                session_id=self.session_id,
            ) from exc

    async def _abandon(self, conn: ClientConnection, turn: _SentTurn) -> None:
        """Give up on ``turn``: interrupt it (best effort) and drop what still comes of it."""
        turn.abandoned = True
        # A connection that is gone, closed or blocked cannot carry the interrupt: the
        # deadline is what the caller asked for, whatever the socket does.
        with contextlib.suppress(ChuckyError, builtins.TimeoutError):
            async with asyncio.timeout(_INTERRUPT_SEND_TIMEOUT):
                await conn.interrupt()

    def receive(self) -> AsyncIterator[SDKMessage]:
        """Alias of :meth:`stream` (the official V2 API name)."""
        return self.stream()

    async def interrupt(self) -> None:
        """Stop the running turn; it ends with a ``result`` of subtype
        ``error_during_execution`` (docs/protocol.md section 4). Keep reading :meth:`stream` to
        get it.

        The session's tool handlers still running are cancelled at once, and no result is sent
        for them: every tool call in flight belongs to the running turn (turns run one at a
        time), and the server no longer waits for its answer. An async handler gets
        :class:`asyncio.CancelledError` at its current ``await`` (its ``finally`` blocks run); a
        sync handler runs in a worker thread that cannot be stopped: it runs to its end and its
        return value is discarded. A handler that has already returned is not affected: its
        result is sent. Handlers are likewise cancelled when the turn ends (its ``result`` or
        ``error`` arrives) while they run, when a server supporting our ``tool_cancel``
        extension abandons their call, and when the connection is lost.

        Does nothing before the first :meth:`send` or after :meth:`close`.

        Raises:
            ConnectionError: the connection is gone (the handlers are cancelled all the same).
        """
        if self._conn is None:
            return
        await self._conn.interrupt()

    async def close(self) -> None:
        """Close the connection and stop its tasks. Idempotent."""
        if self._state is SessionState.CLOSED and self._conn is None:
            return
        self._state = SessionState.CLOSED
        if self._on_close is not None:
            self._on_close(self)
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.session_id:
                self._session_id = conn.session_id
            await conn.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Session(session_id={self.session_id!r}, state={self._state.value})"


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warn_unsupported(options: Sequence[str]) -> None:
    """A :class:`UserWarning` at the application's line: the server said it does not act on
    these ``init`` options (``unsupportedOptions``, docs/protocol.md section 5)."""
    warnings.warn(
        f"the server does not act on the session options {', '.join(options)}: they are "
        "accepted and have no effect there",
        UserWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside the chucky package (and asyncio)."""
    frame = inspect.currentframe()
    level = 0  # _caller_level's own frame
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if level >= 2 and not filename.startswith(_PACKAGE_DIR) and "asyncio" not in filename:
            return level  # warn_unsupported is level 1 for warnings.warn
        frame = frame.f_back
        level += 1
    return 2
