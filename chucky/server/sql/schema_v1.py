"""The version-1 schema, frozen: what migration step 0 creates (never change it).

A copy of the tables as chucky's first schema version defined them, in a ``MetaData`` of its
own, so that a fresh database goes through exactly the same steps as an old one: step 0 builds
version 1 from these definitions, then each later step changes it, whatever the current
definitions in :mod:`.schema` have become. Later steps that move data use these tables too
(the shape the data had at the time).
"""

from __future__ import annotations

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
)
from sqlalchemy.engine import Connection

__all__ = ["VERSION", "create", "ledger", "metadata", "reservations"]

VERSION: Final = 1

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

Table(
    "chucky_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", Double, nullable=False),
)

Table(
    "project_secrets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("secret", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    UniqueConstraint("project_id", "secret"),
)

Table(
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

Table(
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

Table(
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

Table(
    "rate_counters",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)


def create(connection: Connection) -> None:
    """Migration step 0: the version-1 tables in an empty database."""
    metadata.create_all(connection)
