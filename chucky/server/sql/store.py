""":class:`SqlStore`: the :class:`~chucky.server.store.Store` on SQLite or PostgreSQL.

Every method is one transaction. How each promise of atomicity is kept is told where the SQL
is: the ledger and the window anchors in :mod:`.ledger`, leases and rate counters in
:mod:`.leases`, nodes in :mod:`.nodes`, projects in :mod:`.projects`, sessions in
:mod:`.sessions`, the schema and its migrations in :mod:`.schema`, the engines' settings in
:mod:`.engines`. This module owns the
lifecycle, the transactions and the boundary: every SQLAlchemy or driver error leaves as a
:class:`~chucky.server.store.StoreError` with the cause chained; the typed errors the interface
promises (``ValidationError``, ``SessionError``, ``ConcurrencyLimitError``) pass through.

Cancellation never interrupts a transaction mid-statement. A caller cancelled while its
transaction runs waits for the statement in flight (milliseconds), the transaction is rolled
back as if never begun, and then the caller's ``CancelledError`` goes on. Interrupting it
instead makes SQLAlchemy throw the connection away: on PostgreSQL a reconnect per cancelled
call (and asyncpg's "unexpected connection_lost" noise); on SQLite worse, as ``sqlite3`` still
holds a statement of the dropped connection, which then lingers with the write lock held, and
every later writer fails with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets as secrets_module
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeVar

import asyncpg
from sqlalchemy import BigInteger, func, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..._redact import redacting_logger
from ...errors import InvalidStateError
from ...tokens import check_project_secret
from ..store import (
    Lease,
    LedgerKey,
    LedgerUsage,
    NodeRecord,
    Project,
    ProjectDeletion,
    RateDecision,
    Reclaimed,
    Reservation,
    ReserveRequest,
    ResourceKind,
    SessionRecord,
    Store,
    StoreError,
    TurnWrite,
    TurnWritten,
    new_id,
)
from . import leases, ledger
from . import nodes as node_rows
from . import projects as project_rows
from . import sessions as session_rows
from .db import AsyncDb, Db, DriverDb
from .engines import (
    BUSY_TIMEOUT,
    READ_ONLY,
    Backend,
    Synchronous,
    backend_of,
    create_engine,
    create_sqlite_thread_engine,
    enable_wal,
    hide_password,
    is_memory_sqlite,
)
from .group_commit import Abandoned, GroupCommit, Job
from .schema import SCHEMA_VERSION, migrate

__all__ = ["SqlStore"]

logger = redacting_logger("chucky.server.store")

# Errors that mean "the database failed" rather than "the caller asked for something invalid".
# asyncpg's own errors come from the turn writes run straight on it. OSError covers asyncpg
# failing to connect (refused, unreachable, timed out); UnicodeEncodeError
# text the drivers cannot encode (a lone surrogate in an id).
_DATABASE_ERRORS: Final = (
    SQLAlchemyError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    UnicodeEncodeError,
)

_MIGRATION_LOCK: Final = leases.advisory_lock_id("chucky:schema-migration")


def _describe(exc: BaseException) -> str:
    """The driver's own words for ``exc``, without SQLAlchemy's SQL and parameter dump."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


_T = TypeVar("_T")


class _Refused(Exception):
    """A turn write the rate limit or the budget refused: roll it back, report ``written``."""

    def __init__(self, written: TurnWritten) -> None:
        super().__init__("refused")
        self.written = written


def _ledger_order(write: TurnWrite) -> list[tuple[tuple[str, ...], int, int]]:
    """The ledger steps of ``write`` as (row, 0 settle / 1 reserve, index), in row order."""
    steps: list[tuple[tuple[str, ...], int, int]] = [
        ((r.key.project_id, r.key.user_id, r.key.window, r.kind), 0, i)
        for i, (r, _) in enumerate(write.settle)
    ]
    steps += [
        ((r.key.project_id, r.key.user_id, r.key.window, r.kind), 1, i)
        for i, r in enumerate(write.reserve)
    ]
    steps.sort()
    return steps


class _Call:
    """One store call whose transaction runs in a task of its own."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


async def _uninterrupted(task: asyncio.Future[_T], call: _Call | Job[Any] | None = None) -> _T:
    """``task``'s result; if the caller is cancelled meanwhile, mark ``call`` abandoned, wait
    for ``task`` to end all the same, then let the cancellation go on."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if call is not None:
            call.abandoned = True
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the caller's cancellation is what goes on
        raise


class SqlStore(Store):
    """The store on SQLite (``sqlite+aiosqlite:///path``, default) or PostgreSQL
    (``postgresql+asyncpg://...``, several nodes on one database).

    Call :meth:`open` before anything else, :meth:`aclose` at the end.

    Args:
        url: The database URL; ``sqlite+aiosqlite://`` alone is an in-memory database.
        echo: Log every SQL statement (parameters stay hidden).
    """

    def __init__(
        self, url: str, *, echo: bool = False, sqlite_synchronous: Synchronous = "normal"
    ) -> None:
        self._raw_url = url
        self._url = hide_password(url)
        self._echo = echo
        self._synchronous: Synchronous = sqlite_synchronous
        self._engine: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None
        # File SQLite: every transaction goes through the group commit (inline on the event loop
        # when its thread is idle, else batched in the thread), on a pysqlite twin engine.
        self._group: GroupCommit | None = None
        self._backend: Backend = "sqlite"
        # In-memory SQLite has one shared connection: its transactions wait for one another.
        self._sqlite_lock = asyncio.Lock()
        self._serialize = False
        self._open_lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._url

    @property
    def backend(self) -> Backend:
        """``sqlite`` or ``postgresql``."""
        return self._backend

    async def open(self) -> None:
        """Connect, then create or migrate the schema (idempotent).

        Raises:
            StoreError: the URL is unusable, the database cannot be reached, or its schema is
                newer than this version of chucky.
        """
        async with self._open_lock:
            if self._engine is None:
                await _uninterrupted(asyncio.create_task(self._open()))

    async def _open(self) -> None:
        engine = create_engine(self._raw_url, echo=self._echo, synchronous=self._synchronous)
        backend = backend_of(engine)
        try:
            if backend == "sqlite" and not is_memory_sqlite(engine):
                await enable_wal(engine)
            async with engine.begin() as connection:
                if backend == "postgresql":
                    # Two nodes starting on one fresh database: the second waits, then finds
                    # the schema made. (SQLite: BEGIN IMMEDIATE has the same effect.)
                    await connection.execute(
                        select(func.pg_advisory_xact_lock(literal(_MIGRATION_LOCK, BigInteger)))
                    )
                before, after = await connection.run_sync(migrate)
        except BaseException as exc:
            await engine.dispose()
            if isinstance(exc, _DATABASE_ERRORS):
                raise StoreError(f"Cannot open the database {self._url}: {_describe(exc)}") from exc
            raise
        if before != after:
            logger.info("database %s: schema version %d -> %d", self._url, before, after)
        self._engine = engine
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self._backend = backend
        self._serialize = is_memory_sqlite(engine)
        twin = create_sqlite_thread_engine(engine, synchronous=self._synchronous)
        if twin is not None:
            self._group = GroupCommit(
                twin,
                is_database_error=lambda exc: isinstance(exc, _DATABASE_ERRORS),
                failed=self._failed,
                # A commit that waits for the disk (FULL) must not run on the event loop.
                inline=self._synchronous == "normal",
                busy_timeout_ms=int(BUSY_TIMEOUT * 1000),
            )

    async def aclose(self) -> None:
        """Release every connection (idempotent)."""
        engine, self._engine, self._reader = self._engine, None, None
        group, self._group = self._group, None
        if group is not None:
            await group.aclose()
        if engine is not None:
            await engine.dispose()

    def _failed(self, exc: BaseException) -> StoreError:
        error = StoreError(f"Database {self._url} failed: {_describe(exc)}")
        error.__cause__ = exc
        return error

    async def _run(
        self, work: Callable[[Db], Awaitable[_T]], *, write: bool = True, plain: bool = False
    ) -> _T:
        """``work`` in one transaction: committed if it returns, rolled back if it raises.

        ``plain``: ``work`` speaks plain SQL only (:class:`~.db.Sql`); on PostgreSQL it then
        runs straight on asyncpg (:class:`~.db.DriverDb`).
        """
        engine = self._engine if write else self._reader
        if engine is None:
            raise InvalidStateError(f"The store {self._url} is not open: call open() first")
        if self._group is not None:
            job = self._group.submit(work)
            return await _uninterrupted(job.future, job)
        call = _Call()
        if plain and self._backend == "postgresql":
            transaction = self._driver_transaction(engine, work, call)
        else:
            transaction = self._transaction(engine, work, call)
        return await _uninterrupted(asyncio.create_task(transaction), call)

    async def _driver_transaction(
        self, engine: AsyncEngine, work: Callable[[Db], Awaitable[_T]], call: _Call
    ) -> _T:
        if call.abandoned:
            raise Abandoned
        try:
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                try:
                    async with driver.transaction():
                        result = await work(DriverDb(driver))
                        if call.abandoned:
                            raise Abandoned
                        return result
                except _DATABASE_ERRORS:
                    if driver.is_closed():
                        await connection.invalidate()
                    raise
        except _DATABASE_ERRORS as exc:
            raise self._failed(exc) from exc

    async def _transaction(
        self, engine: AsyncEngine, work: Callable[[Db], Awaitable[_T]], call: _Call
    ) -> _T:
        guard: AbstractAsyncContextManager[None] = (
            self._sqlite_lock if self._serialize else contextlib.nullcontext()
        )
        async with guard:
            if call.abandoned:
                raise Abandoned
            try:
                async with engine.begin() as connection:
                    result = await work(AsyncDb(connection))
                    if call.abandoned:
                        raise Abandoned
                    return result
            except _DATABASE_ERRORS as exc:
                raise self._failed(exc) from exc

    # -- projects ------------------------------------------------------------------------------

    async def create_project(
        self, name: str, secret: str, now: float, *, project_id: str | None = None
    ) -> Project:
        new_project_id = project_id or f"proj_{secrets_module.token_hex(6)}"
        check_project_secret(secret, project_id=new_project_id)
        return await self._run(
            lambda c: project_rows.create(c, self._backend, new_project_id, name, secret, now)
        )

    async def upsert_project(self, project_id: str, secrets: list[str], now: float) -> Project:
        for secret in secrets:
            check_project_secret(secret, project_id=project_id)
        return await self._run(
            lambda c: project_rows.upsert(c, self._backend, project_id, secrets, now)
        )

    async def get_project(self, project_id: str) -> Project | None:
        found = await self._run(lambda c: project_rows.load_all(c, project_id), write=False)
        return found[0] if found else None

    async def list_projects(self) -> list[Project]:
        return await self._run(lambda c: project_rows.load_all(c, None), write=False)

    async def add_secret(self, project_id: str, secret: str, now: float) -> Project:
        check_project_secret(secret, project_id=project_id)

        async def work(connection: Db) -> Project:
            if await project_rows.lock(connection, project_id) is None:
                raise project_rows.invalid(f"No project {project_id}")
            await project_rows.accept_secrets(connection, self._backend, project_id, [secret], now)
            return await project_rows.load(connection, project_id)

        return await self._run(work)

    async def revoke_secrets(self, project_id: str, prefix: str, now: float) -> int:
        if not prefix:
            raise project_rows.invalid(
                "Give the start of the secret to revoke (an empty prefix matches all)"
            )
        return await self._run(lambda c: project_rows.revoke(c, project_id, prefix, now))

    async def delete_project(self, project_id: str) -> ProjectDeletion:
        return await self._run(lambda c: project_rows.delete(c, project_id))

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        project_id: str,
        user_id: str,
        model: str,
        now: float,
        *,
        session_id: str | None = None,
    ) -> SessionRecord:
        record = SessionRecord(
            session_id=session_id or new_id(),
            project_id=project_id,
            user_id=user_id,
            model=model,
            created_at=now,
            last_activity_at=now,
        )
        await self._run(lambda c: session_rows.insert(c, record))
        record.persisted = len(record.transcript)
        return record

    async def get_session(
        self, session_id: str, project_id: str, user_id: str
    ) -> SessionRecord | None:
        return await self._run(
            lambda c: session_rows.load(c, session_id, project_id, user_id), write=False
        )

    async def latest_session(self, project_id: str, user_id: str) -> SessionRecord | None:
        return await self._run(lambda c: session_rows.latest(c, project_id, user_id), write=False)

    async def save_session(self, record: SessionRecord) -> None:
        await self._run(lambda c: session_rows.save(c, record))
        # Only once committed: a failed save is retried in full.
        record.persisted = len(record.transcript)
        record.rewritten = record.turns_changed = False

    async def delete_session(
        self, session_id: str, project_id: str, user_id: str, now: float
    ) -> bool:
        return await self._run(
            lambda c: session_rows.delete(c, session_id, project_id, user_id, now)
        )

    async def write_turn(self, write: TurnWrite) -> TurnWritten:
        session = write.session

        async def work(connection: Db) -> TurnWritten:
            rate = None
            if write.rate_limit is not None:
                assert session is not None, "a rate count needs the session's owner"
                rate = await leases.count_turn(
                    connection,
                    session.project_id,
                    session.user_id,
                    now=write.now,
                    limit=write.rate_limit,
                )
                if not rate.allowed:
                    raise _Refused(TurnWritten(rate=rate))
            grants: list[Reservation | None] = [None] * len(write.reserve)
            charged = [0] * len(write.settle)
            # Ledger rows in one order in every transaction (PostgreSQL: two turns of a user
            # locking its ``ai`` and ``compute`` rows in opposite orders would deadlock); on a
            # row, settlements before reservations (what a finished call frees is available).
            for _, step, index in _ledger_order(write):
                if step == 0:
                    reservation, actual = write.settle[index]
                    charged[index] = await ledger.settle(
                        connection, reservation.reservation_id, actual, write.now
                    )
                    continue
                request = write.reserve[index]
                grant = await self._reserve_in(connection, request, write)
                if grant is None:
                    raise _Refused(TurnWritten(rate=rate, denied=request))
                grants[index] = grant
            if session is not None:
                await session_rows.save(connection, session)
            return TurnWritten(
                rate=rate, grants=tuple(g for g in grants if g is not None), charged=tuple(charged)
            )

        try:
            written = await self._run(work, plain=True)
        except _Refused as refused:
            denied = refused.written.denied
            if denied is None:
                return refused.written
            # The counters as they are, this write rolled back (the error frame shows them).
            usage = await self.usage(denied.key, denied.kind)
            return dataclasses.replace(refused.written, usage=usage)
        if session is not None:
            session.persisted = len(session.transcript)
            session.rewritten = session.turns_changed = False
        return written

    async def _reserve_in(
        self, connection: Db, request: ReserveRequest, write: TurnWrite
    ) -> Reservation | None:
        return await ledger.reserve(
            connection,
            request.key,
            request.kind,
            want=request.want,
            limit=request.limit,
            minimum=request.minimum,
            now=write.now,
            ttl=write.ttl,
            node_id=write.node_id,
        )

    # -- the budget ledger ---------------------------------------------------------------------

    async def reserve(
        self,
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
        return await self._run(
            lambda c: ledger.reserve(
                c,
                key,
                kind,
                want=want,
                limit=limit,
                minimum=minimum,
                now=now,
                ttl=ttl,
                node_id=node_id,
            )
        )

    async def settle(self, reservation: Reservation, actual: int, now: float) -> int:
        return await self._run(lambda c: ledger.settle(c, reservation.reservation_id, actual, now))

    async def usage(self, key: LedgerKey, kind: ResourceKind) -> LedgerUsage:
        return await self._run(lambda c: ledger.usage(c, key, kind), write=False)

    async def window_anchor(
        self, project_id: str, user_id: str, window: str, proposed: float
    ) -> float:
        # Read first: every connection asks once, and only a user's first one writes.
        found = await self._run(
            lambda c: ledger.find_anchor(c, project_id, user_id, window), write=False
        )
        if found is not None:
            return found
        return await self._run(
            lambda c: ledger.store_anchor(c, self._backend, project_id, user_id, window, proposed)
        )

    # -- concurrency leases --------------------------------------------------------------------

    async def acquire_lease(
        self,
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
        return await self._run(
            lambda c: leases.acquire(
                c,
                self._backend,
                project_id,
                user_id,
                session_id,
                node_id=node_id,
                now=now,
                ttl=ttl,
                user_limit=user_limit,
                project_limit=project_limit,
            )
        )

    async def release_lease(self, lease: Lease) -> None:
        await self._run(lambda c: leases.release(c, lease.lease_id))

    async def heartbeat(self, node_id: str, now: float, ttl: float) -> None:
        async def work(connection: Db) -> None:
            await leases.extend(connection, node_id, now + ttl)
            await ledger.extend(connection, self._backend, node_id, now + ttl)
            await node_rows.touch(connection, node_id, now)

        await self._run(work)

    async def recover(self, now: float) -> tuple[int, int]:
        async def work(connection: Db) -> tuple[int, int]:
            dropped = await leases.drop_expired(connection, now)
            settled = await ledger.recover_expired(connection, now)
            await leases.prune_rate_counters(connection, now)
            await node_rows.forget_silent(connection, now)
            return dropped, settled

        return await self._run(work)

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(self, node: NodeRecord, now: float) -> None:
        await self._run(lambda c: node_rows.register(c, self._backend, node, now))

    async def deregister_node(self, node_id: str) -> None:
        await self._run(lambda c: node_rows.remove(c, node_id))

    async def reclaim_nodes(
        self, host: str, is_dead: Callable[[NodeRecord], bool], now: float
    ) -> Reclaimed:
        # The proof is read-only and made outside any transaction (OS calls); only the dead
        # are written, which is rare: the common case costs one read.
        found = await self._run(lambda c: node_rows.on_host(c, host), write=False)
        dead = [node.node_id for node in found if is_dead(node)]
        if not dead:
            return Reclaimed(nodes=0, leases=0, reservations=0)
        return await self._run(lambda c: node_rows.reclaim(c, dead, now))

    async def count_active(self, project_id: str, user_id: str | None, now: float) -> int:
        return await self._run(
            lambda c: leases.count_live(c, project_id, user_id, now), write=False
        )

    # -- rate counters -------------------------------------------------------------------------

    async def count_turn(
        self, project_id: str, user_id: str, *, now: float, limit: int
    ) -> RateDecision:
        return await self._run(
            lambda c: leases.count_turn(c, project_id, user_id, now=now, limit=limit)
        )

    def __repr__(self) -> str:
        return f"SqlStore({self._url!r}, schema_version={SCHEMA_VERSION})"
