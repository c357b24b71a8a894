"""Store fixtures: every store test runs on SQLite (a file) and on PostgreSQL (a fresh database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chucky.server.sql import SqlStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'chucky.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """An open store on an empty database."""
    opened = SqlStore(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest_asyncio.fixture
async def raw_engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A plain engine on the store's database, to look under the store or break it."""
    engine = create_async_engine(store_url)
    try:
        yield engine
    finally:
        await engine.dispose()
