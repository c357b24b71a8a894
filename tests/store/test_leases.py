"""Concurrency leases: limits, busy sessions, expiry, heartbeats, and the races."""

from __future__ import annotations

import asyncio

import pytest

from chucky.errors import ConcurrencyLimitError, SessionError
from chucky.server.sql import SqlStore
from chucky.server.store import Lease

NOW = 1_800_000_000.0
TTL = 30.0


async def _acquire(
    store: SqlStore,
    session_id: str,
    *,
    user: str = "alice",
    project: str = "proj_a",
    now: float = NOW,
    node: str = "node-1",
    user_limit: int | None = None,
    project_limit: int | None = None,
) -> Lease:
    return await store.acquire_lease(
        project,
        user,
        session_id,
        node_id=node,
        now=now,
        ttl=TTL,
        user_limit=user_limit,
        project_limit=project_limit,
    )


async def test_a_lease_counts_for_its_user_and_project(store: SqlStore) -> None:
    lease = await _acquire(store, "s1", node="node-7")
    assert (lease.project_id, lease.user_id, lease.session_id, lease.node_id) == (
        "proj_a",
        "alice",
        "s1",
        "node-7",
    )
    assert await store.count_active("proj_a", "alice", NOW) == 1
    assert await store.count_active("proj_a", None, NOW) == 1
    assert await store.count_active("proj_a", "bob", NOW) == 0
    assert await store.count_active("proj_b", None, NOW) == 0


async def test_the_user_limit(store: SqlStore) -> None:
    await _acquire(store, "s1", user_limit=2)
    await _acquire(store, "s2", user_limit=2)
    with pytest.raises(ConcurrencyLimitError) as caught:
        await _acquire(store, "s3", user_limit=2)
    assert "concurrency limit" in caught.value.message.lower()
    assert caught.value.details == {
        "reason": "concurrent_limit_reached",
        "scope": "user",
        "limit": 2,
        "active": 2,
    }
    assert caught.value.code == "CONCURRENCY_LIMIT"
    # Another user is not affected.
    await _acquire(store, "s4", user="bob", user_limit=2)
    assert await store.count_active("proj_a", "alice", NOW) == 2


async def test_the_project_limit(store: SqlStore) -> None:
    await _acquire(store, "s1", user="u1", project_limit=2)
    await _acquire(store, "s2", user="u2", project_limit=2)
    with pytest.raises(ConcurrencyLimitError, match="project proj_a") as caught:
        await _acquire(store, "s3", user="u3", user_limit=5, project_limit=2)
    assert caught.value.details == {
        "reason": "concurrent_limit_reached",
        "scope": "project",
        "limit": 2,
        "active": 2,
    }
    await _acquire(store, "s4", user="u1", project="proj_b", project_limit=2)


async def test_no_limits_means_unlimited(store: SqlStore) -> None:
    for i in range(12):
        await _acquire(store, f"s{i}")
    assert await store.count_active("proj_a", "alice", NOW) == 12


async def test_a_session_is_leased_once(store: SqlStore) -> None:
    lease = await _acquire(store, "s1")
    with pytest.raises(SessionError) as caught:
        await _acquire(store, "s1", node="node-2")
    assert caught.value.details == {"reason": "session_busy"}
    assert "busy" in caught.value.message
    await store.release_lease(lease)
    await store.release_lease(lease)  # idempotent
    assert await store.count_active("proj_a", "alice", NOW) == 0
    await _acquire(store, "s1", node="node-2")


async def test_an_expired_lease_no_longer_counts(store: SqlStore) -> None:
    await _acquire(store, "s1", user_limit=1)
    later = NOW + TTL
    assert await store.count_active("proj_a", "alice", later) == 0
    # The same session and the user's only slot are free again.
    await _acquire(store, "s1", now=later, user_limit=1)
    assert await store.count_active("proj_a", "alice", later) == 1


async def test_recover_drops_expired_leases(store: SqlStore) -> None:
    await _acquire(store, "s1")
    await _acquire(store, "s2", now=NOW + 20)
    assert await store.recover(NOW + TTL - 1) == (0, 0)
    assert await store.recover(NOW + TTL) == (1, 0)
    assert await store.count_active("proj_a", "alice", NOW + TTL) == 1
    assert await store.recover(NOW + 20 + TTL) == (1, 0)


async def test_heartbeat_extends_only_that_nodes_leases(store: SqlStore) -> None:
    await _acquire(store, "s1", node="node-1")
    await _acquire(store, "s2", node="node-2")
    await store.heartbeat("node-1", NOW + 25, TTL)
    assert await store.count_active("proj_a", "alice", NOW + 40) == 1
    assert await store.recover(NOW + 40) == (1, 0)
    with pytest.raises(SessionError):
        await _acquire(store, "s1", now=NOW + 40)
    await _acquire(store, "s2", now=NOW + 40)


async def test_twenty_concurrent_acquires_with_a_user_limit_of_three(store: SqlStore) -> None:
    outcomes = await asyncio.gather(
        *(_acquire(store, f"s{i}", user_limit=3) for i in range(20)), return_exceptions=True
    )
    assert sum(isinstance(o, Lease) for o in outcomes) == 3
    assert all(isinstance(o, Lease | ConcurrencyLimitError) for o in outcomes)
    assert await store.count_active("proj_a", "alice", NOW) == 3


async def test_twenty_concurrent_acquires_with_a_project_limit_of_three(store: SqlStore) -> None:
    outcomes = await asyncio.gather(
        *(_acquire(store, f"s{i}", user=f"u{i}", project_limit=3) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Lease) for o in outcomes) == 3
    assert all(isinstance(o, Lease | ConcurrencyLimitError) for o in outcomes)
    assert await store.count_active("proj_a", None, NOW) == 3


async def test_concurrent_acquires_of_one_session_lease_it_once(store: SqlStore) -> None:
    outcomes = await asyncio.gather(
        *(_acquire(store, "same", node=f"n{i}") for i in range(10)), return_exceptions=True
    )
    assert sum(isinstance(o, Lease) for o in outcomes) == 1
    assert sum(isinstance(o, SessionError) for o in outcomes) == 9


async def test_two_nodes_on_one_database_respect_the_limits(
    store: SqlStore, store_url: str
) -> None:
    other = SqlStore(store_url)
    await other.open()
    try:
        nodes = [store, other]
        outcomes = await asyncio.gather(
            *(
                _acquire(nodes[i % 2], f"s{i}", user=f"u{i % 4}", user_limit=2, project_limit=5)
                for i in range(20)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(o, Lease) for o in outcomes) == 5
        assert all(isinstance(o, Lease | ConcurrencyLimitError) for o in outcomes)
        assert await other.count_active("proj_a", None, NOW) == 5
        for user in ("u0", "u1", "u2", "u3"):
            assert await store.count_active("proj_a", user, NOW) <= 2
    finally:
        await other.aclose()
