"""The part of a connection that outlives its socket: the ``seq`` extension's detach and
resume (docs/protocol.md section 10), mixed into :class:`~chucky.server.connection.Connection`.

When a socket of a session whose client announced ``seq`` drops (no close frame from the
client), :meth:`Resumable._after_socket` *detaches* the session for ``reconnect_grace`` seconds
instead of ending it: the turn worker goes on, frames go to the replay buffer only. A new
socket whose ``init`` names the session with ``lastSeq`` has its own connection call
:meth:`Resumable._resume`, which hands the socket to the session's connection
(:meth:`Resumable.attach`: ``resumed``, the frames missed, the pending tool calls again), or,
when that is not possible, answers ``replay_unavailable``, lets the holder finish its running
turn and end (:meth:`Resumable.supersede`), and opens the session from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .._redact import redacting_logger
from ..protocol.server import ServerProtocol, ServerState
from .resume import SessionReplay, replay_unavailable
from .store import SessionRecord
from .turn_runner import ClientGoneError

if TYPE_CHECKING:
    from ..tokens import TokenClaims
    from .app import ChuckyServer
    from .config import ServerConfig
    from .connection import Connection, FrameSocket
    from .sessions import OpenSession

__all__ = ["Resumable"]

logger = redacting_logger("chucky.server")


class Resumable:
    """Detach and resume, for :class:`~chucky.server.connection.Connection` (its state is
    declared here for the type checker; the connection sets it up)."""

    server: ChuckyServer
    config: ServerConfig
    claims: TokenClaims
    ws: FrameSocket
    proto: ServerProtocol
    replay: SessionReplay
    opened: OpenSession | None
    session: SessionRecord | None
    detached: bool
    ended: asyncio.Event
    _attached: asyncio.Event
    _closing: bool
    _gone: bool
    _superseded: bool
    _successor: Connection | None
    _worker: asyncio.Task[None] | None
    _wake: asyncio.Event
    _write_lock: asyncio.Lock

    async def _write(self, text: str) -> None:
        raise NotImplementedError

    async def _end(self) -> None:
        raise NotImplementedError

    def _abort(self, why: str) -> None:
        raise NotImplementedError

    async def _after_socket(self, ws: FrameSocket, dropped: bool) -> None:
        """``ws`` ended: end the session, or, if the link broke (``dropped``: no close frame
        from the client), detach it for its grace (section 10)."""
        if ws is not self.ws or self.ended.is_set():
            return  # another socket took the session over: its handler is in charge now
        grace = self.config.reconnect_grace
        if dropped and self._may_detach() and not self._superseded:
            self.detached = True
            self._attached.clear()
            logger.info(
                "session %s: the socket dropped; kept %g s for its client to resume it",
                self.session.session_id if self.session else "-",
                grace,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._attached.wait()
            if self._attached.is_set() and not (self._closing or self._superseded):
                return  # resumed: the new socket's handler serves the session now
        if self._superseded and self._worker is not None:
            self._closing = True  # no queued turn starts; the running one ends on its own
            self._wake.set()
            await asyncio.wait({self._worker})
        await self._end()

    def _may_detach(self) -> bool:
        return (
            self.proto.sequenced
            and self.opened is not None
            and not self._closing
            and not self.server.closing
            and self.proto.state is ServerState.OPEN
        )

    async def _resume(self, session_id: str, last_seq: int) -> bool:
        """A client resumes ``session_id`` after ``last_seq``: hand this socket to the
        connection of this node that holds the session, which replays what the client missed.
        ``False``: not possible; ``replay_unavailable`` was sent, and the holder (if any) has
        ended, its turns done."""
        holder = self.server.holder_of(session_id, self.claims)
        if holder is not None:
            if await holder.attach(self.ws, last_seq):
                self._successor = holder
                self._closing = True  # this socket's reader stops: the holder's takes over
                return True
            holder.supersede()
        with contextlib.suppress(ClientGoneError):
            await self._write(self.proto.error(replay_unavailable(last_seq)))
        if holder is not None:  # its running turn ends on its own, then it lets go
            limit = self.config.reconnect_grace + (self.config.model_timeout or 600.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await holder.ended.wait()
        return False

    async def attach(self, ws: FrameSocket, last_seq: int) -> bool:
        """Make ``ws`` this session's socket: ``resumed``, the frames after ``last_seq``, then
        the pending tool calls the client had received, again (section 10). ``False`` when the
        frames after ``last_seq`` are no longer all held, or the session is ending."""
        if self._closing or self.ended.is_set() or self.session is None:
            return False
        async with self._write_lock:
            frames = self.replay.resume(self.session.session_id, last_seq)
            if frames is None:
                return False
            previous, self.ws = self.ws, ws
            self._gone = False
            self.detached = False
            self._attached.set()
            if previous is not ws:  # a socket the server has not seen die (half-open): cut it
                transport = getattr(previous, "transport", None)
                if transport is not None:
                    transport.abort()
            logger.info(
                "session %s resumed after seq %d: %d frames sent again",
                self.session.session_id,
                last_seq,
                len(frames) - 1,
            )
            with contextlib.suppress(ClientGoneError):  # then its reader finds out, and detaches
                for text in frames:
                    await self._write(text)
        return True

    def supersede(self) -> None:
        """The client resumed the session elsewhere without replay: serve no more of it. The
        running turn ends on its own (its end is stored); queued turns never start (the
        client re-sends them); then the session is released."""
        self._superseded = True
        self._attached.set()
        if not self.detached:
            self._abort("the session was resumed on another socket")
