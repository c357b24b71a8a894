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
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..errors import ChuckyError, RateLimitError, SessionError
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
from .budget import Settlement, UserBudget
from .catalog import ClientTool, ToolCatalog
from .routing import Route
from .sessions import OpenSession, open_session
from .store import Reservation, SessionRecord, new_id

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["Connection", "FrameSocket"]

logger = logging.getLogger("chucky.server")

CLOSE_POLICY = 1008


class FrameSocket(Protocol):
    """What a connection needs of its socket: a websockets ``ServerConnection``, or the
    in-process socket of an HTTP ``POST /prompt``."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str | bytes, *, text: bool | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Connection:
    """Serves one authenticated socket until it closes."""

    def __init__(self, server: ChuckyServer, ws: FrameSocket, claims: TokenClaims) -> None:
        self.server = server
        self.config = server.config
        self.ws = ws
        self.claims = claims
        self.budget = UserBudget(
            server.store, claims, server.budget_settings, node_id=server.node_id
        )
        self.proto = ServerProtocol(max_invalid_frames=self.config.max_invalid_frames)
        self.opened: OpenSession | None = None
        self.session: SessionRecord | None = None
        self.options = SessionOptions()
        self.catalog = ToolCatalog((), ())
        self._turns: asyncio.Queue[TurnReceived | None] = asyncio.Queue()
        self._tool_waiters: dict[str, asyncio.Future[ToolResultPayload]] = {}
        self._turn: tuple[AgentTurn, asyncio.Task[Any]] | None = None
        self._interrupts = 0
        self._last_sent = time.monotonic()
        self._closing = False
        self._draining = False
        self._out_of_compute = False
        self._compute: tuple[list[Reservation], float] | None = None
        self._idle = asyncio.Event()  # set while no turn is running or being reported
        self._idle.set()

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed (no more frames are processed), or its
        socket already is."""
        state = getattr(self.ws, "state", State.OPEN)
        return self._closing or state is not State.OPEN

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
        self.server.metrics.error_sent(error.code or "INTERNAL_ERROR")
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
        metrics = self.server.metrics
        try:
            await self._send_text(self.proto.tool_call(call_id, tool.name, arguments))
            async with asyncio.timeout(self.config.tool_timeout):
                result = await future
            metrics.tool_called("error" if result.is_error else "ok")
            return result
        except TimeoutError:
            logger.info("tool call %s (%s) timed out", call_id, tool.name)
            metrics.tool_called("timeout")
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
            self._closing = True
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            for future in self._tool_waiters.values():
                future.cancel()
            await self._release()

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
        if self._draining:
            await self._send_error(
                ChuckyError(
                    "Session closed: the server is shutting down; the turn did not run",
                    code="SESSION_ERROR",
                    details={"reason": "server_shutdown"},
                )
            )
            return
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

    async def _open_session(self, requested: SessionOptions) -> None:
        try:
            opened = await open_session(self.server, self.claims, requested)
        except ChuckyError as exc:
            await self._fail(exc)
            return
        self.opened = opened
        self.session, self.options, self.catalog = opened.record, opened.options, opened.catalog
        await self._send_text(self.proto.session_info(opened.info()))

    async def _release(self) -> None:
        opened = self.opened
        if opened is None:
            return
        store = self.server.store
        try:
            opened.record.state = "idle"
            await store.save_session(opened.record)
        finally:
            try:
                await store.release_lease(opened.lease)
            finally:
                self.opened = None

    # -- turns ---------------------------------------------------------------------------------

    def _settings(self, overrides: SessionOptions | None) -> TurnSettings:
        assert self.opened is not None and self.session is not None
        options = self.options
        if overrides is not None:
            # A prompt's per-turn options go through the token's policy like the init's.
            options = self.opened.policy.apply(
                options.merged(overrides),
                default_model=self.session.model or self.config.default_model,
            )
        model = options.model or self.session.model or self.config.default_model
        output_format = options.output_format
        return TurnSettings(
            model=model,
            system_prompt=options.system_prompt_text(),
            max_turns=options.max_turns if options.max_turns is not None else self.config.max_turns,
            max_tokens=min(options.max_tokens or self.config.max_tokens, self.config.max_tokens),
            include_partial_messages=bool(options.include_partial_messages),
            max_budget_usd=options.max_budget_usd,
            permission_mode=options.permission_mode or "default",
            output_schema=output_format.schema_ if output_format is not None else None,
            max_structured_output_retries=self.config.max_structured_output_retries,
            params=options.inference_params(),
            fallback_model=options.fallback_model,
            tool_choice=options.tool_choice,
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

    def _fallback_route(self, settings: TurnSettings) -> Route | None:
        """The route of the session's ``fallbackModel``; ``None`` if unset or not served."""
        name = settings.fallback_model
        if not name or name == settings.model:
            return None
        try:
            return self.server.router.resolve(name)
        except ChuckyError:
            logger.info("fallback model %r is not served here; no fallback", name[:100])
            return None

    async def _admit(self) -> Reservation:
        """The checks before a turn runs: the rate limit, then the compute budget.

        Raises:
            RateLimitError: the user started too many turns this minute.
            BudgetExceededError: no compute left in the window.
        """
        config, claims = self.config, self.claims
        now = time.time()
        if config.turns_per_minute is not None:
            decision = await self.server.store.count_turn(
                claims.iss, claims.sub, now=now, limit=config.turns_per_minute
            )
            if not decision.allowed:
                retry = max(1, math.ceil(decision.retry_after))
                raise RateLimitError(
                    f"Rate limit exceeded: {config.turns_per_minute} turns per minute; "
                    f"retry in {retry} s",
                    details={
                        "reason": "rate_limited",
                        "retryAfter": retry,
                        "limit": config.turns_per_minute,
                    },
                )
        grant = await self.budget.reserve_compute(now, first=True)
        assert grant is not None
        return grant

    async def _run_turn(self, turn: TurnReceived) -> None:
        session = self.session
        assert session is not None
        try:
            settings = self._settings(turn.options)
            route = self.server.router.resolve(settings.model)
            fallback = self._fallback_route(settings)
            compute = [await self._admit()]
        except ChuckyError as exc:
            await self._send_error(exc)
            return
        agent = AgentTurn(
            session=session,
            content=turn.content,
            settings=settings,
            catalog=self.catalog,
            route=route,
            io=self,
            budget=self.budget,
            fallback=fallback,
        )
        interrupts = self._interrupts
        started = time.monotonic()
        self._compute = (compute, started)
        task = asyncio.create_task(agent.run(), name=f"chucky-turn-{session.session_id}")
        self._turn = (agent, task)
        self._idle.clear()
        session.state = "running"
        try:
            try:
                await self._supervise(task, compute, started)
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._turn = None
                leftover = agent.take_settlements()
                if leftover or self._compute is not None:
                    # The turn did not reach its result (interrupted, failed, socket gone):
                    # stored and settled here, before the client hears of the end.
                    session.last_activity_at = time.time()
                    session.state = "idle"
                    await self._checkpoint_quietly([*leftover, *self._compute_settlements()])
            await self._report(agent, task, interrupted=self._interrupts != interrupts)
        except ConnectionClosed:
            return
        finally:
            self._idle.set()

    def _compute_settlements(self) -> list[Settlement]:
        """The running turn's wall-clock time as ledger settlements (once)."""
        turn, self._compute = self._compute, None
        if turn is None:
            return []
        grants, started = turn
        settlements = self.budget.compute_settlements(list(grants), time.monotonic() - started)
        self.server.metrics.compute_used(self.claims.iss, sum(a for _, a in settlements) / 1000)
        return settlements

    async def turn_ending(self, settlements: list[Settlement]) -> None:
        """The agent is about to send the ``result`` (its :class:`TurnIO`): one transaction
        stores the session and settles the turn's calls and compute."""
        assert self.session is not None
        self.session.last_activity_at = time.time()
        self.session.state = "idle"
        await self.checkpoint([*settlements, *self._compute_settlements()])

    async def _supervise(
        self, task: asyncio.Task[Any], compute: list[Reservation], started: float
    ) -> None:
        """Wait for the turn; keep the client informed and the compute grant ahead of it."""
        interval = self.config.status_interval
        while True:
            granted = sum(grant.amount for grant in compute) / 1000
            left = granted - (time.monotonic() - started)
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(interval / 2, left)))
            if done:
                return
            if time.monotonic() - started >= granted:
                if self._compute is None:  # the turn is ending; its time is settled
                    await asyncio.wait({task})
                    return
                more = await self.budget.reserve_compute(time.time(), first=False)
                if more is None:
                    self._out_of_compute = True
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return
                compute.append(more)
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
        metrics = self.server.metrics
        metrics.spent(self.claims.iss, agent.cost_microdollars)
        if task.cancelled():
            if self._out_of_compute:
                self._out_of_compute = False
                result = agent.result("error_during_execution", errors=["compute budget exhausted"])
            elif interrupted:
                reason = "server shutting down" if self._draining else "interrupted"
                result = agent.result("error_during_execution", errors=[reason])
            else:
                return
            metrics.turn_finished(result.subtype)
            await self.send(result.to_wire())
            return
        exc = task.exception()
        if exc is None:
            metrics.turn_finished(task.result().subtype)
            return
        if isinstance(exc, ConnectionClosed):
            return
        if isinstance(exc, ChuckyError):
            await self._send_error(exc)
            return
        logger.error("turn failed", exc_info=exc)
        await self._send_error(
            ChuckyError("Internal error: the turn failed", code="INTERNAL_ERROR")
        )

    # -- persistence ---------------------------------------------------------------------------

    async def checkpoint(self, settlements: list[Settlement]) -> None:
        """Write the session's new messages and settle ``settlements`` (the agent's
        :class:`TurnIO`)."""
        if self.session is None:
            return
        store = self.server.store
        if settlements:
            await store.settle_and_save(self.session, settlements, time.time())
        else:
            await store.save_session(self.session)

    async def _checkpoint_quietly(self, settlements: list[Settlement]) -> None:
        try:
            await self.checkpoint(settlements)
        except ChuckyError:
            # Unsettled reservations expire and are charged in full by recover().
            logger.exception("could not save session")

    # -- shutdown ------------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Server shutdown: no new turns; the running one has ``grace`` seconds to finish,
        then it is interrupted (and still ends with its ``result``). Then the socket closes
        with 1001 (going away)."""
        self._draining = True
        for turn in self._queued_turns():
            await self._send_error(
                ChuckyError(
                    "Session closed: the server is shutting down; the turn did not run",
                    code="SESSION_ERROR",
                    details={"reason": "server_shutdown"},
                )
            )
            del turn
        if self._turn is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        self._closing = True
        self._interrupt()
        await self._idle.wait()
        with contextlib.suppress(ConnectionClosed):
            await self._send_text(self.proto.close())
        await self.ws.close(1001, "server shutting down")

    def _queued_turns(self) -> list[TurnReceived]:
        turns: list[TurnReceived] = []
        while not self._turns.empty():
            turn = self._turns.get_nowait()
            if turn is not None:
                turns.append(turn)
        return turns
