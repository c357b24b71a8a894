"""The budget ledger in SQL: reserve, settle, recover.

The promise is that spend never exceeds the limit, with any number of nodes. It rests on one
statement per grant: the ledger row is created if missing (``ON CONFLICT DO NOTHING``), then

.. code-block:: sql

    UPDATE ledger
       SET reserved = reserved + G, last_grant = G
     WHERE <key> AND (:limit - used - reserved) >= :minimum
    RETURNING used, reserved, last_grant
    -- G = CASE WHEN :want <= :limit - used - reserved THEN :want ELSE :limit - used - reserved END

Both engines evaluate the right-hand sides on the old row, and the statement is atomic:
SQLite runs it under the ``BEGIN IMMEDIATE`` write lock; PostgreSQL locks the row, and a second
updater waits, then re-evaluates the ``WHERE`` clause against the row the first one committed
(READ COMMITTED). No row returned means no grant. Settling marks the reservation settled only if
it was not (``... WHERE id = :id AND NOT settled RETURNING``), so a reservation is charged once
whoever settles it: its owner, or :func:`recover_expired` on any node after its owner died.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, and_, case, delete, false, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ..store import LedgerKey, LedgerUsage, Reservation, ResourceKind, new_id
from .engines import Backend, insert_for
from .schema import budget_anchors, ledger, reservations

__all__ = [
    "SETTLED_RETENTION",
    "extend",
    "find_anchor",
    "recover_expired",
    "reserve",
    "settle",
    "settle_node",
    "store_anchor",
    "usage",
]

SETTLED_RETENTION: Final = 86_400.0
"""Seconds a settled reservation is kept (a late duplicate settle finds it and charges 0)."""


def _key_matches(key: LedgerKey, kind: str) -> ColumnElement[bool]:
    return and_(
        ledger.c.project_id == key.project_id,
        ledger.c.user_id == key.user_id,
        ledger.c.window == key.window,
        ledger.c.kind == kind,
    )


async def reserve(
    connection: AsyncConnection,
    backend: Backend,
    key: LedgerKey,
    kind: ResourceKind,
    *,
    want: int,
    limit: int,
    minimum: int,
    now: float,
    ttl: float,
    node_id: str,
) -> Reservation | None:
    """Set aside ``min(want, limit - used - reserved)``, or nothing below ``minimum``."""
    await connection.execute(
        insert_for(backend, ledger)
        .values(
            project_id=key.project_id,
            user_id=key.user_id,
            window=key.window,
            kind=kind,
            used=0,
            reserved=0,
            last_grant=0,
        )
        .on_conflict_do_nothing()
    )
    wanted = literal(max(want, 0), BigInteger)
    available = literal(limit, BigInteger) - ledger.c.used - ledger.c.reserved
    grant = case((wanted <= available, wanted), else_=available)
    granted = (
        await connection.execute(
            update(ledger)
            .where(_key_matches(key, kind), available >= literal(max(minimum, 0), BigInteger))
            .values(reserved=ledger.c.reserved + grant, last_grant=grant)
            .returning(ledger.c.used, ledger.c.reserved, ledger.c.last_grant)
        )
    ).one_or_none()
    if granted is None:
        return None
    reservation = Reservation(
        reservation_id=new_id(),
        key=key,
        kind=kind,
        amount=int(granted.last_grant),
        used=int(granted.used),
        reserved=int(granted.reserved),
    )
    await connection.execute(
        reservations.insert().values(
            id=reservation.reservation_id,
            project_id=key.project_id,
            user_id=key.user_id,
            window=key.window,
            kind=kind,
            amount=reservation.amount,
            node_id=node_id,
            created_at=now,
            expires_at=now + ttl,
            settled=False,
        )
    )
    return reservation


async def settle(connection: AsyncConnection, reservation_id: str, actual: int, now: float) -> int:
    """Charge ``min(actual, amount)`` and release the rest, once; returns what was charged
    (0 when it was settled already)."""
    charged = await _settle_once(connection, reservation_id, actual, now)
    return charged or 0


async def _settle_once(
    connection: AsyncConnection, reservation_id: str, actual: int | None, now: float
) -> int | None:
    """Settle at ``min(actual, amount)`` (``None``: the full amount); ``None`` if already
    settled."""
    amount = reservations.c.amount
    if actual is None:
        charged: ColumnElement[int] = amount
    else:
        cap = literal(max(actual, 0), BigInteger)
        charged = case((amount < cap, amount), else_=cap)
    row = (
        await connection.execute(
            update(reservations)
            .where(reservations.c.id == reservation_id, reservations.c.settled == false())
            .values(settled=True, settled_at=now, charged=charged)
            .returning(
                reservations.c.project_id,
                reservations.c.user_id,
                reservations.c.window,
                reservations.c.kind,
                reservations.c.amount,
                reservations.c.charged,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    key = LedgerKey(project_id=row.project_id, user_id=row.user_id, window=row.window)
    await connection.execute(
        update(ledger)
        .where(_key_matches(key, row.kind))
        .values(used=ledger.c.used + row.charged, reserved=ledger.c.reserved - row.amount)
    )
    return int(row.charged)


async def recover_expired(connection: AsyncConnection, now: float) -> int:
    """Settle every reservation whose owner stopped heartbeating at its full amount.

    Also forgets reservations settled more than :data:`SETTLED_RETENTION` ago.
    """
    expired = (
        await connection.scalars(
            select(reservations.c.id).where(
                reservations.c.settled == false(), reservations.c.expires_at <= now
            )
        )
    ).all()
    settled = 0
    for reservation_id in expired:
        # Guarded like any settle: another node recovering at once charges nothing twice.
        if await _settle_once(connection, reservation_id, None, now) is not None:
            settled += 1
    await connection.execute(
        delete(reservations).where(
            reservations.c.settled == true(),
            reservations.c.settled_at < now - SETTLED_RETENTION,
        )
    )
    return settled


async def settle_node(connection: AsyncConnection, node_id: str, now: float) -> int:
    """Settle every open reservation of ``node_id`` (a node proven dead) at its full amount;
    returns how many this call settled."""
    held = (
        await connection.scalars(
            select(reservations.c.id).where(
                reservations.c.node_id == node_id, reservations.c.settled == false()
            )
        )
    ).all()
    settled = 0
    for reservation_id in held:
        if await _settle_once(connection, reservation_id, None, now) is not None:
            settled += 1
    return settled


async def extend(connection: AsyncConnection, node_id: str, expires_at: float) -> None:
    """Keep ``node_id``'s open reservations alive until ``expires_at``."""
    await connection.execute(
        update(reservations)
        .where(reservations.c.node_id == node_id, reservations.c.settled == false())
        .values(expires_at=expires_at)
    )


async def usage(connection: AsyncConnection, key: LedgerKey, kind: ResourceKind) -> LedgerUsage:
    """The window's counters (zeros when nothing was ever reserved)."""
    row = (
        await connection.execute(
            select(ledger.c.used, ledger.c.reserved).where(_key_matches(key, kind))
        )
    ).one_or_none()
    if row is None:
        return LedgerUsage(used=0, reserved=0)
    return LedgerUsage(used=int(row.used), reserved=int(row.reserved))


# -- window anchors ----------------------------------------------------------------------------


def _anchor_matches(project_id: str, user_id: str, window: str) -> ColumnElement[bool]:
    return and_(
        budget_anchors.c.project_id == project_id,
        budget_anchors.c.user_id == user_id,
        budget_anchors.c.window == window,
    )


async def find_anchor(
    connection: AsyncConnection, project_id: str, user_id: str, window: str
) -> float | None:
    """The stored anchor of the user's ``window`` windows, or ``None``."""
    found = await connection.scalar(
        select(budget_anchors.c.anchor).where(_anchor_matches(project_id, user_id, window))
    )
    return None if found is None else float(found)


async def store_anchor(
    connection: AsyncConnection,
    backend: Backend,
    project_id: str,
    user_id: str,
    window: str,
    proposed: float,
) -> float:
    """Store ``proposed`` unless an anchor is there, then read the one that is.

    ``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT``: on SQLite under the write lock; on
    PostgreSQL a second inserter waits for the first one's commit at the primary key, does
    nothing, and its ``SELECT`` (a new snapshot, READ COMMITTED) sees the first one's row.
    """
    await connection.execute(
        insert_for(backend, budget_anchors)
        .values(project_id=project_id, user_id=user_id, window=window, anchor=proposed)
        .on_conflict_do_nothing()
    )
    stored = await find_anchor(connection, project_id, user_id, window)
    if stored is None:  # pragma: no cover - the row was just written or found
        raise RuntimeError(f"no anchor for {project_id}/{user_id}/{window} after inserting one")
    return stored
