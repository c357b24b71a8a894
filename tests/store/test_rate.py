"""Per-minute rate counters."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chucky.server.sql import SqlStore
from chucky.server.store import RateDecision

MINUTE_START = 1_800_000_000.0 - 1_800_000_000.0 % 60


async def test_turns_are_counted_up_to_the_limit(store: SqlStore) -> None:
    now = MINUTE_START + 15
    for expected in (1, 2, 3):
        decision = await store.count_turn("proj_a", "alice", now=now, limit=3)
        assert (decision.allowed, decision.count) == (True, expected)
    refused = await store.count_turn("proj_a", "alice", now=now + 5, limit=3)
    assert refused == RateDecision(allowed=False, count=3, retry_after=40.0)
    assert isinstance(refused.retry_after, float)
    # A refused turn is not counted.
    assert (await store.count_turn("proj_a", "alice", now=now + 6, limit=4)).count == 4
    # Other users and projects have their own counters.
    assert (await store.count_turn("proj_a", "bob", now=now, limit=3)).count == 1
    assert (await store.count_turn("proj_b", "alice", now=now, limit=3)).count == 1


async def test_the_next_minute_starts_over(store: SqlStore) -> None:
    for _ in range(2):
        await store.count_turn("proj_a", "alice", now=MINUTE_START + 59.5, limit=2)
    refused = await store.count_turn("proj_a", "alice", now=MINUTE_START + 59.5, limit=2)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    allowed = await store.count_turn("proj_a", "alice", now=MINUTE_START + 60, limit=2)
    assert (allowed.allowed, allowed.count) == (True, 1)


async def test_a_zero_limit_refuses_everything(store: SqlStore) -> None:
    decision = await store.count_turn("proj_a", "alice", now=MINUTE_START, limit=0)
    assert decision == RateDecision(allowed=False, count=0, retry_after=60.0)


async def test_twenty_concurrent_turns_with_a_limit_of_five(
    store: SqlStore, store_url: str
) -> None:
    other = SqlStore(store_url)
    await other.open()
    try:
        decisions = await asyncio.gather(
            *(
                [store, other][i % 2].count_turn("proj_a", "alice", now=MINUTE_START, limit=5)
                for i in range(20)
            )
        )
    finally:
        await other.aclose()
    allowed = [d for d in decisions if d.allowed]
    assert sorted(d.count for d in allowed) == [1, 2, 3, 4, 5]
    assert all(d.count == 5 for d in decisions if not d.allowed)


async def test_recover_prunes_old_minutes(store: SqlStore, raw_engine: AsyncEngine) -> None:
    for minute in range(5):
        await store.count_turn("proj_a", "alice", now=MINUTE_START + 60 * minute, limit=5)
    await store.recover(MINUTE_START + 60 * 4)
    async with raw_engine.connect() as connection:
        left = await connection.scalar(text("SELECT count(*) FROM rate_counters"))
    assert left == 2  # the current minute and the one before
