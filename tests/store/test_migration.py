"""Schema version 1 -> 2 on a real version-1 database: nobody's spend is reset.

The version-1 database is made with the frozen version-1 definitions
(:mod:`chucky.server.sql.schema_v1`), filled as a version-1 server left it (per-token window
keys, ``lifetime:<start>`` rows, open reservations), then opened by the current store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chucky.server.budget import BudgetSettings, UserBudget
from chucky.server.sql import SCHEMA_VERSION, SqlStore, schema_v1
from chucky.server.sql.schema import budget_anchors, ledger, metadata, reservations
from chucky.server.store import LedgerKey, LedgerUsage, Reservation
from chucky.tokens import create_budget, create_token, decode_token

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SECRET = "hk_live_00000000000000000000000000000000"

# (project, user, window, kind, used, reserved) as version 1 keyed them: by each token's
# windowStart. Alice's backend minted a token per page load.
V1_LEDGER = [
    ("proj_a", "alice", "day:2027-01-14T07:00:00Z", "ai", 900, 0),
    ("proj_a", "alice", "day:2027-01-15T07:00:00Z", "ai", 400, 0),
    ("proj_a", "alice", "day:2027-01-15T07:59:58.500000Z", "ai", 50, 0),
    ("proj_a", "alice", "day:2027-01-15T07:59:58.500000Z", "compute", 1_000, 60_000),
    ("proj_a", "alice", "hour:2027-01-15T07:30:00Z", "ai", 7, 0),
    ("proj_a", "alice", "lifetime:2024-01-01T00:00:00Z", "ai", 10, 5),
    ("proj_a", "alice", "lifetime:2025-06-01T12:00:00Z", "ai", 20, 7),
    ("proj_a", "alice", "lifetime:2024-01-01T00:00:00Z", "compute", 3_000, 0),
    ("proj_a", "bob", "month:2026-12-15T00:00:00Z", "ai", 11, 0),
    ("proj_a", "bob", "month:2027-01-15T00:00:00Z", "ai", 12, 0),
    ("proj_b", "alice", "lifetime:2026-03-03T03:03:03Z", "ai", 33, 0),
    ("proj_b", "carol", "not-a-window", "ai", 1, 0),
]

# (id, window, kind, amount, settled): alice's open reservations, and a settled one.
V1_RESERVATIONS = [
    ("r-life-1", "lifetime:2024-01-01T00:00:00Z", "ai", 5, False),
    ("r-life-2", "lifetime:2025-06-01T12:00:00Z", "ai", 7, False),
    ("r-life-done", "lifetime:2024-01-01T00:00:00Z", "ai", 4, True),
    ("r-day", "day:2027-01-15T07:59:58.500000Z", "compute", 60_000, False),
]


def _fill_version_1(connection: Connection) -> None:
    schema_v1.create(connection)
    connection.execute(text("INSERT INTO chucky_meta (key, value) VALUES ('schema_version', '1')"))
    connection.execute(
        schema_v1.ledger.insert(),
        [
            {
                "project_id": project,
                "user_id": user,
                "window": window,
                "kind": kind,
                "used": used,
                "reserved": reserved,
                "last_grant": 0,
            }
            for project, user, window, kind, used, reserved in V1_LEDGER
        ],
    )
    connection.execute(
        schema_v1.reservations.insert(),
        [
            {
                "id": reservation_id,
                "project_id": "proj_a",
                "user_id": "alice",
                "window": window,
                "kind": kind,
                "amount": amount,
                "node_id": "old-node",
                "created_at": NOW - 5,
                "expires_at": NOW + 25,
                "settled": settled,
                "settled_at": NOW - 1 if settled else None,
                "charged": amount if settled else None,
            }
            for reservation_id, window, kind, amount, settled in V1_RESERVATIONS
        ],
    )


def _unix(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def _minted_now(store: SqlStore, user: str, window: str) -> UserBudget:
    """The budget of a token minted at ``NOW`` with ``windowStart = now`` (``create_budget``)."""
    budget = create_budget(1.0, 1.0, window, datetime.fromtimestamp(NOW, UTC))
    claims = decode_token(create_token(user, "proj_a", SECRET, budget, now=NOW)).claims
    return UserBudget(store, claims, BudgetSettings(), node_id="n")


async def _rows(engine: AsyncEngine, query: Any) -> set[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return {tuple(row) for row in await connection.execute(query)}


def _shape(connection: Connection) -> dict[str, tuple[set[str], set[str]]]:
    found = inspect(connection)
    return {
        name: (
            {column["name"] for column in found.get_columns(name)},
            # PostgreSQL lists unique constraints as indexes too: the named indexes only.
            {index["name"] for index in found.get_indexes(name) if index["name"].startswith("ix_")},
        )
        for name in found.get_table_names()
    }


async def test_a_version_1_database_is_migrated_without_resetting_anyones_spend(
    store_url: str, raw_engine: AsyncEngine
) -> None:
    async with raw_engine.begin() as connection:
        await connection.run_sync(_fill_version_1)

    store = SqlStore(store_url)
    await store.open()
    try:
        async with raw_engine.connect() as connection:
            version = await connection.scalar(
                text("SELECT value FROM chucky_meta WHERE key = 'schema_version'")
            )
            shape = await connection.run_sync(_shape)
        assert version == str(SCHEMA_VERSION)
        # The same tables, columns and indexes as a fresh database's.
        assert shape == {
            name: (set(table.columns.keys()), {str(index.name) for index in table.indexes})
            for name, table in metadata.tables.items()
        }

        # One anchor per (project, user, window type): the most recent instance's start; for
        # lifetime the earliest (the first token's). Rows chucky did not write are left alone.
        assert await _rows(raw_engine, select(budget_anchors)) == {
            ("proj_a", "alice", "day", _unix(2027, 1, 15, 7, 59, 58, 500_000)),
            ("proj_a", "alice", "hour", _unix(2027, 1, 15, 7, 30)),
            ("proj_a", "alice", "lifetime", _unix(2024, 1, 1)),
            ("proj_a", "bob", "month", _unix(2027, 1, 15)),
            ("proj_b", "alice", "lifetime", _unix(2026, 3, 3, 3, 3, 3)),
        }
        # Lifetime rows merged per (project, user, kind); the others untouched.
        life = ledger.c.window.like("lifetime%")
        assert await _rows(
            raw_engine,
            select(ledger.c.project_id, ledger.c.user_id, ledger.c.window, ledger.c.kind)
            .add_columns(ledger.c.used, ledger.c.reserved)
            .where(life),
        ) == {
            ("proj_a", "alice", "lifetime", "ai", 30, 12),
            ("proj_a", "alice", "lifetime", "compute", 3_000, 0),
            ("proj_b", "alice", "lifetime", "ai", 33, 0),
        }
        assert len(await _rows(raw_engine, select(ledger).where(~life))) == len(
            [row for row in V1_LEDGER if not row[2].startswith("lifetime")]
        )
        assert await _rows(raw_engine, select(reservations.c.id, reservations.c.window)) == {
            ("r-life-1", "lifetime"),
            ("r-life-2", "lifetime"),
            ("r-life-done", "lifetime"),
            ("r-day", "day:2027-01-15T07:59:58.500000Z"),
        }

        # A token minted now (windowStart = now) sees the current instances with their usage.
        day = _minted_now(store, "alice", "day")
        report = await day.report(NOW)
        assert report["window"] == {
            "type": "day",
            "start": "2027-01-15T07:59:58.500000Z",
            "end": "2027-01-16T07:59:58.500000Z",
        }
        assert (report["ai"]["used"], report["compute"]["used"]) == (50, 1.0)
        assert report["compute"]["reserved"] == 60.0
        month = _minted_now(store, "bob", "month")
        assert (await month.report(NOW))["ai"]["used"] == 12
        lifetime = _minted_now(store, "alice", "lifetime")
        report = await lifetime.report(NOW)
        assert report["window"] == {
            "type": "lifetime",
            "start": "2024-01-01T00:00:00Z",
            "end": None,
        }
        assert (report["ai"]["used"], report["ai"]["reserved"]) == (30, 12)

        # The open reservations settle against the merged row: once by their owner...
        key = LedgerKey("proj_a", "alice", "lifetime")
        opened = Reservation("r-life-1", key, "ai", amount=5, used=0, reserved=0)
        assert await store.settle(opened, 2, NOW) == 2
        assert await store.usage(key, "ai") == LedgerUsage(used=32, reserved=7)
        # ... or in full when they expire; the settled one is not charged again.
        assert await store.recover(NOW + 60) == (0, 2)
        assert await store.usage(key, "ai") == LedgerUsage(used=39, reserved=0)
        assert (await day.report(NOW))["compute"] == {
            "used": 61.0,
            "reserved": 0.0,
            "remaining": 3600 - 61.0,
            "budget": 3600.0,
        }
    finally:
        await store.aclose()
