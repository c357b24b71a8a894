"""Opening a store: schema creation, migrations, engines, errors at the boundary."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chucky.errors import InvalidStateError
from chucky.server.sql import SCHEMA_VERSION, SqlStore, default_database_url, schema
from chucky.server.sql.engines import create_engine, enable_wal, hide_password
from chucky.server.sql.schema import MIGRATIONS, metadata
from chucky.server.store import LedgerKey, StoreError

NOW = 1_800_000_000.0


async def _version(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT value FROM chucky_meta WHERE key = 'schema_version'")
        )
        return str(result.scalar_one())


async def test_open_creates_the_schema_and_reopening_keeps_the_data(
    store_url: str, raw_engine: AsyncEngine
) -> None:
    first = SqlStore(store_url)
    await first.open()
    await first.open()  # idempotent
    project = await first.create_project("demo", "hk_live_" + "1" * 32, NOW)
    await first.aclose()
    await first.aclose()  # idempotent

    assert SCHEMA_VERSION == len(MIGRATIONS) == 3
    assert await _version(raw_engine) == str(SCHEMA_VERSION)
    async with raw_engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        columns = {
            name: await connection.run_sync(
                lambda sync, name=name: {c["name"] for c in inspect(sync).get_columns(name)}
            )
            for name in metadata.tables
        }
    assert tables >= set(metadata.tables)
    for name, table in metadata.tables.items():
        assert columns[name] == set(table.columns.keys()), name

    second = SqlStore(store_url)
    await second.open()
    try:
        assert await second.get_project(project.project_id) == project
    finally:
        await second.aclose()
    assert await _version(raw_engine) == str(SCHEMA_VERSION)


async def test_a_newer_schema_is_refused_and_left_untouched(
    store_url: str, raw_engine: AsyncEngine
) -> None:
    store = SqlStore(store_url)
    await store.open()
    await store.create_project("demo", "hk_live_" + "1" * 32, NOW, project_id="proj_kept")
    await store.aclose()
    async with raw_engine.begin() as connection:
        await connection.execute(
            text("UPDATE chucky_meta SET value = '999' WHERE key = 'schema_version'")
        )

    newer = SqlStore(store_url)
    with pytest.raises(StoreError, match=r"schema version 999 is newer .*\(3\); upgrade chucky"):
        await newer.open()
    with pytest.raises(InvalidStateError):
        await newer.get_project("proj_kept")

    assert await _version(raw_engine) == "999"
    async with raw_engine.connect() as connection:
        kept = await connection.execute(text("SELECT id FROM projects"))
        assert kept.scalars().all() == ["proj_kept"]


def _step_3(connection: Connection) -> None:
    connection.execute(text("CREATE TABLE chucky_v3_extra (id INTEGER PRIMARY KEY)"))


def _broken_step_3(connection: Connection) -> None:
    _step_3(connection)
    connection.execute(text("SELECT * FROM no_such_table"))


async def test_missing_steps_are_applied_to_an_older_database(
    store_url: str, raw_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(store_url)
    await store.open()
    await store.create_project("demo", "hk_live_" + "1" * 32, NOW, project_id="proj_kept")
    await store.aclose()
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, _step_3))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 4)

    upgraded = SqlStore(store_url)
    await upgraded.open()
    try:
        assert await upgraded.get_project("proj_kept") is not None
    finally:
        await upgraded.aclose()
    assert await _version(raw_engine) == "4"
    async with raw_engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM chucky_v3_extra")) == 0


async def test_a_failing_migration_changes_nothing(
    store_url: str, raw_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(store_url)
    await store.open()
    await store.aclose()
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, _broken_step_3))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 4)

    with pytest.raises(StoreError, match="Cannot open the database") as caught:
        await SqlStore(store_url).open()
    assert caught.value.__cause__ is not None
    assert await _version(raw_engine) == "3"
    async with raw_engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert "chucky_v3_extra" not in tables


async def test_two_nodes_opening_one_fresh_database_at_once_both_succeed(store_url: str) -> None:
    stores = [SqlStore(store_url) for _ in range(3)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        await stores[0].create_project("demo", "hk_live_" + "1" * 32, NOW, project_id="proj_a")
        assert [p.project_id for p in await stores[2].list_projects()] == ["proj_a"]
    finally:
        for store in stores:
            await store.aclose()


async def test_database_errors_leave_as_store_errors_with_the_cause(
    store: SqlStore, raw_engine: AsyncEngine
) -> None:
    async with raw_engine.begin() as connection:
        await connection.execute(text("DROP TABLE leases"))
    with pytest.raises(StoreError, match="failed") as caught:
        await store.count_active("proj", "user", NOW)
    assert caught.value.__cause__ is not None
    assert caught.value.code == "INTERNAL_ERROR"


async def test_a_closed_store_says_so(store_url: str) -> None:
    store = SqlStore(store_url)
    with pytest.raises(InvalidStateError, match="not open"):
        await store.usage(LedgerKey("p", "u", "day:x"), "ai")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    url = f"postgresql+asyncpg://chucky:s3cret-pw@127.0.0.1:{_closed_port()}/chucky"
    store = SqlStore(url)
    assert "s3cret-pw" not in store.url
    assert "***" in store.url
    with pytest.raises(StoreError, match="Cannot open the database") as caught:
        await store.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


async def test_a_sqlite_file_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'dir' / 'chucky.db'}")
    with pytest.raises(StoreError, match=r"Cannot open the database .*does not exist"):
        await store.open()


@pytest.mark.parametrize(
    "url", ["mysql+aiomysql://u:pw@host/db", "not a url at all", "oracle://u:pw@h/d"]
)
async def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        await SqlStore(url).open()
    assert "pw@" not in str(caught.value)


def test_hide_password() -> None:
    assert (
        hide_password("postgresql+asyncpg://u:pw@h:5432/d") == "postgresql+asyncpg://u:***@h:5432/d"
    )
    assert hide_password("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert "pw" not in hide_password("bogus://u:pw@")


async def test_plain_driver_names_pick_the_async_drivers(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'plain.db'}")
    await store.open()
    try:
        assert store.backend == "sqlite"
        assert await store.list_projects() == []
    finally:
        await store.aclose()


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}"
    store = SqlStore(url)
    await store.open()
    await store.aclose()
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
        await enable_wal(engine)  # already on: nothing to do
    finally:
        await engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000}


async def test_an_in_memory_database_serves_concurrent_callers() -> None:
    store = SqlStore("sqlite+aiosqlite://")
    await store.open()
    try:
        key = LedgerKey("p", "u", "day:x")
        grants = await asyncio.gather(
            *(
                store.reserve(
                    key, "ai", want=10, limit=30, minimum=10, now=NOW, ttl=60, node_id="n"
                )
                for _ in range(20)
            ),
            *(store.usage(key, "ai") for _ in range(5)),
        )
        assert sum(1 for g in grants[:20] if g is not None) == 3
        usage = await store.usage(key, "ai")
        assert (usage.used, usage.reserved) == (0, 30)
    finally:
        await store.aclose()


def test_default_database_url_honours_chucky_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data" / "here"
    monkeypatch.setenv("CHUCKY_DATA_DIR", str(data_dir))
    url = default_database_url()
    assert url == f"sqlite+aiosqlite:///{data_dir / 'chucky.db'}"
    assert data_dir.is_dir()


def test_default_database_url_uses_the_user_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CHUCKY_DATA_DIR", raising=False)
    monkeypatch.setattr("platformdirs.user_data_dir", lambda app: str(tmp_path / app))
    assert default_database_url() == f"sqlite+aiosqlite:///{tmp_path / 'chucky' / 'chucky.db'}"
    assert (tmp_path / "chucky").is_dir()
