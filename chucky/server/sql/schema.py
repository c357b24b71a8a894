"""The tables, and the versioned steps that create and migrate them.

The database records its schema version in ``chucky_meta`` (key ``schema_version``).
``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``; version 0 is an empty
database, so a fresh database runs every step and the steps are exercised by every test.
:func:`migrate` applies the missing steps in one transaction and refuses a database newer than
:data:`SCHEMA_VERSION`.

Versions:

1. The first schema. Step 0 creates it from frozen definitions (:mod:`.schema_v1`).
2. Budget anchors and nodes (step 1, :func:`upgrade_to_version_2`): ``budget_anchors`` holds the
   anchor of each user's windows, one per (project, user, window type), fixed by the first
   token seen; ``nodes`` the server processes, so a process restarted on the same host can
   prove its predecessor dead and take its leases back at once. Ledger keys of ``lifetime``
   windows lose their start (``lifetime:<start>`` -> ``lifetime``).

3. Turn ends (step 2, :func:`upgrade_to_version_3`): ``sessions.turns`` holds the ends of a
   session's last turns that had a client turn id (``turnId``, docs/protocol.md section 10), so
   a turn a client re-sends after a reconnect is answered from the store, not run twice.

Adding version N + 1: append a step (ALTER TABLE ..., new tables, data moves) and change the
definitions below to the new shape. The steps must keep creating what they created when they
were written: step 1 creates its two tables from the definitions below, so when one of them
changes, give step 1 a frozen copy first (as :mod:`.schema_v1` is for step 0).

Conventions: times are Unix seconds (``DOUBLE``), money microdollars and compute milliseconds
(``BIGINT``); JSON is stored as ASCII text (``json.dumps(ensure_ascii=True)``), which keeps lone
surrogates and NUL characters (PostgreSQL text refuses ``\\x00``) as escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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
    cast,
    delete,
    func,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from ...errors import ValidationError
from ...windows import LIFETIME_KEY, WINDOWS, parse_window_start, to_unix
from ..store import StoreError
from . import schema_v1

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "MigrationStep",
    "budget_anchors",
    "leases",
    "ledger",
    "messages",
    "meta",
    "metadata",
    "migrate",
    "nodes",
    "project_secrets",
    "projects",
    "rate_counters",
    "read_version",
    "reservations",
    "sessions",
    "upgrade_to_version_2",
    "upgrade_to_version_3",
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
    # The ends of the last turns with a client turn id (SessionRecord.turns), JSON; version 3.
    Column("turns", Text, nullable=False, server_default="{}"),
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

budget_anchors = Table(
    "budget_anchors",
    metadata,
    # One per (project, user, window type): the first token seen fixes it, later tokens'
    # windowStart is ignored. Unix seconds, as every time here.
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("window", Text, primary_key=True),
    Column("anchor", Double, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    # A server process, registered at start and removed at a clean shutdown. ``host`` names
    # the process space its pid belongs to (chucky.server.nodes.host_identity);
    # ``process_start`` tells a reused pid from the process itself (None: unknown).
    Column("node_id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("process_start", Text, nullable=True),
    Column("started_at", Double, nullable=False),
    Column("seen_at", Double, nullable=False),
    Index(None, "host"),
)

_VERSION_KEY: Final = "schema_version"

MigrationStep = Callable[[Connection], None]


def upgrade_to_version_2(connection: Connection) -> None:
    """Step 1: the ``budget_anchors`` and ``nodes`` tables; anchors and ledger keys from the
    version-1 ledger, without resetting anyone's spend.

    * Each (project, user, window type) with ledger rows gets an anchor: for ``hour``,
      ``day``, ``week`` and ``month``, the start of its most recent instance, so the current
      instance keeps its key and its usage (a ``month`` anchor is then on that instance's
      day-of-month, which differs from the token's after a short month); for ``lifetime``,
      its earliest start (the first token's).
    * The ``lifetime:<start>`` rows of a (project, user, kind) become one ``lifetime`` row
      (``used`` and ``reserved`` summed), and reservations naming them name it instead, so an
      open one settles against the merged row.
    """
    metadata.create_all(connection, tables=[budget_anchors, nodes])
    _seed_anchors(connection)
    _merge_lifetime_rows(connection)


def _seed_anchors(connection: Connection) -> None:
    old = schema_v1.ledger
    found: dict[tuple[str, str, str], list[datetime]] = {}
    for row in connection.execute(select(old.c.project_id, old.c.user_id, old.c.window).distinct()):
        window, _, start = str(row.window).partition(":")
        if window not in WINDOWS or not start:
            continue  # not a key chucky wrote: left alone
        try:
            found.setdefault((row.project_id, row.user_id, window), []).append(
                parse_window_start(start)
            )
        except ValidationError:
            continue
    for (project_id, user_id, window), starts in found.items():
        anchor = min(starts) if window == "lifetime" else max(starts)
        connection.execute(
            budget_anchors.insert().values(
                project_id=project_id, user_id=user_id, window=window, anchor=to_unix(anchor)
            )
        )


def _merge_lifetime_rows(connection: Connection) -> None:
    old, held = schema_v1.ledger, schema_v1.reservations
    is_lifetime = old.c.window.like("lifetime:%")
    connection.execute(
        old.insert().from_select(
            ["project_id", "user_id", "window", "kind", "used", "reserved", "last_grant"],
            select(
                old.c.project_id,
                old.c.user_id,
                literal(LIFETIME_KEY, Text),
                old.c.kind,
                cast(func.sum(old.c.used), BigInteger),
                cast(func.sum(old.c.reserved), BigInteger),
                literal(0, BigInteger),
            )
            .where(is_lifetime)
            .group_by(old.c.project_id, old.c.user_id, old.c.kind),
        )
    )
    connection.execute(delete(old).where(is_lifetime))
    # Settled ones too: no reservation names a ledger row that is gone.
    connection.execute(
        update(held).where(held.c.window.like("lifetime:%")).values(window=LIFETIME_KEY)
    )


def upgrade_to_version_3(connection: Connection) -> None:
    """Step 2: ``sessions.turns``, empty for every session (no turn of theirs had an id)."""
    connection.execute(text("ALTER TABLE sessions ADD COLUMN turns TEXT NOT NULL DEFAULT '{}'"))


MIGRATIONS: Final[tuple[MigrationStep, ...]] = (
    schema_v1.create,
    upgrade_to_version_2,
    upgrade_to_version_3,
)
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
