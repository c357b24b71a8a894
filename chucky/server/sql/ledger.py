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

from typing import Any, Final

from sqlalchemy import and_, delete, false, select, true, update
from sqlalchemy.sql.elements import ColumnElement

from ..store import LedgerKey, LedgerUsage, Reservation, ResourceKind, new_id
from .db import Db, Sql
from .engines import Backend, insert_for
from .schema import budget_anchors, reservations

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


_GRANT: Final = Sql(
    """
    UPDATE ledger
       SET reserved = reserved + CASE WHEN CAST(:want AS BIGINT) <= :limit - used - reserved
                                      THEN CAST(:want AS BIGINT)
                                      ELSE :limit - used - reserved END,
           last_grant = CASE WHEN CAST(:want AS BIGINT) <= :limit - used - reserved
                             THEN CAST(:want AS BIGINT)
                             ELSE :limit - used - reserved END
     WHERE project_id = :project_id AND user_id = :user_id AND "window" = :window
       AND kind = :kind AND CAST(:limit AS BIGINT) - used - reserved >= CAST(:minimum AS BIGINT)
    RETURNING used, reserved, last_grant
    """
)
_NEW_ROW: Final = Sql(
    """
    INSERT INTO ledger (project_id, user_id, "window", kind, used, reserved, last_grant)
    VALUES (:project_id, :user_id, :window, :kind, 0, 0, 0)
    ON CONFLICT DO NOTHING
    """
)
_NEW_RESERVATION: Final = Sql(
    """
    INSERT INTO reservations
        (id, project_id, user_id, "window", kind, amount, node_id, created_at, expires_at,
         settled)
    VALUES
        (:id, :project_id, :user_id, :window, :kind, :amount, :node_id, :created_at,
         :expires_at, FALSE)
    """
)
_SETTLE: Final = Sql(
    """
    UPDATE reservations
       SET settled = TRUE, settled_at = :now,
           charged = CASE WHEN amount < CAST(:cap AS BIGINT) THEN amount
                          ELSE CAST(:cap AS BIGINT) END
     WHERE id = :id AND NOT settled
    RETURNING project_id, user_id, "window", kind, amount, charged
    """
)
_CHARGE: Final = Sql(
    """
    UPDATE ledger
       SET used = used + CAST(:charged AS BIGINT), reserved = reserved - CAST(:amount AS BIGINT)
     WHERE project_id = :project_id AND user_id = :user_id AND "window" = :window
       AND kind = :kind
    """
)
_USAGE: Final = Sql(
    """
    SELECT used, reserved FROM ledger
     WHERE project_id = :project_id AND user_id = :user_id AND "window" = :window
       AND kind = :kind
    """
)
_FULL: Final = 2**62  # a cap above any amount: settle at the full amount

# PostgreSQL runs a data-modifying statement in a WITH clause: a grant and its reservation row,
# or a settlement and its charge, are then one statement, one round trip to the server (SQLite
# runs them as two statements, in-process).
_GRANT_AND_RECORD: Final = Sql(
    f"""
    WITH granted AS ({_GRANT.text}),
    stored AS (
        INSERT INTO reservations
            (id, project_id, user_id, "window", kind, amount, node_id, created_at, expires_at,
             settled)
        SELECT :id, :project_id, :user_id, :window, :kind, last_grant, :node_id,
               CAST(:created_at AS DOUBLE PRECISION), CAST(:expires_at AS DOUBLE PRECISION),
               FALSE
          FROM granted
        RETURNING id
    )
    SELECT used, reserved, last_grant FROM granted, stored
    """
)
_SETTLE_AND_CHARGE: Final = Sql(
    f"""
    WITH settled AS ({_SETTLE.text}),
    applied AS (
        UPDATE ledger
           SET used = ledger.used + settled.charged, reserved = ledger.reserved - settled.amount
          FROM settled
         WHERE ledger.project_id = settled.project_id AND ledger.user_id = settled.user_id
           AND ledger."window" = settled."window" AND ledger.kind = settled.kind
    )
    SELECT charged FROM settled
    """
)


def _row(key: LedgerKey, kind: str) -> dict[str, Any]:
    return {
        "project_id": key.project_id,
        "user_id": key.user_id,
        "window": key.window,
        "kind": kind,
    }


async def reserve(
    db: Db,
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
    row = _row(key, kind)
    grant = {**row, "want": max(want, 0), "limit": limit, "minimum": max(minimum, 0)}
    reservation_id = new_id()
    record = {
        **row,
        "id": reservation_id,
        "node_id": node_id,
        "created_at": now,
        "expires_at": now + ttl,
    }
    statement = _GRANT_AND_RECORD if db.folds else _GRANT
    params = {**grant, **record} if db.folds else grant
    granted = await db.first(statement, params)
    if granted is None:
        # The window's first reservation (no row yet), or no room: make sure the row exists,
        # then ask once more. The common case is one statement (two on SQLite).
        await db.run(_NEW_ROW, row)
        granted = await db.first(statement, params)
        if granted is None:
            return None
    used, reserved, amount = (int(value) for value in granted)
    if not db.folds:
        await db.run(_NEW_RESERVATION, {**record, "amount": amount})
    return Reservation(
        reservation_id=reservation_id,
        key=key,
        kind=kind,
        amount=amount,
        used=used,
        reserved=reserved,
    )


async def settle(db: Db, reservation_id: str, actual: int, now: float) -> int:
    """Charge ``min(actual, amount)`` and release the rest, once; returns what was charged
    (0 when it was settled already)."""
    charged = await _settle_once(db, reservation_id, actual, now)
    return charged or 0


async def _settle_once(db: Db, reservation_id: str, actual: int | None, now: float) -> int | None:
    """Settle at ``min(actual, amount)`` (``None``: the full amount); ``None`` if already
    settled."""
    cap = _FULL if actual is None else max(actual, 0)
    params = {"id": reservation_id, "now": now, "cap": cap}
    if db.folds:
        charged_only = await db.first(_SETTLE_AND_CHARGE, params)
        return None if charged_only is None else int(charged_only[0])
    settled = await db.first(_SETTLE, params)
    if settled is None:
        return None
    project_id, user_id, window, kind, amount, charged = settled
    await db.run(
        _CHARGE,
        {
            "project_id": project_id,
            "user_id": user_id,
            "window": window,
            "kind": kind,
            "charged": int(charged),
            "amount": int(amount),
        },
    )
    return int(charged)


async def recover_expired(connection: Db, now: float) -> int:
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


async def settle_node(connection: Db, node_id: str, now: float) -> int:
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


async def extend(connection: Db, backend: Backend, node_id: str, expires_at: float) -> None:
    """Keep ``node_id``'s open reservations alive until ``expires_at``.

    PostgreSQL: rows a turn is settling right now (locked) are skipped -- they are being
    settled, and waiting for them, in whatever order the scan meets them, deadlocked against
    turns locking the same rows in theirs (seen with 500 busy sessions). A skipped row whose
    settlement rolls back is extended at the next heartbeat, well within its TTL.
    """
    open_rows = and_(reservations.c.node_id == node_id, reservations.c.settled == false())
    if backend == "postgresql":
        free = select(reservations.c.id).where(open_rows).with_for_update(skip_locked=True)
        open_rows = reservations.c.id.in_(free.scalar_subquery())
    await connection.execute(update(reservations).where(open_rows).values(expires_at=expires_at))


async def usage(db: Db, key: LedgerKey, kind: ResourceKind) -> LedgerUsage:
    """The window's counters (zeros when nothing was ever reserved)."""
    found = await db.first(_USAGE, _row(key, kind))
    if found is None:
        return LedgerUsage(used=0, reserved=0)
    return LedgerUsage(used=int(found[0]), reserved=int(found[1]))


# -- window anchors ----------------------------------------------------------------------------


def _anchor_matches(project_id: str, user_id: str, window: str) -> ColumnElement[bool]:
    return and_(
        budget_anchors.c.project_id == project_id,
        budget_anchors.c.user_id == user_id,
        budget_anchors.c.window == window,
    )


async def find_anchor(connection: Db, project_id: str, user_id: str, window: str) -> float | None:
    """The stored anchor of the user's ``window`` windows, or ``None``."""
    found = await connection.scalar(
        select(budget_anchors.c.anchor).where(_anchor_matches(project_id, user_id, window))
    )
    return None if found is None else float(found)


async def store_anchor(
    connection: Db,
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
