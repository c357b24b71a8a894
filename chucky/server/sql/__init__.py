"""The SQL implementation of :class:`~chucky.server.store.Store` (SQLAlchemy 2 Core, and plain
SQL on a turn's hot path: :mod:`.db`).

One code base for SQLite (``aiosqlite``; the embedded default, zero setup) and PostgreSQL
(``asyncpg``; several ``chucky serve`` nodes sharing one database)::

    store = SqlStore(default_database_url())  # or "postgresql+asyncpg://user:pw@host/chucky"
    await store.open()  # creates or migrates the schema
    ...
    await store.aclose()
"""

from __future__ import annotations

from .engines import default_database_url
from .schema import SCHEMA_VERSION
from .store import SqlStore

__all__ = ["SCHEMA_VERSION", "SqlStore", "default_database_url"]
