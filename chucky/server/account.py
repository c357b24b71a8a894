"""What one turn holds in the store, owned by the turn and settled exactly once.

A :class:`TurnAccount` is the narrow store interface of the turn engine: the turn's admission
(rate limit, first compute grant), every budget reservation it takes (model calls, compute
grants), its checkpoints (settle the calls that finished, save the new messages) and its close
(settle everything still open, save the session). Nothing else of a turn writes to the store.

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
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

from ..errors import ChuckyError, RateLimitError
from .budget import CallGrant, Settlement, UserBudget
from .pricing import ModelPrice
from .store import Reservation, SessionRecord, Store

__all__ = ["TurnAccount"]

logger = logging.getLogger("chucky.server.account")

_T = TypeVar("_T")

Track = Callable[["asyncio.Task[Any]"], None]
"""Registers a task the server must wait for before it closes the store."""

Defer = Callable[[list[Settlement]], None]
"""Takes settlements the store refused (it is down): the server retries them."""

_SETTLE_ATTEMPTS = (0.0, 0.1, 0.5)  # delays before each attempt at the closing transaction


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
        self._track(task)
        return await asyncio.shield(task)

    # -- admission -----------------------------------------------------------------------------

    async def admit(self, *, turns_per_minute: int | None) -> None:
        """The checks before a turn runs: the rate limit, then the first compute grant.

        Raises:
            RateLimitError: the user started too many turns this minute.
            BudgetExceededError: no compute left in the window.
        """

        async def work() -> None:
            claims = self.budget.claims
            now = self._wall_clock()
            if turns_per_minute is not None:
                decision = await self.store.count_turn(
                    claims.iss, claims.sub, now=now, limit=turns_per_minute
                )
                if not decision.allowed:
                    retry = max(1, math.ceil(decision.retry_after))
                    raise RateLimitError(
                        f"Rate limit exceeded: {turns_per_minute} turns per minute; "
                        f"retry in {retry} s",
                        details={
                            "reason": "rate_limited",
                            "retryAfter": retry,
                            "limit": turns_per_minute,
                        },
                    )
            grant = await self.budget.reserve_compute(now, first=True)
            assert grant is not None  # first=True raises instead
            self._adopt_compute(grant)

        await self._owned(work)

    def _adopt_compute(self, grant: Reservation) -> None:
        self._open[grant.reservation_id] = grant
        self._compute.append(grant)
        if self._compute_started is None:
            self._compute_started = self._clock()

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
            grant = await self.budget.reserve_compute(self._wall_clock(), first=False)
            if grant is None:
                return False
            self._adopt_compute(grant)
            return True

        return await self._owned(work)

    # -- model calls ---------------------------------------------------------------------------

    async def reserve_call(
        self, *, input_tokens: int, max_tokens: int, price: ModelPrice, session_room: int | None
    ) -> CallGrant | Literal["session", "window"]:
        """:meth:`UserBudget.reserve_call`, the reservation owned by the turn."""

        async def work() -> CallGrant | Literal["session", "window"]:
            grant = await self.budget.reserve_call(
                input_tokens=input_tokens,
                max_tokens=max_tokens,
                price=price,
                session_room=session_room,
                now=self._wall_clock(),
            )
            if isinstance(grant, CallGrant) and grant.reservation is not None:
                self._open[grant.reservation.reservation_id] = grant.reservation
            return grant

        return await self._owned(work)

    def charge(self, grant: CallGrant, usage: dict[str, int], price: ModelPrice) -> int:
        """A finished (or stopped) call's cost, capped at its reservation: what the user pays,
        settled with the next checkpoint or at close."""
        cost, settlement = UserBudget.charge(grant, usage, price)
        if settlement is not None:
            reservation, actual = settlement
            self._charges[reservation.reservation_id] = actual
        return cost

    # -- saving --------------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Settle the calls that finished and save the session's new messages (one
        transaction)."""

        async def work() -> None:
            async with self._writes:
                settlements = [
                    (self._open[rid], actual)
                    for rid, actual in self._charges.items()
                    if rid in self._open
                ]
                await self._write(settlements)

        await self._owned(work)

    async def _write(self, settlements: list[Settlement]) -> None:
        store, session = self.store, self.session
        if settlements:
            await store.settle_and_save(session, settlements, self._wall_clock())
            for reservation, _ in settlements:
                self._open.pop(reservation.reservation_id, None)
        else:
            await store.save_session(session)

    def close(self, *, ran: bool = True) -> Awaitable[None]:
        """Settle everything still open and save the session (idempotent; shielded: await it
        from a cancelled task and it still completes).

        Compute is charged at the wall-clock time since the first grant (nothing when the turn
        was refused before it ran: ``ran`` false), AI reservations at the cost of their call
        (0 for a call reserved but never made).
        """
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close(ran))
            self._track(self._closed)
        return asyncio.shield(self._closed)

    async def _close(self, ran: bool) -> None:
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
            for attempt, delay in enumerate(_SETTLE_ATTEMPTS):
                await asyncio.sleep(delay)
                try:
                    await self._write(settlements)
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
