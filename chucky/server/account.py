"""What one turn holds in the store, owned by the turn and settled exactly once.

A :class:`TurnAccount` is the narrow store interface of the turn engine: the turn's start
(rate limit, first compute grant, the first model call's reservation, the user's message), every
later reservation (the next model call, with the settlements and messages of the ones before;
compute grants) and its close (settle everything still open, save the session). Each is one
:meth:`~chucky.server.store.Store.write_turn`, one transaction: a plain ``echo`` turn costs two,
its start and its close. Nothing else of a turn writes to the store.

The promise: whatever ends a turn -- its result, an interrupt, a ``close``, a dropped socket, an
error, a shutdown, the compute budget -- every reservation it took is settled exactly once, at
the cost its ``result`` reports (a model call at what it used, capped at its reservation; a call
reserved but never made at 0; compute at the turn's wall-clock time), and the user's
``reserved`` goes back to 0. How:

* **Created and recorded together.** Each store operation runs in a task of its own, which no
  caller's cancellation reaches (``asyncio.shield``); the reservation is recorded in the account
  by that task, right after the store returns it. A caller cancelled meanwhile (an interrupt
  landing in the middle of a reservation) gets ``CancelledError``, and the reservation is the
  account's all the same.
* **Settled in a shielded close.** :meth:`close` waits for the operations still in flight, then
  settles and saves in one transaction, in its own task: the cancelled turn awaits it through a
  shield, and the server waits for every such task before it closes the store.
* **Message positions cannot collide.** A session's writes are serialised by the account; a save
  marks what it wrote only once its transaction committed (in the store, inside that task), so
  the next save starts exactly where the last committed one ended.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

from .._redact import redacting_logger
from ..errors import ChuckyError, RateLimitError, SessionNotFoundError
from .budget import CallGrant, CallPlan, Settlement, UserBudget
from .pricing import ModelPrice
from .store import Reservation, ReserveRequest, SessionRecord, Store, TurnWrite

__all__ = ["TurnAccount"]

logger = redacting_logger("chucky.server.account")

_T = TypeVar("_T")

Track = Callable[["asyncio.Task[Any]"], None]
"""Registers a task the server must wait for before it closes the store."""

Defer = Callable[[list[Settlement]], None]
"""Takes settlements the store refused (it is down): the server retries them."""

_SETTLE_ATTEMPTS = (0.0, 0.1, 0.5)  # delays before each attempt at the closing transaction


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _rate_limited(turns_per_minute: int, retry_after: float) -> RateLimitError:
    retry = max(1, math.ceil(retry_after))
    return RateLimitError(
        f"Rate limit exceeded: {turns_per_minute} turns per minute; retry in {retry} s",
        details={"reason": "rate_limited", "retryAfter": retry, "limit": turns_per_minute},
    )


class TurnAccount:
    """The store side of one turn (see the module docstring).

    Args:
        store: The server's store.
        budget: The user's budget (ledger keys, limits, the reservation arithmetic).
        session: The session the turn runs in.
        track: Called with every task the account starts (the server waits for them).
        defer: Called with the settlements of a close the store kept refusing (the server
            retries them with its heartbeat).
        clock: Monotonic seconds (compute time).
        wall_clock: Unix seconds (the store's times).
    """

    def __init__(
        self,
        *,
        store: Store,
        budget: UserBudget,
        session: SessionRecord,
        track: Track,
        defer: Defer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.budget = budget
        self.session = session
        self._track = track
        self._defer = defer
        self._clock = clock
        self._wall_clock = wall_clock
        self._open: dict[str, Reservation] = {}  # reserved, not settled yet
        self._charges: dict[str, int] = {}  # finished calls: reservation id -> actual cost
        self._compute: list[Reservation] = []
        self._compute_started: float | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._writes = asyncio.Lock()
        self._closed: asyncio.Task[None] | None = None
        self.compute_ms = 0
        """Compute charged when the account closed (milliseconds)."""

    # -- task ownership ------------------------------------------------------------------------

    async def _owned(self, work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``work`` in a task of its own and wait for it; a cancelled caller does not
        cancel it (the account sees its outcome all the same)."""
        task = asyncio.ensure_future(work())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        # A caller cancelled meanwhile never reads its outcome: the account has it.
        task.add_done_callback(_retrieved)
        self._track(task)
        return await asyncio.shield(task)

    # -- admission -----------------------------------------------------------------------------

    async def start(
        self, *, turns_per_minute: int | None, call: CallPlan | None
    ) -> CallGrant | None:
        """The turn's start, one transaction, all or nothing: the rate limit, the first compute
        grant, the first model call's reservation (``call``; ``None``: no call is planned) and
        the session's new messages (the user's, appended by the caller).

        Returns:
            The first call's grant (``None`` without ``call``).

        Raises:
            RateLimitError: the user started too many turns this minute.
            BudgetExceededError: no compute left in the window, or the window cannot pay for
                the first call. Nothing was written, and the user's message is taken back.
        """

        async def work() -> CallGrant | None:
            async with self._writes:
                budget = self.budget
                now = self._wall_clock()
                key = await budget.key(now)
                reserve = [budget.compute_request(key)]
                if call is not None and call.want > 0:
                    reserve.append(budget.call_request(key, call))
                written = await self.store.write_turn(
                    self._turn_write(now, reserve=reserve, rate_limit=turns_per_minute)
                )
                if written.refused:
                    self.session.drop_last()  # the user's message: refused, never stored
                if written.rate is not None and not written.rate.allowed:
                    assert turns_per_minute is not None
                    raise _rate_limited(turns_per_minute, written.rate.retry_after)
                if written.denied is not None:
                    assert written.usage is not None
                    raise budget.exceeded(written.denied.kind, written.usage, now)
                self._adopt_compute(written.grants[0])
                if call is None:
                    return None
                return self._adopt_call(call, written.grants[1:])

        return await self._owned(work)

    def _turn_write(
        self,
        now: float,
        *,
        reserve: list[ReserveRequest],
        settle: list[Settlement] | None = None,
        rate_limit: int | None = None,
        save: bool = True,
    ) -> TurnWrite:
        return TurnWrite(
            now=now,
            ttl=self.budget.settings.reservation_ttl,
            node_id=self.budget.node_id,
            rate_limit=rate_limit,
            reserve=reserve,
            settle=settle or [],
            session=self.session if save else None,
        )

    def _adopt_compute(self, grant: Reservation) -> None:
        self._open[grant.reservation_id] = grant
        self._compute.append(grant)
        if self._compute_started is None:
            self._compute_started = self._clock()

    def _adopt_call(self, plan: CallPlan, grants: Sequence[Reservation]) -> CallGrant:
        reservation = grants[0] if grants else None
        if reservation is not None:
            self._open[reservation.reservation_id] = reservation
        return UserBudget.call_grant(plan, reservation)

    # -- compute -------------------------------------------------------------------------------

    @property
    def compute_granted(self) -> float:
        """Seconds of compute granted so far."""
        return sum(grant.amount for grant in self._compute) / 1000

    @property
    def compute_elapsed(self) -> float:
        """Seconds since the first compute grant (0 before it)."""
        started = self._compute_started
        return 0.0 if started is None else self._clock() - started

    async def extend_compute(self) -> bool:
        """Take one more compute grant; ``False`` when the budget has none left."""

        async def work() -> bool:
            now = self._wall_clock()
            request = self.budget.compute_request(await self.budget.key(now))
            written = await self.store.write_turn(
                self._turn_write(now, reserve=[request], save=False)
            )
            if written.refused:
                return False
            self._adopt_compute(written.grants[0])
            return True

        return await self._owned(work)

    # -- model calls ---------------------------------------------------------------------------

    async def reserve_call(self, plan: CallPlan) -> CallGrant | Literal["window"]:
        """Reserve a planned call, in one transaction with a checkpoint (the calls that
        finished settled, the session's new messages saved); ``"window"`` when the user's
        window cannot pay for it (then nothing was written: the close writes it)."""

        async def work() -> CallGrant | Literal["window"]:
            async with self._writes:
                now = self._wall_clock()
                reserve = []
                if plan.want > 0:
                    reserve.append(self.budget.call_request(await self.budget.key(now), plan))
                settlements = self._finished()
                written = await self.store.write_turn(
                    self._turn_write(now, reserve=reserve, settle=settlements)
                )
                if written.refused:
                    return "window"
                self._forget(settlements)
                return self._adopt_call(plan, written.grants)

        return await self._owned(work)

    def charge(self, grant: CallGrant, usage: dict[str, int], price: ModelPrice) -> int:
        """A finished (or stopped) call's cost, capped at its reservation: what the user pays,
        settled with the next call's reservation or at close."""
        cost, settlement = UserBudget.charge(grant, usage, price)
        if settlement is not None:
            reservation, actual = settlement
            self._charges[reservation.reservation_id] = actual
        return cost

    # -- saving --------------------------------------------------------------------------------

    def _finished(self) -> list[Settlement]:
        """The settlements of the calls that finished and are not settled yet."""
        return [
            (self._open[rid], actual) for rid, actual in self._charges.items() if rid in self._open
        ]

    def _forget(self, settlements: list[Settlement]) -> None:
        """Settled (committed): no longer open."""
        for reservation, _ in settlements:
            self._open.pop(reservation.reservation_id, None)

    async def _write(self, settlements: list[Settlement], *, save: bool = True) -> None:
        now = self._wall_clock()
        await self.store.write_turn(
            self._turn_write(now, reserve=[], settle=settlements, save=save)
        )
        self._forget(settlements)

    def close(
        self, *, ran: bool = True, end: tuple[str, dict[str, Any]] | None = None
    ) -> Awaitable[None]:
        """Settle everything still open and save the session (idempotent; shielded: await it
        from a cancelled task and it still completes).

        Compute is charged at the wall-clock time since the first grant (nothing when the turn
        was refused before it ran: ``ran`` false), AI reservations at the cost of their call
        (0 for a call reserved but never made). ``end``, ``(turn_id, frame)``: the turn's end,
        saved with it for a client that re-sends the turn
        (:meth:`~chucky.server.store.SessionRecord.record_turn`).
        """
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close(ran, end))
            self._track(self._closed)
        return asyncio.shield(self._closed)

    async def _close(self, ran: bool, end: tuple[str, dict[str, Any]] | None) -> None:
        # Operations still in flight (a reservation whose caller was cancelled) end first:
        # what they reserve is settled below.
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        elapsed_ms = round(self.compute_elapsed * 1000) if ran else 0
        compute = UserBudget.compute_settlements(self._compute, elapsed_ms / 1000)
        self.compute_ms = sum(amount for _, amount in compute)
        compute_ids = {grant.reservation_id for grant in self._compute}
        settlements: list[Settlement] = [
            (reservation, self._charges.get(rid, 0))
            for rid, reservation in self._open.items()
            if rid not in compute_ids
        ]
        settlements.extend(s for s in compute if s[0].reservation_id in self._open)
        session = self.session
        session.state = "idle"
        session.last_activity_at = self._wall_clock()
        async with self._writes:
            if end is not None:
                session.record_turn(*end)
            save = True
            for attempt, delay in enumerate(_SETTLE_ATTEMPTS):
                await asyncio.sleep(delay)
                try:
                    try:
                        await self._write(settlements, save=save)
                    except SessionNotFoundError:
                        if not save:
                            raise
                        # Deleted meanwhile with its project (chucky project delete): there
                        # is nothing to save into any more; the settlements go alone.
                        logger.info(
                            "session %s was deleted: its last messages are not saved",
                            session.session_id,
                        )
                        save = False
                        await self._write(settlements, save=False)
                    return
                except ChuckyError:
                    if attempt == len(_SETTLE_ATTEMPTS) - 1:
                        logger.exception(
                            "could not settle turn of session %s; the server retries",
                            session.session_id,
                        )
                        if self._defer is not None:
                            self._defer(settlements)
                        return
                    logger.warning(
                        "settling turn of session %s failed; retrying",
                        session.session_id,
                        exc_info=True,
                    )
