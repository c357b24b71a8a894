"""The tables, and the versioned steps that create and migrate them.

The database records its schema version in ``chucky_meta`` (key ``schema_version``).
``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``; version 0 is an empty
database, so a fresh database runs every step and the steps are exercised by every test.
:func:`migrate` applies the missing steps in one transaction and refuses a database newer than
:data:`SCHEMA_VERSION`.

Adding version 2: append a step (ALTER TABLE ..., new tables) and change the definitions below
to the new shape. Step 0 builds its tables from these definitions, so at the same time freeze
what it creates: give it a copy of the version-1 tables in a ``MetaData`` of its own.

Conventions: times are Unix seconds (``DOUBLE``), money microdollars and compute milliseconds
(``BIGINT``); JSON is stored as ASCII text (``json.dumps(ensure_ascii=True)``), which keeps lone
surrogates and NUL characters (PostgreSQL text refuses ``\\x00``) as escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)
from sqlalchemy.engine import Connection

from ..store import StoreError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "MigrationStep",
    "leases",
    "ledger",
    "messages",
    "meta",
    "metadata",
    "migrate",
    "project_secrets",
    "projects",
    "rate_counters",
    "read_version",
    "reservations",
    "sessions",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

meta = Table(
    "chucky_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", Double, nullable=False),
)

project_secrets = Table(
    "project_secrets",
    metadata,
    # The surrogate key orders a project's secrets oldest first, ties included.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("secret", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    UniqueConstraint("project_id", "secret"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("last_activity_at", Double, nullable=False),
    Column("state", Text, nullable=False),
    Column("spent_microdollars", BigInteger, nullable=False),
    Column("message_count", Integer, nullable=False),
    Index(None, "project_id", "user_id", "last_activity_at"),
)

messages = Table(
    "messages",
    metadata,
    Column(
        "session_id",
        Text,
        ForeignKey("sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("uuid", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("content", Text, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("window", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("used", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    # What the last reserve granted: UPDATE ... RETURNING sees only the new row.
    Column("last_grant", BigInteger, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("window", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("node_id", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("settled", Boolean, nullable=False),
    Column("settled_at", Double, nullable=True),
    Column("charged", BigInteger, nullable=True),
    Index(None, "settled", "expires_at"),
    Index(None, "node_id"),
)

leases = Table(
    "leases",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("node_id", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index(None, "project_id", "user_id"),
    Index(None, "session_id"),
    Index(None, "node_id"),
)

rate_counters = Table(
    "rate_counters",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)

_VERSION_KEY: Final = "schema_version"

MigrationStep = Callable[[Connection], None]


def _create_version_1(connection: Connection) -> None:
    metadata.create_all(
        connection,
        tables=[
            meta,
            projects,
            project_secrets,
            sessions,
            messages,
            ledger,
            reservations,
            leases,
            rate_counters,
        ],
    )


MIGRATIONS: Final[tuple[MigrationStep, ...]] = (_create_version_1,)
"""``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this code reads and writes."""


def read_version(connection: Connection) -> int:
    """The database's schema version (0: no chucky tables yet)."""
    if not inspect(connection).has_table(meta.name):
        return 0
    value = connection.execute(
        select(meta.c.value).where(meta.c.key == _VERSION_KEY)
    ).scalar_one_or_none()
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise StoreError(f"The database's schema version {value!r} is not a number") from None


def migrate(connection: Connection) -> tuple[int, int]:
    """Bring the schema to :data:`SCHEMA_VERSION` inside the caller's transaction.

    The caller holds the database's migration lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
    an advisory lock), so two processes opening one fresh database do not both create it.

    Returns:
        The versions before and after.

    Raises:
        StoreError: the database's schema is newer than this code knows (nothing is changed).
    """
    found = read_version(connection)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {found} is newer than this chucky knows "
            f"({SCHEMA_VERSION}); upgrade chucky"
        )
    if found == SCHEMA_VERSION:
        return found, found
    for step in MIGRATIONS[found:]:
        step(connection)
    connection.execute(meta.delete().where(meta.c.key == _VERSION_KEY))
    connection.execute(meta.insert().values(key=_VERSION_KEY, value=str(SCHEMA_VERSION)))
    return found, SCHEMA_VERSION
