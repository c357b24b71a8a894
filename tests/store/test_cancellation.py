"""Cancelling a caller never breaks the store: its transaction rolls back, nothing is locked."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from support.timing import ticks

from chucky.server.sql import SqlStore
from chucky.server.store import LedgerKey, LedgerUsage, Reservation

NOW = 1_800_000_000.0
KEY = LedgerKey("proj_a", "alice", "day:2027-01-15T00:00:00Z")


async def test_a_cancelled_call_rolls_its_transaction_back(store: SqlStore) -> None:
    # File SQLite runs each transaction in the store's thread (the work function must not
    # suspend there: it blocks on a thread event); PostgreSQL in a task (it awaits).
    in_thread = store._group is not None
    if store._group is not None:
        # A transaction run inline (the store's thread idle) ends before any await: nothing to
        # cancel there. This is about one queued to the thread.
        store._group._inline = False
    inside, release = threading.Event(), threading.Event()
    inside_async, release_async = asyncio.Event(), asyncio.Event()

    async def work(connection: AsyncConnection) -> None:
        await connection.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES ('proj_x', 'x', 0)")
        )
        if in_thread:
            inside.set()
            release.wait(ticks(200))
        else:
            inside_async.set()
            await release_async.wait()

    call = asyncio.create_task(store._run(work))
    if in_thread:
        assert await asyncio.to_thread(inside.wait, ticks(200))
    else:
        await inside_async.wait()
    call.cancel()
    await asyncio.sleep(ticks(1))
    assert not call.done()  # it waits for its transaction to end
    release.set()
    release_async.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await store.get_project("proj_x") is None
    await store.create_project("x", "hk_live_" + "1" * 32, NOW, project_id="proj_x")


async def test_cancelling_calls_mid_flight_leaves_the_store_usable(
    store: SqlStore, raw_engine: AsyncEngine
) -> None:
    # Regression: cancelled SQLite transactions used to leave a dropped connection holding
    # the write lock, and every later write failed with "database is locked" after 30 s.
    rng = random.Random(7)
    granted = 0
    for _ in range(25):
        calls = [
            asyncio.create_task(
                store.reserve(
                    KEY, "ai", want=1, limit=10**9, minimum=1, now=NOW, ttl=60, node_id="n"
                )
            )
            for _ in range(8)
        ]
        calls.append(asyncio.create_task(store.count_active("proj_a", "alice", NOW)))
        await asyncio.sleep(rng.random() * ticks(0.1))
        for call in calls:
            call.cancel()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, Reservation | int | asyncio.CancelledError) for o in outcomes)
        granted += sum(isinstance(o, Reservation) for o in outcomes)
        await asyncio.wait_for(store.heartbeat("n", NOW, 60), ticks(100))
    # No transaction was cut in half: the ledger agrees with the reservations held. (A call
    # cancelled while its COMMIT ran holds one without knowing: recovered when it expires.)
    async with raw_engine.connect() as connection:
        held = await connection.scalar(text("SELECT count(*) FROM reservations"))
    usage = await store.usage(KEY, "ai")
    assert usage == LedgerUsage(used=0, reserved=held)
    assert granted <= held
