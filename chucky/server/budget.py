"""Budgets that hold: one user's AI and compute budget, enforced through the ledger.

The token's ``budget`` claim is a promise (docs/protocol.md section 7): the user's spend in a window
instance never exceeds it. Every model call is planned (:meth:`UserBudget.plan_call`: the input
cost plus ``max_tokens`` x the output price, ``max_tokens`` lowered to what the session's
``maxBudgetUsd`` can pay for), then its worst case is set aside atomically in the
:class:`~chucky.server.store.Store` ledger (:meth:`UserBudget.call_request`, taken by the turn's
:class:`~chucky.server.account.TurnAccount`), lowered again to what the window has left
(:meth:`UserBudget.call_grant`). :meth:`UserBudget.charge` gives the actual cost, settled (the
rest released) in the same transaction as the session's next save. A call whose input plus
``min_output_tokens`` cannot be paid for is not made.

Compute is the wall-clock time of running turns, in milliseconds in the ledger: a turn takes a
grant when it starts (:meth:`UserBudget.compute_request`), extends it while it runs, and settles
the time it really took when it ends, is interrupted or its socket goes away.

The settle never charges more than was reserved, so the promise holds even if a provider
reports more input tokens than it was estimated to use; the overrun is logged. A node that dies
leaves its reservations to be settled at their full amount: at once by a process of its host
that proves it dead (:meth:`~chucky.server.store.Store.reclaim_nodes`), else when they expire
(:meth:`~chucky.server.store.Store.recover`).

Windows (docs/protocol.md section 7). The ledger counts a user's spend per window instance of the
user's windows, not of the token's: the anchor they are counted from is stored once per
(project, user, window type) by the first token seen (its ``windowStart``, else its ``iat``;
:meth:`~chucky.server.store.Store.window_anchor`), and later tokens' ``windowStart`` does not
move it. A backend minting a token per page load (``create_budget`` writes ``windowStart =
now``) thus never gives the user a fresh budget. ``lifetime`` has one instance. Each window
type is a ledger of its own: spend under ``day`` tokens does not count against ``hour`` tokens.
Each reservation is checked against the limit of the token presented.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

from .._redact import redacting_logger
from ..errors import BudgetExceededError
from ..tokens import TokenClaims
from ..windows import anchored_bounds, anchored_key, format_utc, from_unix, to_unix, token_anchor
from .pricing import ModelPrice, cost_microdollars
from .store import LedgerKey, LedgerUsage, Reservation, ReserveRequest, ResourceKind, Store

__all__ = [
    "BudgetSettings",
    "CallGrant",
    "CallPlan",
    "Settlement",
    "UserBudget",
    "affordable_output_tokens",
]

Settlement = tuple[Reservation, int]
"""A reservation and the actual amount to charge for it (capped at the reservation)."""

logger = redacting_logger("chucky.server.budget")


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """How budgets are enforced.

    Attributes:
        min_output_tokens: A call is made only if the budget pays for its input plus this many
            output tokens.
        compute_grant: Seconds of compute a turn sets aside at a time (extended while it runs).
        reservation_ttl: Seconds an unsettled reservation lives without a heartbeat.
    """

    min_output_tokens: int = 16
    compute_grant: float = 60.0
    reservation_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class CallGrant:
    """What a model call may spend: its reservation and its lowered ``max_tokens``."""

    reservation: Reservation | None
    """``None`` when the call costs nothing (a free model)."""
    max_tokens: int


@dataclass(frozen=True, slots=True)
class CallPlan:
    """A model call's worst case, worked out before anything is reserved
    (:meth:`UserBudget.plan_call`)."""

    input_tokens: int
    max_tokens: int
    """The call's output bound, lowered to what the session's ``maxBudgetUsd`` pays for."""
    minimum_out: int
    want: int
    """Microdollars to reserve (0: a free call, nothing reserved)."""
    minimum: int
    """The least reservation worth making the call for: the input plus ``minimum_out``."""
    price: ModelPrice


def _input_key(price: ModelPrice) -> str:
    # An input token may be billed as a cache write, which costs more than a plain one: the
    # worst case prices every input token at the higher of the two rates.
    return "cache_creation_input_tokens" if price.cache_write > price.input else "input_tokens"


def _worst_cost(input_tokens: int, output_tokens: int, price: ModelPrice) -> int:
    """The most a call with these token counts can cost (what is reserved for it)."""
    return cost_microdollars(
        {_input_key(price): input_tokens, "output_tokens": output_tokens}, price
    )


def affordable_output_tokens(room: int, input_tokens: int, price: ModelPrice) -> int | None:
    """The most output tokens a call with ``input_tokens`` can have for ``room`` microdollars:
    the largest ``n`` with ``_worst_cost(input_tokens, n) <= room``.

    Returns ``None`` when output is free (any number is affordable), and a negative number when
    not even the input fits.
    """
    rate = Decimal(str(price.output))
    if rate == 0:
        return None
    # Prices are USD per million tokens, i.e. microdollars per token: the cost is
    # round_half_up(input_exact + n * rate) <= room. Start from the exact bound; step down
    # over the rounding (at most a step or two).
    input_rate = max(Decimal(str(price.input)), Decimal(str(price.cache_write)))  # _input_key's
    exact_input = input_tokens * input_rate
    bound = ((Decimal(room) + Decimal("0.5") - exact_input) / rate).to_integral_value(ROUND_FLOOR)
    tokens = int(bound)
    while tokens >= 0 and _worst_cost(input_tokens, tokens, price) > room:
        tokens -= 1
    return tokens


class UserBudget:
    """The budget of one token's user (project ``iss``, user ``sub``), enforced in ``store``."""

    def __init__(
        self, store: Store, claims: TokenClaims, settings: BudgetSettings, *, node_id: str
    ) -> None:
        self.store = store
        self.claims = claims
        self.settings = settings
        self.node_id = node_id
        self._anchor: datetime | None = None  # the stored one, once read: it never changes

    # -- windows -------------------------------------------------------------------------------

    async def anchor(self) -> datetime:
        """The anchor of the user's windows of this token's type, as stored by the first
        token seen (read once, then cached).

        Raises:
            ValidationError: the token's own anchor is out of range (its first use only).
        """
        if self._anchor is None:
            claims = self.claims
            proposed = to_unix(token_anchor(claims.budget, claims.iat))
            stored = await self.store.window_anchor(
                claims.iss, claims.sub, claims.budget.window, proposed
            )
            self._anchor = from_unix(stored)
        return self._anchor

    async def key(self, now: float) -> LedgerKey:
        """The ledger key of the user's window instance containing ``now``."""
        window = anchored_key(self.claims.budget.window, await self.anchor(), now)
        return LedgerKey(self.claims.iss, self.claims.sub, window)

    async def window(self, now: float) -> tuple[str, str | None]:
        """The user's window instance containing ``now`` as ISO 8601 ``(start, end)``; ``end``
        is ``None`` for ``lifetime`` (then ``start`` is the anchor)."""
        return self._bounds(await self.anchor(), now)

    def _bounds(self, anchor: datetime, now: float) -> tuple[str, str | None]:
        start, end = anchored_bounds(self.claims.budget.window, anchor, now)
        return format_utc(start), format_utc(end) if end is not None else None

    def limit(self, kind: ResourceKind) -> int:
        """The budget of ``kind``: microdollars (``ai``) or milliseconds (``compute``)."""
        budget = self.claims.budget
        return budget.ai if kind == "ai" else budget.compute * 1000

    # -- errors --------------------------------------------------------------------------------

    def exceeded(self, kind: ResourceKind, usage: LedgerUsage, now: float) -> BudgetExceededError:
        """The ``BUDGET_EXCEEDED`` error for ``kind`` (details in microdollars or seconds)."""
        limit = self.limit(kind)
        spent = usage.used + usage.reserved
        remaining = max(0, limit - spent)
        # The stored anchor is known here: ``usage`` was read under the key made from it. (Used
        # before, this falls back to the token's own anchor.)
        anchor = self._anchor or token_anchor(self.claims.budget, self.claims.iat)
        _, end = self._bounds(anchor, now)
        if kind == "ai":
            what, reason = "AI budget", "user_budget_exhausted"
            numbers: dict[str, Any] = {"limit": limit, "used": spent, "remaining": remaining}
        else:
            what, reason = "compute budget", "compute_budget_exhausted"
            numbers = {"limit": limit / 1000, "used": spent / 1000, "remaining": remaining / 1000}
        window = self.claims.budget.window
        return BudgetExceededError(
            f"Budget exceeded: the {what} of this {window} window is used up"
            + (f" until {end}" if end else ""),
            details={
                "reason": reason,
                "kind": kind,
                "window": window,
                "windowEnd": end,
                **numbers,
            },
        )

    # -- AI ------------------------------------------------------------------------------------

    def plan_call(
        self, *, input_tokens: int, max_tokens: int, price: ModelPrice, session_room: int | None
    ) -> CallPlan | Literal["session"]:
        """Work out the worst case of one model call (nothing is reserved yet).

        Args:
            input_tokens: An upper bound of the call's input tokens.
            max_tokens: The call's output bound before the budget lowers it.
            price: The model's price.
            session_room: Microdollars the session's ``maxBudgetUsd`` leaves, if it has one.

        Returns:
            The plan; or ``"session"``: the session's ``maxBudgetUsd`` cannot pay for the input
            plus ``min_output_tokens``.
        """
        minimum_out = min(self.settings.min_output_tokens, max_tokens)
        minimum = _worst_cost(input_tokens, minimum_out, price)
        if session_room is not None:
            if session_room < minimum:
                return "session"
            fits = affordable_output_tokens(session_room, input_tokens, price)
            if fits is not None:
                max_tokens = min(max_tokens, fits)
        return CallPlan(
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            minimum_out=minimum_out,
            want=_worst_cost(input_tokens, max_tokens, price),
            minimum=max(minimum, 1),
            price=price,
        )

    def call_request(self, key: LedgerKey, plan: CallPlan) -> ReserveRequest:
        """The ledger reservation ``plan`` needs."""
        return ReserveRequest(key, "ai", plan.want, self.limit("ai"), plan.minimum)

    @staticmethod
    def call_grant(plan: CallPlan, reservation: Reservation | None) -> CallGrant:
        """The grant of a planned call: what was reserved (``None``: a free call), and
        ``max_tokens`` lowered to what the reservation pays for."""
        max_tokens = plan.max_tokens
        if reservation is not None and reservation.amount < plan.want:
            fits = affordable_output_tokens(reservation.amount, plan.input_tokens, plan.price)
            if fits is not None:
                max_tokens = max(min(max_tokens, fits), plan.minimum_out)
        return CallGrant(reservation, max_tokens)

    @staticmethod
    def charge(
        grant: CallGrant, usage: Mapping[str, int], price: ModelPrice
    ) -> tuple[int, Settlement | None]:
        """What a finished call costs the user -- its actual cost, at most its reservation --
        and the settlement to write (with the session's next save)."""
        cost = cost_microdollars(usage, price)
        if grant.reservation is None:
            return cost, None
        if cost > grant.reservation.amount:
            logger.warning(
                "model call cost %d microdollars, more than its reservation of %d; "
                "charged the reservation (the input estimate was too low)",
                cost,
                grant.reservation.amount,
            )
        return min(cost, grant.reservation.amount), (grant.reservation, cost)

    async def exceeded_now(self, kind: ResourceKind, now: float) -> BudgetExceededError:
        """:meth:`exceeded` with the ledger's current numbers."""
        return self.exceeded(kind, await self.store.usage(await self.key(now), kind), now)

    # -- compute -------------------------------------------------------------------------------

    def compute_request(self, key: LedgerKey) -> ReserveRequest:
        """The ledger reservation of one compute grant (``compute_grant`` seconds, or what is
        left)."""
        want = round(self.settings.compute_grant * 1000)
        return ReserveRequest(key, "compute", want, self.limit("compute"), 1)

    @staticmethod
    def compute_settlements(grants: list[Reservation], elapsed: float) -> list[Settlement]:
        """``elapsed`` seconds spread over a turn's compute grants, in order."""
        left = round(elapsed * 1000)
        settlements: list[Settlement] = []
        for grant in grants:
            take = min(left, grant.amount)
            settlements.append((grant, take))
            left -= take
        return settlements

    # -- reporting -----------------------------------------------------------------------------

    async def report(self, now: float) -> dict[str, Any]:
        """The ``GET /usage`` body (docs/protocol.md section 9): microdollars and seconds."""
        key = await self.key(now)
        ai = await self.store.usage(key, "ai")
        compute = await self.store.usage(key, "compute")
        ai_limit, compute_limit = self.limit("ai"), self.limit("compute")
        ai_left = max(0, ai_limit - ai.used - ai.reserved)
        compute_left = max(0, compute_limit - compute.used - compute.reserved)
        start, end = await self.window(now)
        return {
            "ai": {
                "used": ai.used,
                "reserved": ai.reserved,
                "remaining": ai_left,
                "budget": ai_limit,
            },
            "compute": {
                "used": compute.used / 1000,
                "reserved": compute.reserved / 1000,
                "remaining": compute_left / 1000,
                "budget": compute_limit / 1000,
            },
            "allowed": ai_left > 0 and compute_left > 0,
            "window": {"type": self.claims.budget.window, "start": start, "end": end},
            "projectId": self.claims.iss,
            "userId": self.claims.sub,
        }
