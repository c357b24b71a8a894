"""Serving one turn: the executor of its :class:`~chucky.protocol.turns.Turn`.

:class:`TurnRunner` carries one turn from ``Start`` to ``Ended``, in the connection's turn
worker:

1. its **work** runs in a task of its own (so that the state machine's :class:`CancelWork`
   can stop it at any ``await``): the admission (:meth:`AgentTurn.start
   <chucky.server.agent.AgentTurn.start>`: rate limit, first compute grant, first call's
   reservation, the user's message, in one transaction), then the agent loop
   (:meth:`AgentTurn.run <chucky.server.agent.AgentTurn.run>`);
2. meanwhile the runner **supervises** it: the compute grant is extended before it runs out
   (``ComputeExhausted`` when the budget has no more), and a ``system``/``status`` frame goes
   out after ``status_interval`` seconds of silence;
3. the way the work ended becomes the machine's event (``LoopEnded``, ``LoopFailed``,
   ``Refused``, ``LoopCancelled``), which fixes the turn's end;
4. the turn's :class:`~chucky.server.account.TurnAccount` **closes** -- shielded, whatever
   happened: every reservation settled, the session saved;
5. the end frame (``result`` or ``error``) is **delivered** if the client is still there, and
   the turn is ``Ended``.

The runner never decides anything about the turn: it executes the actions and reads the end
the machine returns.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from .._redact import redacting_logger
from ..errors import ChuckyError, ConnectionError, InvalidStateError
from ..messages import ResultMessage, SystemMessage, WireModel
from ..protocol.frames import ToolResultPayload
from ..protocol.turns import (
    Admitted,
    ClientGone,
    ComputeExhausted,
    Ended,
    LoopCancelled,
    LoopEnded,
    LoopFailed,
    Refused,
    Start,
    Turn,
    TurnAction,
    TurnEvent,
    TurnState,
)
from ..tokens import TokenClaims
from .account import TurnAccount
from .agent import AgentTurn, TurnSettings
from .budget import UserBudget
from .catalog import ClientTool, ToolCatalog
from .routing import Route
from .store import SessionRecord, StoreError, new_id
from .turn_frames import empty_result

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["ClientGoneError", "TurnHost", "TurnRunner", "client_error", "public_error"]

logger = redacting_logger("chucky.server")


class ClientGoneError(ConnectionError):
    """The client cannot be written to any more: its socket is closed, or it stopped reading
    (the write deadline passed)."""


class TurnHost(Protocol):
    """What a :class:`TurnRunner` needs of its connection (implemented by
    :class:`~chucky.server.connection.Connection`)."""

    server: ChuckyServer
    claims: TokenClaims
    catalog: ToolCatalog
    budget: UserBudget

    async def send_message(self, message: WireModel) -> None:
        """Send an SDK message (raises :class:`ClientGoneError`)."""

    async def send_error(self, error: ChuckyError) -> None:
        """Send an ``error`` frame (raises :class:`ClientGoneError`)."""

    async def send_frame(self, text: str) -> None:
        """Send a frame built already (raises :class:`ClientGoneError`)."""

    async def call_tool(
        self, turn: Turn, tool: ClientTool, call_id: str, arguments: Any
    ) -> ToolResultPayload:
        """Have the client run a tool for ``turn``."""

    def execute(self, actions: list[TurnAction]) -> None:
        """Carry out the actions of a turn's state machine."""

    def settings(self, overrides: Any) -> TurnSettings:
        """The options in force for a turn (its per-turn options through the policy)."""

    def fallback_route(self, settings: TurnSettings) -> Route | None:
        """The route of the session's ``fallbackModel``, if served."""

    @property
    def silent_for(self) -> float:
        """Seconds since the last frame sent."""


class _AgentIO:
    """The agent loop's view of the connection (:class:`~chucky.server.agent.TurnIO`)."""

    __slots__ = ("_host", "_turn")

    def __init__(self, host: TurnHost, turn: Turn) -> None:
        self._host = host
        self._turn = turn

    async def send_message(self, message: WireModel) -> None:
        await self._host.send_message(message)

    async def call_tool(self, tool: ClientTool, call_id: str, arguments: Any) -> ToolResultPayload:
        return await self._host.call_tool(self._turn, tool, call_id, arguments)

    def record(self, event: TurnEvent) -> None:
        self._host.execute(self._turn.process(event))


class TurnRunner:
    """Serves one turn (see the module docstring).

    Args:
        host: The connection.
        turn: The turn, QUEUED.
        session: The session it runs in.
    """

    def __init__(
        self,
        host: TurnHost,
        turn: Turn,
        session: SessionRecord,
    ) -> None:
        self.host = host
        self.turn = turn
        self.session = session
        server = host.server
        self.account = TurnAccount(
            store=server.store,
            budget=host.budget,
            session=session,
            track=server.track,
            defer=server.defer_settlements,
        )
        self.agent: AgentTurn | None = None
        self.work: asyncio.Task[Any] | None = None
        """The turn's admission and agent loop, while they run."""
        self._admitting = True
        self._admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def cancel_work(self) -> None:
        """The machine's :class:`CancelWork`."""
        if self.work is not None and not self.work.done():
            self.work.cancel()

    # -- the turn's life -----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the turn from QUEUED to DONE."""
        turn, host = self.turn, self.host
        host.execute(turn.process(Start()))
        self.work = asyncio.create_task(self._work(), name=f"chucky-turn-{self.session.session_id}")
        try:
            await self._supervise()
        finally:
            if not self.work.done():  # this worker itself is being cancelled
                self.work.cancel()
            await asyncio.wait({self.work})
            for event in self._outcome():
                host.execute(turn.process(event))
            ran = turn.end is None or turn.end.ran
            result = self._result()
            end = None
            if ran and turn.turn_id is not None:  # kept for a client that re-sends the turn
                end = (turn.turn_id, _end_frame(turn, result))
            await self.account.close(ran=ran, end=end)
        self.work = None  # the task and its exception go now, with the frames they hold
        self._count()
        await deliver(host, turn, self.agent, self.session, result)

    def _result(self) -> ResultMessage | None:
        """The turn's ``result``, built once (delivered, and kept with its turn id)."""
        end = self.turn.end
        if end is None or end.subtype is None or end.error is not None:
            return None
        if self.agent is not None:
            return self.agent.result(end.subtype, errors=end.errors)
        return empty_result(self.session.session_id, end.subtype, end.errors)

    async def _work(self) -> Any:
        host, turn = self.host, self.turn
        settings = host.settings(turn.options)
        route = host.server.router.resolve(settings.model)
        fallback = host.fallback_route(settings)
        self.agent = agent = AgentTurn(
            session=self.session,
            content=turn.content,
            settings=settings,
            catalog=host.catalog,
            route=route,
            io=_AgentIO(host, turn),
            account=self.account,
            fallback=fallback,
            turn_id=turn.turn_id,
        )
        await agent.start(turns_per_minute=host.server.config.turns_per_minute)
        host.execute(turn.process(Admitted()))
        self._admitting = False
        self._admitted.set_result(None)
        return await agent.run()

    async def _supervise(self) -> None:
        """Wait for the work; keep its compute grant ahead of it and the client informed."""
        host, turn, account = self.host, self.turn, self.account
        work = self.work
        assert work is not None
        interval = host.server.config.status_interval
        await asyncio.wait({work, self._admitted}, return_when=asyncio.FIRST_COMPLETED)
        while not work.done():
            timeout = interval / 2
            running = turn.state is TurnState.RUNNING
            if running and account.compute_granted:
                timeout = max(0.0, min(timeout, account.compute_granted - account.compute_elapsed))
            await asyncio.wait({work}, timeout=timeout)
            if work.done() or turn.state is not TurnState.RUNNING:
                continue
            out_of_time = account.compute_elapsed >= account.compute_granted
            if out_of_time and not await account.extend_compute():
                host.execute(turn.process(ComputeExhausted()))
                continue
            if host.silent_for >= interval:
                status = SystemMessage.model_validate(
                    {
                        "subtype": "status",
                        "status": "running",
                        "uuid": new_id(),
                        "session_id": self.session.session_id,
                    }
                )
                try:
                    await host.send_message(status)
                except ClientGoneError:
                    host.execute(turn.process(ClientGone()))

    def _outcome(self) -> list[TurnEvent]:
        """The machine's events for the way the work ended."""
        work = self.work
        assert work is not None and work.done()
        if work.cancelled():
            if self.turn.state is TurnState.STOPPING:
                return [LoopCancelled()]
            return [ClientGone(), LoopCancelled()]  # cancelled from outside: nobody to tell
        exc = work.exception()
        if exc is None:
            outcome = work.result()
            return [LoopEnded(outcome.subtype, outcome.errors)]
        if isinstance(exc, ClientGoneError):
            return [ClientGone(), LoopCancelled()]
        error = _detached(client_error(exc))
        # Refused before it started (rate limit, budget, unknown model): nothing was stored.
        refused = self._admitting or (self.agent is not None and not self.agent.started)
        return [Refused(error)] if refused else [LoopFailed(error)]

    def _count(self) -> None:
        metrics, project = self.host.server.metrics, self.host.claims.iss
        if self.agent is not None:
            metrics.spent(project, self.agent.cost_microdollars)
        metrics.compute_used(project, self.account.compute_ms / 1000)


def client_error(exc: BaseException) -> ChuckyError:
    """What the client is told of a failure; internal details (a database URL, a file path, a
    driver's message) are logged, never sent."""
    if isinstance(exc, StoreError):
        logger.error("turn failed: the store failed", exc_info=exc)
        return ChuckyError(
            "Internal error: the server could not reach its database", code="INTERNAL_ERROR"
        )
    if isinstance(exc, ChuckyError) and exc.code and not isinstance(exc, InvalidStateError):
        return exc
    logger.error("turn failed", exc_info=exc)
    return ChuckyError("Internal error: the turn failed", code="INTERNAL_ERROR")


def public_error(error: ChuckyError) -> ChuckyError:
    """``error`` as a client may see it: a store failure becomes an internal error (its
    details -- a database URL, a path -- are logged, never sent); any other error is itself."""
    return client_error(error) if isinstance(error, StoreError) else error


def _detached(error: ChuckyError) -> ChuckyError:
    """``error`` without its traceback and chained causes (logged already): kept in the turn's
    end, a traceback would hold the frames of the failed work -- and the user's message, up to
    16 MiB -- until the garbage collector finds the cycle."""
    error.__traceback__ = None
    error.__cause__ = error.__context__ = None
    return error


def _end_frame(turn: Turn, result: ResultMessage | None) -> dict[str, Any]:
    """The turn's end as a frame: its ``result``, or its ``error`` as a client sees it."""
    if result is not None:
        return result.to_wire()
    end = turn.end
    assert end is not None and end.error is not None
    return {"type": "error", "payload": public_error(end.error).to_payload()}


async def deliver(
    host: TurnHost,
    turn: Turn,
    agent: AgentTurn | None,
    session: SessionRecord,
    result: ResultMessage | None = None,
) -> None:
    """Send the turn's end (its ``result`` or ``error``; the frames of a turn answered from
    the store) if its client is still there, then mark it ``Ended``."""
    end = turn.end
    assert end is not None and turn.state is TurnState.ENDING
    if end.deliver:
        try:
            if end.frames:
                for frame in end.frames:
                    await host.send_frame(frame)
            elif end.error is not None:
                await host.send_error(end.error)
            else:
                assert end.subtype is not None
                if result is None and agent is not None:
                    result = agent.result(end.subtype, errors=end.errors)
                elif result is None:
                    result = empty_result(session.session_id, end.subtype, end.errors)
                host.server.metrics.turn_finished(result.subtype)
                await host.send_message(result)
        except ClientGoneError:
            host.execute(turn.process(ClientGone()))
    host.execute(turn.process(Ended()))
