"""What the store's SQL runs on: one interface over both engines, Core and plain SQL.

Every store operation is a *work function* ``async def work(db: Db) -> T`` run in one
transaction. :class:`Db` gives it two ways to speak SQL:

* **SQLAlchemy Core** (:meth:`Db.execute`, :meth:`Db.scalar`, :meth:`Db.scalars`): the schema,
  migrations and everything off the hot path, written once for both dialects.
* **Plain SQL** (:class:`Sql`, run by :meth:`Db.rows`, :meth:`Db.first`, :meth:`Db.run`): the
  statements of every turn (the ledger, the rate count, the session's save). The ledger's grant
  built with Core at each execution, as the store did, cost ~310 us of CPU; built once, ~24 us;
  the same SQL handed to ``sqlite3``, ~5 us (``bench/bench_sql.py``; a turn runs a dozen). One
  text serves both engines: ``:name`` parameters (``sqlite3``'s own style, numbered for
  asyncpg), ``"window"`` quoted (reserved in
PostgreSQL), ``ON CONFLICT`` and ``RETURNING`` (SQLite 3.35+).

Three implementations: :class:`AsyncDb` over an
:class:`~sqlalchemy.ext.asyncio.AsyncConnection` (PostgreSQL through asyncpg; in-memory SQLite
through aiosqlite); :class:`ThreadDb` over a synchronous connection in the store's own thread
(file SQLite through ``sqlite3``), where plain SQL goes straight to the driver; and
:class:`DriverDb`, plain SQL only, straight on asyncpg (a turn's writes on PostgreSQL).
Every ``await`` of a :class:`ThreadDb` completes at once, so a work function runs to its end
in one :func:`drive`.
"""

from __future__ import annotations

import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["AsyncDb", "Db", "DriverDb", "Params", "Sql", "ThreadDb", "drive"]

_T = TypeVar("_T")

Params = Mapping[str, Any]


_PARAMETER: Final = re.compile(r"(?<![:\w]):(\w+)")


class Sql:
    """One plain SQL statement with ``:name`` parameters, prepared for both engines: ``text``
    for ``sqlite3``, ``numbered`` (``$1``...) and ``names`` for asyncpg."""

    __slots__ = ("clause", "names", "numbered", "text")

    def __init__(self, statement: str) -> None:
        self.text: Final = " ".join(statement.split())
        self.clause: Final[TextClause] = text(self.text)
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.numbered: Final = _PARAMETER.sub(number, self.text)
        self.names: Final = tuple(names)

    def arguments(self, params: Params) -> list[Any]:
        """``params`` in the order of ``numbered``'s placeholders."""
        return [params[name] for name in self.names]

    def __repr__(self) -> str:
        return f"Sql({self.text!r})"


class Db(ABC):
    """The connection a work function runs on, inside its transaction."""

    __slots__ = ()

    folds: bool = False
    """Whether a data-modifying statement can sit in a ``WITH`` clause (PostgreSQL): two
    dependent writes are then one statement, one round trip."""

    # -- SQLAlchemy Core -------------------------------------------------------------------

    @abstractmethod
    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        """Run a Core statement; its :class:`~sqlalchemy.engine.Result`."""

    @abstractmethod
    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        """Run a Core statement; the first column of its first row, or ``None``."""

    @abstractmethod
    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        """Run a Core statement; its first column as a :class:`~sqlalchemy.engine.ScalarResult`."""

    # -- plain SQL -------------------------------------------------------------------------

    @abstractmethod
    async def rows(self, sql: Sql, params: Params) -> Sequence[Sequence[Any]]:
        """Every row of a statement that returns rows (a ``SELECT``, a ``... RETURNING``)."""

    async def first(self, sql: Sql, params: Params) -> Sequence[Any] | None:
        """The first row, or ``None``."""
        found = await self.rows(sql, params)
        return found[0] if found else None

    @abstractmethod
    async def run(self, sql: Sql, params: Params | Sequence[Params]) -> None:
        """Run a statement that returns nothing; a list of parameter sets runs it for each."""


class AsyncDb(Db):
    """:class:`Db` over an :class:`~sqlalchemy.ext.asyncio.AsyncConnection`."""

    __slots__ = ("_connection", "folds")

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.folds = connection.dialect.name == "postgresql"

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return await self._connection.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return await self._connection.scalar(statement, parameters)

    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        return await self._connection.scalars(statement, parameters)

    async def rows(self, sql: Sql, params: Params) -> Sequence[Sequence[Any]]:
        return (await self._connection.execute(sql.clause, dict(params))).all()

    async def run(self, sql: Sql, params: Params | Sequence[Params]) -> None:
        if isinstance(params, Mapping):
            await self._connection.execute(sql.clause, dict(params))
        elif params:
            await self._connection.execute(sql.clause, [dict(p) for p in params])


class ThreadDb(Db):
    """:class:`Db` over a synchronous connection, in the thread that owns it; plain SQL goes
    to its ``sqlite3`` connection directly (same transaction)."""

    __slots__ = ("_connection", "_driver")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        self._driver = driver

    @property
    def connection(self) -> Connection:
        """The SQLAlchemy connection."""
        return self._connection

    @property
    def driver(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection underneath."""
        return self._driver

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.scalar(statement, parameters)

    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.scalars(statement, parameters)

    async def rows(self, sql: Sql, params: Params) -> Sequence[Sequence[Any]]:
        return self._driver.execute(sql.text, params).fetchall()

    async def run(self, sql: Sql, params: Params | Sequence[Params]) -> None:
        if isinstance(params, Mapping):
            self._driver.execute(sql.text, params)
        elif params:
            self._driver.executemany(sql.text, params)


class DriverDb(Db):
    """:class:`Db` over an asyncpg connection, in a transaction begun on it: plain SQL only
    (a turn's writes, :meth:`~chucky.server.sql.store.SqlStore.write_turn`), with asyncpg's
    prepared-statement cache. Through SQLAlchemy's asyncpg adapter instead, a turn cost the
    server 4.4 ms of CPU, 3.0 ms this way (``bench/bench_server.py``)."""

    __slots__ = ("_connection",)

    folds = True

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        raise TypeError("plain SQL only: this work runs on the driver's connection")

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        raise TypeError("plain SQL only: this work runs on the driver's connection")

    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        raise TypeError("plain SQL only: this work runs on the driver's connection")

    async def rows(self, sql: Sql, params: Params) -> Sequence[Sequence[Any]]:
        found: Sequence[Sequence[Any]] = await self._connection.fetch(
            sql.numbered, *sql.arguments(params)
        )
        return found

    async def run(self, sql: Sql, params: Params | Sequence[Params]) -> None:
        if isinstance(params, Mapping):
            await self._connection.execute(sql.numbered, *sql.arguments(params))
        elif params:
            await self._connection.executemany(sql.numbered, [sql.arguments(p) for p in params])


def drive(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a work coroutine that never suspends (its awaits are :class:`ThreadDb` calls)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    coroutine.close()
    raise RuntimeError("a store work function suspended (it may only await its Db)")
