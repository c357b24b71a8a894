"""One client connection: the asyncio shell around :class:`ServerProtocol`.

Two tasks per connection:

* the **reader** (the websockets handler itself) decodes every frame through the protocol state
  machine and acts at once: pongs, tool results, interrupts, rejected frames. Turns go into a
  queue, so a turn that arrives while the session is being set up, or while another turn runs,
  is never dropped (PROTOCOL.md sections 2.3 and 4).
* the **turn worker** takes turns from the queue one at a time and runs each in its own task
  (:class:`~chucky.server.agent.AgentTurn`), so an ``interrupt`` can cancel it and still
  answer with a ``result``. While a turn runs, a ``system``/``status`` frame goes out whenever
  the connection has been silent for ``status_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import ChuckyError, SessionError, SessionNotFoundError, ValidationError
from ..options import SessionOptions
from ..protocol.frames import ToolResultPayload, encode
from ..protocol.server import (
    ControlReceived,
    FrameRejected,
    InitReceived,
    PingReceived,
    ServerEvent,
    ServerProtocol,
    ToolResultReceived,
    TurnReceived,
)
from ..tokens import TokenClaims
from .agent import AgentTurn, TurnSettings
from .catalog import ClientTool, ToolCatalog
from .store import SessionRecord, new_id

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["Connection"]

logger = logging.getLogger("chucky.server")

CLOSE_POLICY = 1008


class Connection:
    """Serves one authenticated WebSocket until it closes."""

    def __init__(self, server: ChuckyServer, ws: ServerConnection, claims: TokenClaims) -> None:
        self.server = server
        self.config = server.config
        self.ws = ws
        self.claims = claims
        self.proto = ServerProtocol(max_invalid_frames=self.config.max_invalid_frames)
        self.session: SessionRecord | None = None
        self.options = SessionOptions()
        self.catalog = ToolCatalog((), ())
        self._turns: asyncio.Queue[TurnReceived | None] = asyncio.Queue()
        self._tool_waiters: dict[str, asyncio.Future[ToolResultPayload]] = {}
        self._turn: tuple[AgentTurn, asyncio.Task[Any]] | None = None
        self._interrupts = 0
        self._last_sent = time.monotonic()
        self._closing = False
        self._idle = asyncio.Event()  # set while no turn is running or being reported
        self._idle.set()

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed (no more frames are processed)."""
        return self._closing

    # -- sending -------------------------------------------------------------------------------

    async def _send_text(self, text: str) -> None:
        self._last_sent = time.monotonic()
        # A lone surrogate (a client may send "\\udc00" in any string) cannot be UTF-8: written
        # as its JSON escape it decodes back to the same string, and the frame stays valid.
        await self.ws.send(text.encode("utf-8", "backslashreplace"), text=True)

    async def send(self, frame: Mapping[str, Any]) -> None:
        """Send one frame (the agent's :class:`~chucky.server.agent.TurnIO`)."""
        await self._send_text(encode(frame))

    async def _send_error(self, error: ChuckyError) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._send_text(self.proto.error(error))

    async def _fail(self, error: ChuckyError, code: int = CLOSE_POLICY) -> None:
        """A fatal error: the error frame, then the close (PROTOCOL.md section 4)."""
        self._closing = True
        await self._send_error(error)
        await self.ws.close(code, error.message[:120])

    # -- tools ---------------------------------------------------------------------------------

    async def call_tool(self, tool: ClientTool, call_id: str, arguments: Any) -> ToolResultPayload:
        """Send a ``tool_call`` and wait for its ``tool_result`` (or the timeout)."""
        future: asyncio.Future[ToolResultPayload] = asyncio.get_running_loop().create_future()
        self._tool_waiters[call_id] = future
        try:
            await self._send_text(self.proto.tool_call(call_id, tool.name, arguments))
            async with asyncio.timeout(self.config.tool_timeout):
                return await future
        except TimeoutError:
            logger.info("tool call %s (%s) timed out", call_id, tool.name)
            return ToolResultPayload(
                content=[
                    {
                        "type": "text",
                        "text": f"Tool {tool.name} timed out after "
                        f"{self.config.tool_timeout:g} s without a result from the client",
                    }
                ],
                isError=True,
            )
        finally:
            self._tool_waiters.pop(call_id, None)
            self.proto.abandon(call_id)

    # -- the reader ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection: ``ready``, then frames until the socket closes."""
        await self._send_text(self.proto.ready())
        worker = asyncio.create_task(self._turn_worker(), name="chucky-turn-worker")
        try:
            await self._read_loop()
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            for future in self._tool_waiters.values():
                future.cancel()
            if self.session is not None:
                self.server.release_session(self.session.session_id, self)
                await self.server.store.save(self.session)

    async def _read_loop(self) -> None:
        idle_timeout = self.config.idle_timeout
        while not self._closing:
            try:
                async with asyncio.timeout(idle_timeout):
                    text = await self.ws.recv()
            except TimeoutError:
                if self._turn is not None or not self._turns.empty():
                    continue
                logger.info("closing idle connection after %g s", idle_timeout)
                await self._send_text(self.proto.close())
                await self.ws.close(1000, "idle")
                return
            for event in self.proto.receive(text):
                await self._dispatch(event)
                if self.closing:
                    return

    async def _dispatch(self, event: ServerEvent) -> None:
        if isinstance(event, ToolResultReceived):
            future = self._tool_waiters.get(event.call_id)
            if future is not None and not future.done():
                future.set_result(event.result)
        elif isinstance(event, TurnReceived):
            await self._accept_turn(event)
        elif isinstance(event, PingReceived):
            await self._send_text(event.pong)
        elif isinstance(event, InitReceived):
            await self._open_session(event.options)
        elif isinstance(event, ControlReceived):
            await self._control(event.action)
        elif isinstance(event, FrameRejected):
            if event.fatal:
                await self._fail(event.error)
            else:
                await self._send_error(event.error)

    async def _accept_turn(self, turn: TurnReceived) -> None:
        if self.session is None:
            return  # the session could not be opened; the connection is closing
        busy = self._turn is not None or not self._turns.empty()
        if busy and self.config.busy_policy == "reject":
            await self._send_error(
                SessionError(
                    "Session busy: a turn is already running on this session",
                    details={"reason": "session_busy"},
                )
            )
            return
        self._turns.put_nowait(turn)

    async def _control(self, action: str) -> None:
        if action == "interrupt":
            self._interrupt()
        elif action == "end_input":
            self._turns.put_nowait(None)
        elif action == "close":
            self._closing = True
            # Closing mid-turn still ends the turn with its result (section 4); turns still
            # queued never start (the worker checks ``_closing``).
            self._interrupt()
            await self._idle.wait()
            await self.ws.close(1000, "closed by client")

    def _interrupt(self) -> None:
        if self._turn is not None and not self._turn[1].done():
            self._interrupts += 1
            self._turn[1].cancel()

    # -- sessions ------------------------------------------------------------------------------

    async def _open_session(self, options: SessionOptions) -> None:
        server = self.server
        project, user = self.claims.iss, self.claims.sub
        now = time.time()
        claimed: SessionRecord | None = None
        try:
            catalog = ToolCatalog.from_options(options)
            record: SessionRecord | None
            if options.session_id:
                record = await server.store.get(options.session_id, project, user)
                if record is None:
                    raise SessionNotFoundError(
                        f"Session not found: {options.session_id:.200}",
                        details={"reason": "session_not_found"},
                    )
                if not options.fork_session:
                    # Claim before cutting: a session live on another socket stays untouched.
                    server.claim_session(record.session_id, self)
                    claimed = record
                record = await self._fork_or_cut(record, options, now)
            elif options.continue_session:
                record = await server.store.latest(project, user)
            else:
                record = None
            if record is None:
                model = options.model or self.config.default_model
                record = await server.store.create(project, user, model, now)
            if record is not claimed:
                server.claim_session(record.session_id, self)
        except ChuckyError as exc:
            if claimed is not None:
                server.release_session(claimed.session_id, self)
            await self._fail(exc)
            return
        if options.model:
            # The session's model is the init's; a prompt's per-turn model never sticks to it.
            record.model = options.model
        self.session, self.options, self.catalog = record, options, catalog
        await self._send_text(
            self.proto.session_info(
                {
                    "sessionId": record.session_id,
                    "model": record.model,
                    "tools": catalog.names,
                    "messageCount": len(record.transcript),
                    "createdAt": _iso(record.created_at),
                    "lastActivityAt": _iso(record.last_activity_at),
                }
            )
        )

    async def _fork_or_cut(
        self, record: SessionRecord, options: SessionOptions, now: float
    ) -> SessionRecord:
        transcript = record.transcript
        if options.resume_session_at:
            cut = next(
                (i for i, m in enumerate(transcript) if m.get("uuid") == options.resume_session_at),
                None,
            )
            if cut is None:
                raise ValidationError(
                    f"Invalid options: resumeSessionAt {options.resume_session_at!r:.200} is not a "
                    "message of this session",
                    details={"reason": "invalid_options"},
                )
            transcript = transcript[: cut + 1]
        if options.fork_session:
            fork = await self.server.store.create(
                record.project_id, record.user_id, record.model, now
            )
            fork.replace_transcript([dict(m) for m in transcript])
            return fork
        record.replace_transcript(list(transcript))
        return record

    # -- turns ---------------------------------------------------------------------------------

    def _settings(self, overrides: SessionOptions | None) -> TurnSettings:
        options = self.options.merged(overrides) if overrides is not None else self.options
        assert self.session is not None
        model = options.model or self.session.model or self.config.default_model
        output_format = options.output_format
        return TurnSettings(
            model=model,
            system_prompt=options.system_prompt_text(),
            max_turns=options.max_turns or self.config.max_turns,
            max_tokens=self.config.max_tokens,
            include_partial_messages=bool(options.include_partial_messages),
            max_budget_usd=options.max_budget_usd,
            permission_mode=options.permission_mode or "default",
            structured_output=output_format is not None,
        )

    async def _turn_worker(self) -> None:
        while True:
            turn = await self._turns.get()
            if self._closing:  # control close: queued turns are dropped
                return
            if turn is None:  # end_input: the queued turns are done
                await self._send_text(self.proto.close())
                self._closing = True
                await self.ws.close(1000, "end of input")
                return
            await self._run_turn(turn)

    async def _run_turn(self, turn: TurnReceived) -> None:
        session = self.session
        assert session is not None
        settings = self._settings(turn.options)
        route = self.server.router.resolve(settings.model)
        agent = AgentTurn(
            session=session,
            content=turn.content,
            settings=settings,
            catalog=self.catalog,
            route=route,
            io=self,
        )
        interrupts = self._interrupts
        task = asyncio.create_task(agent.run(), name=f"chucky-turn-{session.session_id}")
        self._turn = (agent, task)
        self._idle.clear()
        try:
            try:
                await self._supervise(task)
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._turn = None
                session.last_activity_at = time.time()
            await self._report(agent, task, interrupted=self._interrupts != interrupts)
            await self.server.store.save(session)
        except ConnectionClosed:
            return
        finally:
            self._idle.set()

    async def _supervise(self, task: asyncio.Task[Any]) -> None:
        interval = self.config.status_interval
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval / 2)
            if done:
                return
            if time.monotonic() - self._last_sent >= interval:
                assert self.session is not None
                await self.send(
                    {
                        "type": "system",
                        "subtype": "status",
                        "status": "running",
                        "uuid": new_id(),
                        "session_id": self.session.session_id,
                    }
                )

    async def _report(
        self, agent: AgentTurn, task: asyncio.Task[Any], *, interrupted: bool
    ) -> None:
        if task.cancelled():
            if interrupted:
                result = agent.result("error_during_execution", errors=["interrupted"])
                await self.send(result.to_wire())
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ConnectionClosed):
            return
        if isinstance(exc, ChuckyError):
            await self._send_error(exc)
            return
        logger.error("turn failed", exc_info=exc)
        await self._send_error(
            ChuckyError("Internal error: the turn failed", code="INTERNAL_ERROR")
        )


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
