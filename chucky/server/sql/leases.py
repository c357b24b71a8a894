"""Concurrency leases and per-minute rate counters in SQL.

A lease is a row with an expiry that its node's heartbeat keeps pushing back; a lease past its
expiry is dead (a crashed node's sessions free their slots by themselves) and is deleted by
:func:`drop_expired` or on the way by :func:`acquire`.

Counting live leases and inserting one must be a single step, or two nodes could both take the
last slot. SQLite gets this from ``BEGIN IMMEDIATE`` (one writer at a time, across processes).
PostgreSQL takes transaction-level advisory locks first, one per user and one per project when
the project is limited, always in ascending key order so two acquires never deadlock; the locks
go with the transaction. Rate counters need no lock: a conditional ``UPDATE ... WHERE count <
:limit RETURNING count`` on the (project, user, minute) row is atomic on both engines.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

from sqlalchemy import BigInteger, and_, delete, func, literal, select, update
from sqlalchemy.sql.elements import ColumnElement

from ...errors import ConcurrencyLimitError, SessionError
from ..store import Lease, RateDecision, new_id
from .db import Db, Sql
from .engines import Backend
from .schema import leases, rate_counters

__all__ = [
    "acquire",
    "advisory_lock_id",
    "count_live",
    "count_turn",
    "drop_expired",
    "drop_node",
    "extend",
    "lock",
    "prune_rate_counters",
    "release",
]


def advisory_lock_id(name: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for ``name`` (a stable hash)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock(connection: Db, backend: Backend, *names: str) -> None:
    """Hold the named locks until the transaction ends (PostgreSQL; SQLite holds its write
    lock from ``BEGIN IMMEDIATE`` already)."""
    if backend != "postgresql":
        return
    for key in sorted({advisory_lock_id(name) for name in names}):
        await connection.execute(select(func.pg_advisory_xact_lock(literal(key, BigInteger))))


def _live(now: float) -> ColumnElement[bool]:
    return leases.c.expires_at > now


def _owned_by(project_id: str, user_id: str | None) -> ColumnElement[bool]:
    if user_id is None:
        return leases.c.project_id == project_id
    return and_(leases.c.project_id == project_id, leases.c.user_id == user_id)


async def count_live(connection: Db, project_id: str, user_id: str | None, now: float) -> int:
    """Live leases of the user, or of the whole project when ``user_id`` is ``None``."""
    count = await connection.scalar(
        select(func.count()).select_from(leases).where(_owned_by(project_id, user_id), _live(now))
    )
    return int(count or 0)


async def acquire(
    connection: Db,
    backend: Backend,
    project_id: str,
    user_id: str,
    session_id: str,
    *,
    node_id: str,
    now: float,
    ttl: float,
    user_limit: int | None,
    project_limit: int | None,
) -> Lease:
    """Count and insert under the locks; see the module docstring."""
    names = [f"chucky:lease:user:{project_id}:{user_id}"]
    if project_limit is not None:
        names.append(f"chucky:lease:project:{project_id}")
    await lock(connection, backend, *names)
    await connection.execute(
        delete(leases).where(_owned_by(project_id, user_id), leases.c.expires_at <= now)
    )
    busy = await connection.scalar(
        select(func.count())
        .select_from(leases)
        .where(leases.c.session_id == session_id, _live(now))
    )
    if busy:
        raise SessionError(
            "Session busy: it is open on another connection",
            details={"reason": "session_busy"},
            session_id=session_id,
        )
    if user_limit is not None:
        active = await count_live(connection, project_id, user_id, now)
        if active >= user_limit:
            raise _limit_error("user", user_id, user_limit, active)
    if project_limit is not None:
        active = await count_live(connection, project_id, None, now)
        if active >= project_limit:
            raise _limit_error("project", project_id, project_limit, active)
    lease = Lease(
        lease_id=new_id(),
        project_id=project_id,
        user_id=user_id,
        session_id=session_id,
        node_id=node_id,
    )
    await connection.execute(
        leases.insert().values(
            id=lease.lease_id,
            project_id=project_id,
            user_id=user_id,
            session_id=session_id,
            node_id=node_id,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return lease


def _limit_error(scope: str, who: str, limit: int, active: int) -> ConcurrencyLimitError:
    return ConcurrencyLimitError(
        f"Concurrency limit reached: {scope} {who} has {active} live sessions (limit {limit})",
        details={
            "reason": "concurrent_limit_reached",
            "scope": scope,
            "limit": limit,
            "active": active,
        },
    )


async def release(connection: Db, lease_id: str) -> None:
    """Delete the lease (nothing if it is gone already)."""
    await connection.execute(delete(leases).where(leases.c.id == lease_id))


async def extend(connection: Db, node_id: str, expires_at: float) -> None:
    """Keep every lease of ``node_id`` alive until ``expires_at``."""
    await connection.execute(
        update(leases).where(leases.c.node_id == node_id).values(expires_at=expires_at)
    )


async def drop_expired(connection: Db, now: float) -> int:
    """Delete every lease past its expiry; returns how many."""
    dropped = await connection.execute(
        delete(leases).where(leases.c.expires_at <= now).returning(leases.c.id)
    )
    return len(dropped.all())


async def drop_node(connection: Db, node_id: str) -> int:
    """Delete every lease of ``node_id`` (a node proven dead); returns how many."""
    dropped = await connection.execute(
        delete(leases).where(leases.c.node_id == node_id).returning(leases.c.id)
    )
    return len(dropped.all())


# -- rate counters ---------------------------------------------------------------------------


_COUNT: Final = Sql(
    """
    UPDATE rate_counters SET count = count + 1
     WHERE project_id = :project_id AND user_id = :user_id AND minute = :minute
       AND count < CAST(:limit AS INTEGER)
    RETURNING count
    """
)
_NEW_COUNTER: Final = Sql(
    """
    INSERT INTO rate_counters (project_id, user_id, minute, count)
    VALUES (:project_id, :user_id, :minute, 0)
    ON CONFLICT DO NOTHING
    """
)
_COUNTED: Final = Sql(
    """
    SELECT count FROM rate_counters
     WHERE project_id = :project_id AND user_id = :user_id AND minute = :minute
    """
)


async def count_turn(
    db: Db,
    project_id: str,
    user_id: str,
    *,
    now: float,
    limit: int,
) -> RateDecision:
    """Count one turn in minute ``floor(now / 60)`` unless ``limit`` turns were counted."""
    minute = math.floor(now / 60)
    row = {"project_id": project_id, "user_id": user_id, "minute": minute}
    counted = await db.first(_COUNT, {**row, "limit": limit})
    if counted is None:
        # The minute's first turn (no row yet), or the limit: make sure the row exists, then
        # count once more. The common case is one statement.
        await db.run(_NEW_COUNTER, row)
        counted = await db.first(_COUNT, {**row, "limit": limit})
    if counted is not None:
        return RateDecision(allowed=True, count=int(counted[0]), retry_after=0.0)
    found = await db.first(_COUNTED, row)
    retry_after = max(float((minute + 1) * 60) - now, 0.0)
    return RateDecision(allowed=False, count=int(found[0]) if found else 0, retry_after=retry_after)


async def prune_rate_counters(connection: Db, now: float) -> None:
    """Forget the counters of minutes before the previous one."""
    await connection.execute(
        delete(rate_counters).where(rate_counters.c.minute < math.floor(now / 60) - 1)
    )
