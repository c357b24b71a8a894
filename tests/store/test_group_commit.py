"""Group commit on a SQLite file: many transactions to one commit, each one's outcome its own;
the durability setting; one turn write, all or nothing, on both engines."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chucky.errors import SessionNotFoundError
from chucky.server.sql import SqlStore
from chucky.server.sql.db import Db
from chucky.server.store import (
    LedgerKey,
    ReserveRequest,
    SessionRecord,
    StoreError,
    TurnWrite,
)

NOW = 1_800_000_000.0
KEY = LedgerKey("proj_a", "alice", "lifetime")


def _reserve(want: int, limit: int = 10**9, minimum: int = 1) -> ReserveRequest:
    return ReserveRequest(KEY, "ai", want, limit, minimum)


async def _file_store(tmp_path: Path, **options: Any) -> SqlStore:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'chucky.db'}", **options)
    await store.open()
    return store


async def test_an_idle_store_commits_at_once_on_the_callers_thread(tmp_path: Path) -> None:
    store = await _file_store(tmp_path)  # synchronous=normal: a commit does not wait for the disk
    try:
        group = store._group
        assert group is not None

        async def noop(db: Db) -> int:
            return 1

        job = group.submit(noop)
        assert job.future.done() and job.future.result() == 1  # no hand-off to the thread
    finally:
        await store.aclose()


async def test_another_process_holding_the_lock_never_blocks_the_loop(tmp_path: Path) -> None:
    store = await _file_store(tmp_path)
    try:
        group = store._group
        assert group is not None
        with sqlite3.connect(tmp_path / "chucky.db", isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")  # another process's write lock
            call = asyncio.ensure_future(
                store.reserve(KEY, "ai", want=1, limit=10, minimum=1, now=NOW, ttl=60, node_id="n")
            )
            await asyncio.sleep(0.05)  # the loop runs: the job waits in the store's thread
            assert not call.done()
            other.execute("COMMIT")
        assert await call is not None
    finally:
        await store.aclose()


async def test_concurrent_transactions_share_commits(tmp_path: Path) -> None:
    # synchronous=full: every transaction goes through the store's thread, which batches them.
    store = await _file_store(tmp_path, sqlite_synchronous="full")
    try:
        group = store._group
        assert group is not None
        before_batches, before_jobs = group.batches, group.jobs
        grants = await asyncio.gather(
            *(
                store.reserve(
                    KEY, "ai", want=1, limit=10**9, minimum=1, now=NOW, ttl=60, node_id="n"
                )
                for _ in range(200)
            )
        )
        assert all(grant is not None for grant in grants)
        assert group.jobs - before_jobs == 200
        assert group.batches - before_batches < 200  # several to a commit
        usage = await store.usage(KEY, "ai")
        assert (usage.used, usage.reserved) == (0, 200)
    finally:
        await store.aclose()


async def _insert_project(db: Db, project: str) -> str:
    await db.execute(
        text("INSERT INTO projects (id, name, created_at) VALUES (:id, 'y', 0)"), {"id": project}
    )
    return project


async def _between(store: SqlStore, middle: Any) -> tuple[list[Any], int]:
    """Projects "a" and "b" inserted by two transactions around ``middle``, submitted at once:
    with synchronous=full they form one batch of the store's thread (held busy meanwhile); with
    normal each runs inline, one after the other. Also: the transactions it took."""
    group = store._group
    assert group is not None
    entered, release = threading.Event(), threading.Event()

    async def busy(db: Db) -> None:
        entered.set()
        release.wait(10)

    held = None if group._inline else group.submit(busy)
    if held is not None:
        assert await asyncio.to_thread(entered.wait, 10)
    before = group.batches
    calls = [
        asyncio.ensure_future(store._run(lambda db: _insert_project(db, "a"))),
        asyncio.ensure_future(store._run(middle)),
        asyncio.ensure_future(store._run(lambda db: _insert_project(db, "b"))),
    ]
    await asyncio.sleep(0.01)  # all three submitted
    release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    if held is not None:
        await held.future
    return outcomes, group.batches - before


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_job_that_raises_is_rolled_back_alone(tmp_path: Path, synchronous: Any) -> None:
    store = await _file_store(tmp_path, sqlite_synchronous=synchronous)
    try:

        async def half_then_fail(db: Db) -> None:
            await db.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES ('x', 'x', 0)")
            )
            raise SessionNotFoundError("nope", details={"reason": "session_not_found"})

        outcomes, transactions = await _between(store, half_then_fail)
        # One shared transaction (full), its failing job rolled back to its savepoint alone.
        assert transactions == (1 if synchronous == "full" else 3)
        assert outcomes[0] == "a" and outcomes[2] == "b"
        assert isinstance(outcomes[1], SessionNotFoundError)
        names = {p.project_id for p in await store.list_projects()}
        assert names == {"a", "b"}
    finally:
        await store.aclose()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_database_error_fails_only_its_own_job(tmp_path: Path, synchronous: Any) -> None:
    store = await _file_store(tmp_path, sqlite_synchronous=synchronous)
    try:

        async def broken(db: Db) -> None:
            await db.execute(text("INSERT INTO no_such_table VALUES (1)"))

        outcomes, transactions = await _between(store, broken)
        # The shared batch broke (full): each of its jobs ran again alone.
        assert transactions == (1 + 3 if synchronous == "full" else 3)
        assert outcomes[0] == "a" and outcomes[2] == "b"
        error = outcomes[1]
        assert isinstance(error, StoreError)
        assert isinstance(error.__cause__, Exception)
        assert {p.project_id for p in await store.list_projects()} == {"a", "b"}
        # The store goes on.
        assert await store._run(lambda db: _insert_project(db, "c")) == "c"
    finally:
        await store.aclose()


@pytest.mark.parametrize(("setting", "level"), [("normal", 1), ("full", 2)])
async def test_the_durability_setting(tmp_path: Path, setting: Any, level: int) -> None:
    store = await _file_store(tmp_path, sqlite_synchronous=setting)
    try:
        found = await store._run(lambda db: db.scalar(text("PRAGMA synchronous")))
        assert found == level
    finally:
        await store.aclose()
    # WAL mode: what was committed is in the file for the next process.
    with sqlite3.connect(tmp_path / "chucky.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def _session(store: SqlStore) -> SessionRecord:
    return await store.create_session("proj_a", "alice", "m", NOW)


async def test_a_turn_write_is_all_or_nothing(store: SqlStore) -> None:
    session = await _session(store)
    session.append("user", "hi")
    refused = await store.write_turn(
        TurnWrite(
            now=NOW,
            ttl=60,
            node_id="n",
            rate_limit=10,
            reserve=[_reserve(500, limit=1000), _reserve(600, limit=1000, minimum=600)],
            session=session,
        )
    )
    # The second reservation cannot have its minimum: nothing was written, not even the count.
    assert refused.refused and refused.denied is not None and refused.denied.want == 600
    assert refused.usage is not None and refused.usage.reserved == 0
    assert session.persisted == 0
    usage = await store.usage(KEY, "ai")
    assert (usage.used, usage.reserved) == (0, 0)
    stored = await store.get_session(session.session_id, "proj_a", "alice")
    assert stored is not None and stored.transcript == []

    written = await store.write_turn(
        TurnWrite(
            now=NOW, ttl=60, node_id="n", rate_limit=10, reserve=[_reserve(500)], session=session
        )
    )
    assert not written.refused and written.rate is not None and written.rate.count == 1
    (grant,) = written.grants
    assert grant.amount == 500 and session.persisted == 1
    closed = await store.write_turn(TurnWrite(now=NOW, settle=[(grant, 120)], session=session))
    assert closed.charged == (120,)
    usage = await store.usage(KEY, "ai")
    assert (usage.used, usage.reserved) == (120, 0)


async def test_a_turn_write_counts_against_the_rate_limit(store: SqlStore) -> None:
    session = await _session(store)
    for count in (1, 2):
        written = await store.write_turn(TurnWrite(now=NOW, rate_limit=2, session=session))
        assert written.rate is not None and written.rate.allowed and written.rate.count == count
    refused = await store.write_turn(TurnWrite(now=NOW, rate_limit=2, session=session))
    assert refused.refused and refused.rate is not None and refused.rate.count == 2
    assert refused.rate.retry_after > 0


async def test_the_write_ahead_log_is_checkpointed_by_the_store(tmp_path: Path) -> None:
    # Inline commits turn SQLite's automatic checkpoint off (it would fsync on the event loop):
    # the store's thread checkpoints instead, so the log does not grow without end.
    store = await _file_store(tmp_path)
    wal = tmp_path / "chucky.db-wal"
    try:
        sizes = []
        for _ in range(6):
            for _ in range(500):
                await store.reserve(
                    KEY, "ai", want=1, limit=10**9, minimum=1, now=NOW, ttl=60, node_id="n"
                )
            await asyncio.sleep(0.05)  # the thread's checkpoint
            sizes.append(wal.stat().st_size)
        # A checkpointed log is written again from its start: it stops growing (unchecked, it
        # grew by ~11 MB per 500 commits here).
        assert max(sizes) < 2 * sizes[0], sizes
        usage = await store.usage(KEY, "ai")
        assert usage.reserved == 3000
    finally:
        await store.aclose()


async def test_a_heartbeat_never_waits_for_a_turn_settling(postgres_database: str) -> None:
    # PostgreSQL: a heartbeat used to wait for rows a turn had locked while the turn waited for
    # rows the heartbeat had locked ("deadlock detected" with 500 busy sessions).
    store = SqlStore(postgres_database)
    await store.open()
    raw_engine = create_async_engine(postgres_database)
    try:
        held = await store.reserve(
            KEY, "ai", want=5, limit=100, minimum=1, now=NOW, ttl=60, node_id="n"
        )
        assert held is not None
        async with raw_engine.connect() as other:
            await other.execute(
                text("SELECT id FROM reservations WHERE id = :id FOR UPDATE"),
                {"id": held.reservation_id},
            )  # a turn in the middle of settling it
            beat = asyncio.ensure_future(store.heartbeat("n", NOW + 10, 60))
            done, _ = await asyncio.wait({beat}, timeout=5)
            await other.rollback()  # the turn ends (whatever the heartbeat did)
            await beat
            assert done, "the heartbeat waited for a row being settled"
        await store.heartbeat("n", NOW + 20, 60)  # extended at the next beat
        async with raw_engine.connect() as reader:
            expires = await reader.scalar(
                text("SELECT expires_at FROM reservations WHERE id = :id"),
                {"id": held.reservation_id},
            )
        assert expires == NOW + 80
    finally:
        await raw_engine.dispose()
        await store.aclose()
