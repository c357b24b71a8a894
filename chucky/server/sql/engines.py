"""Turning a database URL into a configured SQLAlchemy async engine.

Two engines are supported, with the same SQL:

* SQLite through ``aiosqlite`` (``sqlite+aiosqlite:///path/chucky.db``; no path = in memory).
  Every connection runs with ``foreign_keys=ON`` and a busy timeout; a file database is put in
  WAL mode when the store opens (:func:`enable_wal`). The ``sqlite3`` module's own transaction
  handling is switched off and every transaction starts with ``BEGIN IMMEDIATE`` (the recipe
  of SQLAlchemy's SQLite dialect documentation, "Enabling Non-Legacy SQLite Transactional
  Modes"): a transaction that reads then writes holds the write lock from its first statement,
  so two of them never deadlock on the lock upgrade ("database is locked"); the second waits
  for the first. Read-only transactions (the :data:`READ_ONLY` execution option) start with a
  plain ``BEGIN`` and, under WAL, never wait.
* PostgreSQL through ``asyncpg`` (``postgresql+asyncpg://user:password@host/db``), at the
  default ``READ COMMITTED`` isolation.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Final, Literal

import platformdirs
from sqlalchemy import Engine, Table, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ..store import StoreError

__all__ = [
    "BUSY_TIMEOUT",
    "DATA_DIR_ENV",
    "READ_ONLY",
    "Backend",
    "Synchronous",
    "backend_of",
    "create_engine",
    "default_database_url",
    "enable_wal",
    "hide_password",
    "insert_for",
    "is_memory_sqlite",
]

Backend = Literal["sqlite", "postgresql"]

Synchronous = Literal["normal", "full"]
"""SQLite's ``PRAGMA synchronous`` for a file database in WAL mode (see :func:`create_engine`)."""

DATA_DIR_ENV: Final = "CHUCKY_DATA_DIR"
"""Environment variable naming the directory of the default SQLite database."""

BUSY_TIMEOUT: Final = 30.0
"""Seconds a SQLite transaction waits for another process's write lock before failing."""

READ_ONLY: Final = "chucky_read_only"
"""Execution option of an engine whose transactions only read (SQLite: a deferred ``BEGIN``)."""

# PostgreSQL: enough connections for every concurrent store call of a busy node; beyond this,
# calls queue in the pool rather than fail.
_PG_POOL_SIZE: Final = 10
_PG_MAX_OVERFLOW: Final = 20

_DRIVERS: Final[dict[str, tuple[Backend, str]]] = {
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
    "sqlite+aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "postgres": ("postgresql", "postgresql+asyncpg"),
    "postgresql": ("postgresql", "postgresql+asyncpg"),
    "postgresql+asyncpg": ("postgresql", "postgresql+asyncpg"),
}


def default_database_url() -> str:
    """The SQLite database used when none is configured, its directory created.

    ``$CHUCKY_DATA_DIR/chucky.db`` when the variable is set, else ``chucky.db`` in the user's
    data directory (``platformdirs.user_data_dir("chucky")``, e.g. ``~/.local/share/chucky``).
    """
    configured = os.environ.get(DATA_DIR_ENV)
    directory = Path(configured) if configured else Path(platformdirs.user_data_dir("chucky"))
    directory = directory.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return URL.create("sqlite+aiosqlite", database=str(directory / "chucky.db")).render_as_string(
        hide_password=False
    )


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL SQLAlchemy can parse: still never show what looks like a password.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def backend_of(engine: AsyncEngine) -> Backend:
    """Which of the supported databases ``engine`` talks to."""
    return "postgresql" if engine.dialect.name == "postgresql" else "sqlite"


def insert_for(backend: Backend, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An ``INSERT`` into ``table`` that can take ``ON CONFLICT`` (the one dialect-specific bit)."""
    if backend == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def create_engine(
    url: str, *, echo: bool = False, synchronous: Synchronous = "normal"
) -> AsyncEngine:
    """A configured engine for ``url`` (nothing is connected yet).

    ``sqlite://`` and ``postgresql://`` pick their async drivers (``aiosqlite``, ``asyncpg``).

    ``synchronous`` (SQLite): in WAL mode, ``normal`` writes a commit to the write-ahead log
    without waiting for the disk: a committed transaction survives the process being killed
    (``kill -9``, a crash) but may be lost, never half-applied, if the machine loses power or
    its kernel crashes before the next checkpoint. ``full`` waits for the disk (an ``fsync``)
    at every commit: it also survives power loss, at the cost of that ``fsync`` per commit
    (per batch of turns, see :mod:`.group_commit`).

    Raises:
        StoreError: the URL is malformed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"Invalid database URL {hide_password(url)!r}: {exc}") from exc
    known = _DRIVERS.get(parsed.drivername)
    if known is None:
        raise StoreError(
            f"Unsupported database URL {parsed.render_as_string(hide_password=True)!r}: use "
            "sqlite+aiosqlite:///path/to/chucky.db or postgresql+asyncpg://user@host/database"
        )
    backend, drivername = known
    parsed = parsed.set(drivername=drivername)
    # Statement parameters hold secrets and transcripts: keep them out of errors and logs.
    options: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if backend == "postgresql":
        options.update(pool_size=_PG_POOL_SIZE, max_overflow=_PG_MAX_OVERFLOW)
        return create_async_engine(parsed, **options)
    memory = parsed.database in (None, "", ":memory:")
    if not memory and not parsed.query.get("uri"):
        # Said plainly here; sqlite3 would only say "unable to open database file" (and
        # aiosqlite's worker thread can outlive a failed connect).
        directory = Path(str(parsed.database)).absolute().parent
        if not directory.is_dir():
            raise StoreError(
                f"Cannot open the database {parsed.render_as_string(hide_password=True)}: "
                f"the directory {directory} does not exist"
            )
    if memory:
        # One connection shared by every caller, or each would see its own empty database.
        options["poolclass"] = StaticPool
    options["connect_args"] = {"timeout": BUSY_TIMEOUT}
    # Every use is ``engine.begin()``, which ends in COMMIT or ROLLBACK: the pool's own rollback
    # on return would be one more round trip to aiosqlite's thread per transaction.
    options["pool_reset_on_return"] = None
    engine = create_async_engine(parsed, **options)
    _configure_sqlite(engine, synchronous)
    return engine


def is_memory_sqlite(engine: AsyncEngine) -> bool:
    """Whether ``engine`` is one in-memory SQLite database behind a single shared connection."""
    return backend_of(engine) == "sqlite" and engine.url.database in (None, "", ":memory:")


async def enable_wal(engine: AsyncEngine) -> None:
    """Put a SQLite file database in WAL mode (persistent: once per database file).

    Readers then never wait for the writer. Switching needs a moment without other
    connections, and SQLite answers "database is locked" at once rather than waiting (its busy
    handler is not used for this), so this retries for up to :data:`BUSY_TIMEOUT` seconds.

    Raises:
        sqlite3.Error: the switch failed, or the database stayed busy.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_TIMEOUT
    delay = 0.005
    async with engine.connect() as connection:
        # The driver's connection, outside SQLAlchemy's transaction: the journal mode cannot
        # change inside one.
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with driver.execute("PRAGMA journal_mode") as cursor:
            current = await cursor.fetchone()
        if current is not None and str(current[0]).lower() == "wal":
            return
        while True:
            try:
                async with driver.execute("PRAGMA journal_mode = WAL") as cursor:
                    row = await cursor.fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            if row is None or str(row[0]).lower() != "wal":
                raise sqlite3.OperationalError(f"SQLite refused WAL mode (journal mode {row})")
            return


def create_sqlite_thread_engine(
    engine: AsyncEngine, *, synchronous: Synchronous = "normal"
) -> Engine | None:
    """A synchronous twin (``pysqlite``) of a file SQLite ``engine``, configured the same way,
    for running whole transactions in the store's own thread; ``None`` for an in-memory
    database (a second engine would see another, empty database)."""
    if is_memory_sqlite(engine) or backend_of(engine) != "sqlite":
        return None
    url = engine.url.set(drivername="sqlite+pysqlite")
    twin = create_sync_engine(
        url,
        hide_parameters=True,
        pool_reset_on_return=None,
        connect_args={"timeout": BUSY_TIMEOUT, "check_same_thread": False},
    )
    _configure_sqlite(twin, synchronous)
    return twin


def _configure_sqlite(engine: AsyncEngine | Engine, synchronous: Synchronous) -> None:
    busy_ms = int(BUSY_TIMEOUT * 1000)
    level = {"normal": "NORMAL", "full": "FULL"}[synchronous]

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop sqlite3 from issuing BEGIN (and COMMIT before DDL) itself: on_begin does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA synchronous = {level}")
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        if getattr(connection.connection.driver_connection, "in_transaction", False):
            return  # begun on the driver (by the group commit): join it
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    event.listen(target, "connect", on_connect)
    event.listen(target, "begin", on_begin)
