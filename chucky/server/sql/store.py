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
import concurrent.futures
import contextlib
import logging
import secrets as secrets_module
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeVar, cast

from sqlalchemy import BigInteger, Connection, Engine, func, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...errors import InvalidStateError
from ..store import (
    Lease,
    LedgerKey,
    LedgerUsage,
    NodeRecord,
    Project,
    RateDecision,
    Reclaimed,
    Reservation,
    ResourceKind,
    SessionRecord,
    Store,
    StoreError,
    new_id,
)
from . import leases, ledger
from . import nodes as node_rows
from . import projects as project_rows
from . import sessions as session_rows
from .engines import (
    READ_ONLY,
    Backend,
    backend_of,
    create_engine,
    create_sqlite_thread_engine,
    enable_wal,
    hide_password,
    is_memory_sqlite,
)
from .schema import SCHEMA_VERSION, migrate

__all__ = ["SqlStore"]

logger = logging.getLogger("chucky.server.store")

# Errors that mean "the database failed" rather than "the caller asked for something invalid".
# OSError covers asyncpg failing to connect (refused, unreachable, timed out); UnicodeEncodeError
# text the drivers cannot encode (a lone surrogate in an id).
_DATABASE_ERRORS: Final = (SQLAlchemyError, sqlite3.Error, OSError, UnicodeEncodeError)

_MIGRATION_LOCK: Final = leases.advisory_lock_id("chucky:schema-migration")


def _describe(exc: BaseException) -> str:
    """The driver's own words for ``exc``, without SQLAlchemy's SQL and parameter dump."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


_T = TypeVar("_T")


class _Abandoned(Exception):
    """The caller was cancelled while its transaction ran: roll it back."""


class _Call:
    """One store call whose transaction runs in a task of its own."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


async def _uninterrupted(task: asyncio.Future[_T], call: _Call | None = None) -> _T:
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


class _ThreadConnection:
    """The part of :class:`AsyncConnection` the store's work functions use, over a synchronous
    connection: every await completes at once, so a work coroutine runs to its end in one
    :func:`_drive` (inside the store's thread: one hand-off per transaction, not one per
    statement as through aiosqlite)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.execute(*args, **kwargs)

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.scalar(*args, **kwargs)

    async def scalars(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.scalars(*args, **kwargs)


def _drive(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (its awaits are :class:`_ThreadConnection` calls)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    coroutine.close()
    raise RuntimeError("a store work function suspended in the store's thread")


def _dispose(engine: Engine | None) -> None:
    if engine is not None:
        engine.dispose()


class SqlStore(Store):
    """The store on SQLite (``sqlite+aiosqlite:///path``, default) or PostgreSQL
    (``postgresql+asyncpg://...``, several nodes on one database).

    Call :meth:`open` before anything else, :meth:`aclose` at the end.

    Args:
        url: The database URL; ``sqlite+aiosqlite://`` alone is an in-memory database.
        echo: Log every SQL statement (parameters stay hidden).
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._raw_url = url
        self._url = hide_password(url)
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None
        # File SQLite: whole transactions run in this one thread, on a pysqlite twin engine.
        self._thread_engine: Engine | None = None
        self._thread_reader: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._backend: Backend = "sqlite"
        # SQLite writers wait for one another anyway (BEGIN IMMEDIATE); waiting here instead of
        # in SQLite's busy handler keeps them in order and off its sleep-and-retry loop. An
        # in-memory database has one shared connection, so there readers wait too.
        self._sqlite_lock = asyncio.Lock()
        self._serialize_writes = False
        self._serialize_reads = False
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
        engine = create_engine(self._raw_url, echo=self._echo)
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
        self._serialize_writes = backend == "sqlite"
        self._serialize_reads = is_memory_sqlite(engine)
        twin = create_sqlite_thread_engine(engine)
        if twin is not None:
            self._thread_engine = twin
            self._thread_reader = twin.execution_options(**{READ_ONLY: True})
            self._thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chucky-sqlite"
            )

    async def aclose(self) -> None:
        """Release every connection (idempotent)."""
        engine, self._engine, self._reader = self._engine, None, None
        twin, self._thread_engine, self._thread_reader = self._thread_engine, None, None
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, _dispose, twin)
            thread.shutdown(wait=False)
        if engine is not None:
            await engine.dispose()

    async def _run(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool = True
    ) -> _T:
        """``work`` in one transaction: committed if it returns, rolled back if it raises."""
        engine = self._engine if write else self._reader
        if engine is None:
            raise InvalidStateError(f"The store {self._url} is not open: call open() first")
        call = _Call()
        if self._thread is not None:
            # One thread for every transaction: they are serialised there, as SQLite
            # serialises writers anyway, and each costs one hand-off.
            future = asyncio.get_running_loop().run_in_executor(
                self._thread, self._thread_transaction, work, write, call
            )
            return await _uninterrupted(future, call)
        return await _uninterrupted(
            asyncio.create_task(self._transaction(engine, work, write, call)), call
        )

    async def _transaction(
        self,
        engine: AsyncEngine,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        write: bool,
        call: _Call,
    ) -> _T:
        serialize = self._serialize_writes if write else self._serialize_reads
        guard: AbstractAsyncContextManager[None] = (
            self._sqlite_lock if serialize else contextlib.nullcontext()
        )
        async with guard:
            if call.abandoned:
                raise _Abandoned
            try:
                async with engine.begin() as connection:
                    result = await work(connection)
                    if call.abandoned:
                        raise _Abandoned
                    return result
            except _DATABASE_ERRORS as exc:
                raise StoreError(f"Database {self._url} failed: {_describe(exc)}") from exc

    def _thread_transaction(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], write: bool, call: _Call
    ) -> _T:
        engine = self._thread_engine if write else self._thread_reader
        if engine is None or call.abandoned:
            raise _Abandoned
        try:
            with engine.begin() as connection:
                pending = work(cast(AsyncConnection, _ThreadConnection(connection)))
                result: _T = _drive(cast(Coroutine[Any, Any, _T], pending))
                if call.abandoned:
                    raise _Abandoned
                return result
        except _DATABASE_ERRORS as exc:
            raise StoreError(f"Database {self._url} failed: {_describe(exc)}") from exc

    # -- projects ------------------------------------------------------------------------------

    async def create_project(
        self, name: str, secret: str, now: float, *, project_id: str | None = None
    ) -> Project:
        new_project_id = project_id or f"proj_{secrets_module.token_hex(6)}"
        return await self._run(
            lambda c: project_rows.create(c, self._backend, new_project_id, name, secret, now)
        )

    async def upsert_project(self, project_id: str, secrets: list[str], now: float) -> Project:
        return await self._run(
            lambda c: project_rows.upsert(c, self._backend, project_id, secrets, now)
        )

    async def get_project(self, project_id: str) -> Project | None:
        found = await self._run(lambda c: project_rows.load_all(c, project_id), write=False)
        return found[0] if found else None

    async def list_projects(self) -> list[Project]:
        return await self._run(lambda c: project_rows.load_all(c, None), write=False)

    async def add_secret(self, project_id: str, secret: str, now: float) -> Project:
        async def work(connection: AsyncConnection) -> Project:
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
        record.rewritten = False

    async def settle_and_save(
        self,
        record: SessionRecord,
        settlements: Sequence[tuple[Reservation, int]],
        now: float,
    ) -> list[int]:
        async def work(connection: AsyncConnection) -> list[int]:
            charged = [
                await ledger.settle(connection, reservation.reservation_id, actual, now)
                for reservation, actual in settlements
            ]
            await session_rows.save(connection, record)
            return charged

        charged = await self._run(work)
        record.persisted = len(record.transcript)
        record.rewritten = False
        return charged

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
                self._backend,
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
        async def work(connection: AsyncConnection) -> None:
            await leases.extend(connection, node_id, now + ttl)
            await ledger.extend(connection, node_id, now + ttl)
            await node_rows.touch(connection, node_id, now)

        await self._run(work)

    async def recover(self, now: float) -> tuple[int, int]:
        async def work(connection: AsyncConnection) -> tuple[int, int]:
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
            lambda c: leases.count_turn(c, self._backend, project_id, user_id, now=now, limit=limit)
        )

    def __repr__(self) -> str:
        return f"SqlStore({self._url!r}, schema_version={SCHEMA_VERSION})"
