"""One client connection: the asyncio shell around :class:`ServerProtocol`.

The protocol (:mod:`chucky.protocol.server`) and each turn's state machine
(:mod:`chucky.protocol.turns`) decide; this module executes. Two tasks per connection:

* the **reader** (the websockets handler itself) decodes every frame through the protocol and
  acts at once: pongs, tool results, interrupts (the machine says which turn they stop and
  returns :class:`~chucky.protocol.turns.CancelWork`), refused frames. Turns are queued by the
  protocol, bounded, so a turn that arrives while the session is being set up, or while another
  turn runs, is never dropped (docs/protocol.md sections 2.3 and 4) and a client cannot grow the
  queue without limit.
* the **turn worker** serves the turns one at a time, oldest first
  (:class:`~chucky.server.turn_runner.TurnRunner`), and delivers the end of turns that ended
  before they started (interrupted while queued, refused by a shutdown).

Every send has a deadline (``write_timeout``): a client that stops reading is cut off, its
turn ends as a disconnect (settled, nothing delivered), and nothing waits on it for longer.

**Sessions that survive the network** (the ``seq`` extension, docs/protocol.md section 10).
When the client announced ``seq``, every frame is numbered and kept in a bounded replay buffer
(:class:`~chucky.protocol.replay.ReplayBuffer`) as it is sent, under one write lock, so the
order of the numbers is the order on the wire. A socket that drops then does not end the
session: the connection *detaches* -- the reader is gone, the turn worker goes on, its frames
go to the buffer only -- and waits ``reconnect_grace`` seconds for a new socket to take it over
(:meth:`Connection.attach`, called by that socket's own connection when its ``init`` names the
session with ``lastSeq``). The new socket gets ``resumed``, the frames after ``lastSeq``, the
pending tool calls again, and then its reader serves the session. Nobody within the grace:
the session ends as a dropped socket does without ``seq``. One connection object therefore
outlives its first socket; :meth:`Connection.serve_socket` is what each socket's handler runs,
and only the handler of the socket in service acts when its socket ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .._redact import redacting_logger
from ..errors import ChuckyError, SessionNotFoundError
from ..messages import WireModel
from ..options import SessionOptions
from ..protocol.frames import ToolResultPayload, close_reason
from ..protocol.server import (
    AckReceived,
    ControlReceived,
    FrameRejected,
    InitReceived,
    InterruptReceived,
    PingReceived,
    ServerEvent,
    ServerProtocol,
    ServerState,
    ToolResultReceived,
    TurnDuplicate,
    TurnReceived,
    TurnRejected,
)
from ..protocol.turns import AbandonCalls, Answered, CancelWork, Ended, Turn, TurnAction, TurnState
from ..tokens import TokenClaims
from .agent import TurnSettings
from .budget import UserBudget
from .catalog import ClientTool, ToolCatalog
from .detach import Resumable
from .resume import SessionReplay, StoredTurns
from .routing import Route
from .sessions import OpenSession, open_session
from .store import SessionRecord
from .turn_frames import error_payload
from .turn_runner import ClientGoneError, TurnRunner, deliver, public_error

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["CLOSE_POLICY", "ClientGoneError", "Connection", "FrameSocket"]

logger = redacting_logger("chucky.server")

CLOSE_POLICY: Final = 1008
DRAIN_FINAL: Final = 3.0
"""Seconds a shutdown gives, after its grace, for the last frames and the close handshake."""


class FrameSocket(Protocol):
    """What a connection needs of its socket: a websockets ``ServerConnection``, or the
    in-process socket of an HTTP ``POST /prompt``."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str | bytes, *, text: bool | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def _abandoned(reason: str) -> ToolResultPayload:
    return error_payload(f"Tool call abandoned ({reason}) before its result")


class Connection(Resumable):
    """Serves one authenticated socket until it closes."""

    def __init__(self, server: ChuckyServer, ws: FrameSocket, claims: TokenClaims) -> None:
        self.server = server
        self.config = config = server.config
        self.ws = ws
        self.claims = claims
        self.budget = UserBudget(
            server.store, claims, server.budget_settings, node_id=server.node_id
        )
        self.proto = ServerProtocol(
            max_invalid_frames=config.max_invalid_frames,
            max_queued_turns=config.max_queued_turns,
            max_queued_bytes=config.max_queued_bytes,
            reject_when_busy=config.busy_policy == "reject",
            allow_seq=config.reconnect_grace > 0,
        )
        self.opened: OpenSession | None = None
        self.session: SessionRecord | None = None
        self.options = SessionOptions()
        self.catalog = ToolCatalog((), ())
        self._tool_waiters: dict[str, asyncio.Future[ToolResultPayload]] = {}
        self._runner: TurnRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_sent = time.monotonic()
        self._write_timeout: float | None = config.write_timeout
        self._closing = False  # no more frames are read, no more turns start
        self._gone = False  # nothing can be written to the client any more
        # The seq extension (docs/protocol.md section 10).
        self.replay = SessionReplay(self.proto, config.replay_frames, config.replay_bytes)
        self._write_lock = asyncio.Lock()
        self._attached = asyncio.Event()  # a new socket took the detached session over
        self.detached = False
        """The socket dropped; the session waits for its client to resume it."""
        self.ended = asyncio.Event()
        """The session is over on this connection: settled, saved, its lease released."""
        self._successor: Connection | None = None  # the session this socket resumed
        self._stored: StoredTurns | None = None  # turns re-sent after replay_unavailable
        self._superseded = False  # resumed elsewhere without replay: end after the turn

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed (no more frames are processed), or its
        socket already is."""
        state = getattr(self.ws, "state", State.OPEN)
        return self._closing or state is not State.OPEN

    @property
    def silent_for(self) -> float:
        """Seconds since the last frame was sent."""
        return time.monotonic() - self._last_sent

    # -- sending -------------------------------------------------------------------------------

    async def _send_text(self, text: str) -> int | None:
        """Send one frame within the write deadline; returns its ``seq`` (``None`` when the
        client did not announce the extension).

        Raises:
            ClientGoneError: the socket is closed, or the client did not take the frame in time
                (the connection is then aborted). Never with ``seq``: a frame for a socket that
                is gone waits in the replay buffer for the client to resume.
        """
        if not self.proto.sequenced:
            await self._write(text)
            return None
        # Numbered and written under one lock: the order of the numbers is the order on the
        # wire, and a resume (attach) never interleaves with a live frame.
        async with self._write_lock:
            seq, text = self.replay.number(text)
            if not (self._gone or self.detached):
                try:
                    await self._write(text)
                except ClientGoneError:  # kept in the replay buffer for the client to resume
                    return seq
            return seq

    async def _write(self, text: str) -> None:
        """Write ``text`` as it is: a numbered frame, or one that never has a ``seq``
        (``resumed``, ``replay_unavailable``, a replayed frame)."""
        if self._gone:
            raise ClientGoneError("the client is gone")
        self._last_sent = time.monotonic()
        try:
            async with asyncio.timeout(self._write_timeout):
                # A lone surrogate (a client may send "\\udc00" in any string) cannot be UTF-8:
                # written as its JSON escape it decodes back to the same string.
                await self.ws.send(text.encode("utf-8", "backslashreplace"), text=True)
        except TimeoutError:
            self._abort(f"the client did not read for {self._write_timeout:g} s (write timeout)")
            raise ClientGoneError("the client stopped reading") from None
        except ConnectionClosed as exc:
            self._gone = True
            raise ClientGoneError("the connection is closed") from exc

    def _abort(self, why: str) -> None:
        """Cut the connection now: a client that does not read cannot receive a close frame.
        The reader sees the socket closed; the running turn ends as a disconnect."""
        if self._gone:
            return
        self._gone = True
        logger.info("aborting connection of %s: %s (close code 1008)", self.claims.sub[:100], why)
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()
        else:
            self._spawn(self.ws.close(CLOSE_POLICY, why[:100]))

    async def send_message(self, message: WireModel) -> None:
        """Send an SDK message (the turn runner's host)."""
        await self._send_text(self.proto.message(message))

    async def send_error(self, error: ChuckyError) -> None:
        """Send an ``error`` frame (the turn runner's host); a store failure is told as an
        internal error, its details logged (:func:`public_error`)."""
        error = public_error(error)
        self.server.metrics.error_sent(error.code or "INTERNAL_ERROR")
        await self._send_text(self.proto.error(error))

    async def send_frame(self, text: str) -> None:
        """Send a frame built already (the turn runner's host: a turn answered from the
        store)."""
        await self._send_text(text)

    async def _send_quietly(self, text: str) -> None:
        with contextlib.suppress(ClientGoneError):
            await self._send_text(text)

    async def _fail(self, error: ChuckyError, code: int = CLOSE_POLICY) -> None:
        """A fatal error: the error frame, then the close (docs/protocol.md section 4)."""
        self._closing = True
        error = public_error(error)
        with contextlib.suppress(ClientGoneError):
            await self.send_error(error)
        await self._close_socket(code, error.message)

    async def _close_socket(self, code: int, reason: str, within: float | None = None) -> None:
        """The close handshake, bounded (a client that does not read cannot complete it)."""
        try:
            async with asyncio.timeout(within if within is not None else self._write_timeout):
                await self.ws.close(code, close_reason(reason))
        except TimeoutError:
            self._abort("the close handshake timed out")

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the state machines' actions -----------------------------------------------------------

    def execute(self, actions: list[TurnAction]) -> None:
        """Carry out what a turn's state machine asked for."""
        for action in actions:
            if isinstance(action, CancelWork):
                if self._runner is not None:
                    self._runner.cancel_work()
            elif isinstance(action, AbandonCalls):
                for call_id in action.call_ids:
                    self._abandon(call_id, action.reason)

    def _abandon(self, call_id: str, reason: str) -> None:
        self.proto.abandon(call_id)
        waiter = self._tool_waiters.get(call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(_abandoned(reason))
        frame = self.proto.tool_cancel(call_id, reason)
        if frame is not None and not self._gone:
            self._spawn(self._send_quietly(frame))

    # -- tools ---------------------------------------------------------------------------------

    async def call_tool(
        self, turn: Turn, tool: ClientTool, call_id: str, arguments: Any
    ) -> ToolResultPayload:
        """Send a ``tool_call`` and wait for its ``tool_result`` (or the timeout)."""
        if turn.state is not TurnState.RUNNING:  # stopped before this call went out
            return _abandoned("turn_ended")
        future: asyncio.Future[ToolResultPayload] = asyncio.get_running_loop().create_future()
        self._tool_waiters[call_id] = future
        metrics = self.server.metrics
        timeout = self.config.tool_timeout
        try:
            frame = self.proto.tool_call(turn, call_id, tool.name, arguments)
            seq = await self._send_text(frame)
            if seq is not None:  # sent again to a client that resumes (section 10)
                self.replay.call_sent(call_id, seq, frame)
            async with asyncio.timeout(timeout):
                result = await future
            metrics.tool_called("error" if result.is_error else "ok")
            return result
        except TimeoutError:
            logger.info("tool call %s (%s) timed out", call_id, tool.name)
            metrics.tool_called("timeout")
            self._abandon(call_id, "timeout")
            return error_payload(
                f"Tool {tool.name} timed out after {timeout:g} s without a result from the client"
            )
        finally:
            self._tool_waiters.pop(call_id, None)
            self.replay.call_done(call_id)
            self.proto.abandon(call_id)

    # -- the reader ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection: ``ready``, then frames until the socket closes (and, if it
        dropped with the ``seq`` extension on, until the session is resumed elsewhere or its
        grace ran out)."""
        self._worker = asyncio.create_task(self._serve_turns(), name="chucky-turn-worker")
        ws = self.ws
        dropped = True
        try:
            await self._send_text(self.proto.ready())
            await self._read_loop(ws)
        except ConnectionClosed as exc:
            dropped = exc.rcvd is None  # no close frame from the client: the link broke
        except ClientGoneError:
            pass
        finally:
            await self._socket_ended(ws, dropped)
        successor = self._successor
        if successor is not None:  # this socket resumed a detached session: serve it
            await successor.serve_socket(ws)

    async def serve_socket(self, ws: FrameSocket) -> None:
        """Read ``ws``, which :meth:`attach` made this session's socket, until it ends."""
        dropped = True
        try:
            await self._read_loop(ws)
        except ConnectionClosed as exc:
            dropped = exc.rcvd is None
        except ClientGoneError:
            pass
        finally:
            await self._socket_ended(ws, dropped)

    async def _socket_ended(self, ws: FrameSocket, dropped: bool) -> None:
        # Shielded: the turn in flight is settled and the lease released even if this
        # handler is cancelled.
        ending = asyncio.ensure_future(self._after_socket(ws, dropped))
        self.server.track(ending)
        await asyncio.shield(ending)

    async def _end(self) -> None:
        self._closing = True
        self.detached = False
        for _, actions in self.proto.connection_lost():
            self.execute(actions)  # every pending tool call of a live turn is abandoned
        self._wake.set()
        if self._worker is not None:
            await asyncio.wait({self._worker})
        for task in list(self._tasks):
            task.cancel()
        try:
            await self._release()
        finally:
            self.ended.set()
            self.server.forget(self)

    async def _read_loop(self, ws: FrameSocket) -> None:
        idle_timeout = self.config.idle_timeout
        while not self._closing and ws is self.ws:
            try:
                async with asyncio.timeout(idle_timeout):
                    text = await ws.recv()
            except TimeoutError:
                if self.proto.current() is not None:
                    continue
                logger.info("closing idle connection after %g s", idle_timeout)
                with contextlib.suppress(ClientGoneError):
                    await self._send_text(self.proto.close())
                await self._close_socket(1000, "idle")
                return
            for event in self.proto.receive(text):
                await self._dispatch(event)
                if self._closing or ws is not self.ws:  # a closed socket: recv() says how
                    return

    async def _dispatch(self, event: ServerEvent) -> None:
        if isinstance(event, ToolResultReceived):
            future = self._tool_waiters.get(event.call_id)
            if future is not None and not future.done():
                future.set_result(event.result)
        elif isinstance(event, TurnReceived):
            if self._stored is not None and event.turn.turn_id is not None:
                frames = self._stored.answer(event.turn.turn_id)
                if frames is not None:  # it ran already: answered from the store
                    self.execute(event.turn.process(Answered(frames)))
            self._wake.set()
        elif isinstance(event, TurnDuplicate):
            logger.debug("turn %s is already the session's: not run twice", event.turn_id)
        elif isinstance(event, AckReceived):
            self.replay.buffer.ack(event.seq)
        elif isinstance(event, InterruptReceived):
            self.execute(list(event.actions))
            self._wake.set()
        elif isinstance(event, PingReceived):
            await self._send_text(event.pong)
        elif isinstance(event, InitReceived):
            await self._open_session(event.options)
        elif isinstance(event, ControlReceived):
            await self._control(event.action)
        elif isinstance(event, TurnRejected):
            await self.send_error(event.error)
        elif isinstance(event, FrameRejected):
            if event.fatal:
                await self._fail(event.error)
            else:
                await self.send_error(event.error)

    async def _control(self, action: str) -> None:
        if action == "end_input":
            self._wake.set()  # the worker closes once the queued turns are done
        elif action == "close":
            # Closing mid-turn still ends the turn with its result (section 4); turns still
            # queued never start.
            self._closing = True
            self.execute(list(self.proto.interrupt().actions))
            self._wake.set()
            if self._worker is not None:
                await asyncio.wait({self._worker})
            await self._close_socket(1000, "closed by client")

    # -- sessions ------------------------------------------------------------------------------

    async def _open_session(self, requested: SessionOptions) -> None:
        lease_wait = None
        if requested.last_seq is not None and requested.session_id and self.proto.sequenced:
            if await self._resume(requested.session_id, requested.last_seq):
                return
            # Not replayed: the session opens from the store; its turn may still be running
            # on another node, whose lease it waits for (section 10).
            lease_wait = self.config.reconnect_grace
        try:
            opened = await open_session(self.server, self.claims, requested, lease_wait=lease_wait)
        except ChuckyError as exc:
            await self._fail(exc)
            return
        if lease_wait is not None:
            self._stored = StoredTurns(opened.record)
        self.opened = opened
        self.session, self.options, self.catalog = opened.record, opened.options, opened.catalog
        self._wake.set()
        info = opened.info()
        if self.proto.sequenced:  # what is kept for a resume (section 10)
            config = self.config
            info["resume"] = {
                "graceSeconds": config.reconnect_grace,
                "replayFrames": config.replay_frames,
                "replayBytes": config.replay_bytes,
            }
        await self._send_text(self.proto.session_info(info))

    async def _release(self) -> None:
        opened = self.opened
        if opened is None:
            return
        store = self.server.store
        try:
            opened.record.state = "idle"
            await store.save_session(opened.record)
        except SessionNotFoundError:  # deleted with its project (chucky project delete)
            logger.info("session %s was deleted: not saved", opened.record.session_id)
        except ChuckyError:
            logger.exception("could not save session %s", opened.record.session_id)
        finally:
            try:
                await store.release_lease(opened.lease)
            except ChuckyError:
                logger.exception("could not release the lease of %s", opened.record.session_id)
            finally:
                self.opened = None

    # -- turns ---------------------------------------------------------------------------------

    def settings(self, overrides: SessionOptions | None) -> TurnSettings:
        """The options in force for one turn (the turn runner's host)."""
        assert self.opened is not None
        return self.opened.turn_settings(self.config, overrides)

    def fallback_route(self, settings: TurnSettings) -> Route | None:
        """The route of the session's ``fallbackModel``; ``None`` if unset or not served."""
        name = settings.fallback_model
        if not name or name == settings.model:
            return None
        try:
            return self.server.router.resolve(name)
        except ChuckyError:
            logger.info("fallback model %r is not served here; no fallback", name[:100])
            return None

    async def _serve_turns(self) -> None:
        """The turn worker: serves the turns in order until the connection ends."""
        proto = self.proto
        while True:
            self._wake.clear()
            turn = proto.current()
            if turn is not None and turn.state is TurnState.ENDING:
                await self._deliver_unstarted(turn)  # ended before it started
                continue
            if self._closing:
                return  # a close, or the socket is gone: queued turns never start
            if turn is None:
                if proto.draining:
                    return
                if proto.state is ServerState.ENDING:  # end_input: the queued turns are done
                    with contextlib.suppress(ClientGoneError):
                        await self._send_text(proto.close())
                    self._closing = True
                    await self._close_socket(1000, "end of input")
                    return
            elif self.session is not None:
                runner = TurnRunner(self, turn, self.session)
                self._runner = runner
                try:
                    await runner.serve()
                finally:
                    self._runner = None
                continue
            await self._wake.wait()

    async def _deliver_unstarted(self, turn: Turn) -> None:
        if self.session is None:  # the session never opened: nobody to answer
            self.execute(turn.process(Ended()))
            return
        await deliver(self, turn, None, self.session)

    # -- shutdown ------------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Server shutdown: no new turns, queued ones refused (in order, after the running
        one's end); the running turn has ``grace`` seconds to finish, then it is stopped and
        still ends with its ``result``. Then the socket closes with 1001 (going away). Returns
        within ``grace`` + :data:`DRAIN_FINAL` seconds, whatever the client does."""
        self.proto.drain()
        self._wake.set()
        worker = self._worker
        if worker is not None:
            await asyncio.wait({worker}, timeout=grace)
        final = time.monotonic() + DRAIN_FINAL

        def left() -> float:
            return max(0.1, final - time.monotonic())

        self.execute(self.proto.drain_expired())
        # The last frames get what is left of the final seconds, not a full write timeout.
        self._write_timeout = left()
        if worker is not None:
            await asyncio.wait({worker}, timeout=left())
            if not worker.done():
                self._abort("the server is shutting down")
                await asyncio.wait({worker}, timeout=left())
        self._closing = True
        self._attached.set()  # a session waiting, detached, for its client: end it now
        self._write_timeout = left()
        with contextlib.suppress(ClientGoneError):
            await self._send_text(self.proto.close())
        await self._close_socket(1001, "server shutting down", left())
