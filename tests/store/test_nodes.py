"""Nodes: registration, heartbeat, and taking back at once what a provably dead node held."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chucky.errors import SessionError
from chucky.server.sql import SqlStore
from chucky.server.store import LedgerKey, LedgerUsage, NodeRecord, Reclaimed

NOW = 1_800_000_000.0
TTL = 30.0
KEY = LedgerKey("proj_a", "alice", "day:2027-01-15T00:00:00Z")
HOST = "box boot=1 pid:[4026531836]"


def _node(node_id: str, *, host: str = HOST, pid: int = 100, start: str | None = "5") -> NodeRecord:
    return NodeRecord(node_id=node_id, host=host, pid=pid, process_start=start)


async def _lease(store: SqlStore, node_id: str, session_id: str, now: float = NOW) -> None:
    await store.acquire_lease(
        "proj_a",
        "alice",
        session_id,
        node_id=node_id,
        now=now,
        ttl=TTL,
        user_limit=None,
        project_limit=None,
    )


async def _hold(store: SqlStore, node_id: str, session_id: str, amount: int) -> None:
    """A lease and an open reservation of ``amount`` held by ``node_id``."""
    await _lease(store, node_id, session_id)
    granted = await store.reserve(
        KEY, "ai", want=amount, limit=10_000, minimum=1, now=NOW, ttl=TTL, node_id=node_id
    )
    assert granted is not None


async def _nodes(engine: AsyncEngine) -> dict[str, tuple[str, int, str | None, float, float]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT node_id, host, pid, process_start, started_at, seen_at FROM nodes")
        )
        return {row[0]: (row[1], row[2], row[3], row[4], row[5]) for row in rows}


async def test_register_heartbeat_deregister(store: SqlStore, raw_engine: AsyncEngine) -> None:
    await store.register_node(_node("n1", pid=42, start="777"), NOW)
    await store.register_node(_node("n2", host="other", start=None), NOW + 1)
    assert await _nodes(raw_engine) == {
        "n1": (HOST, 42, "777", NOW, NOW),
        "n2": ("other", 100, None, NOW + 1, NOW + 1),
    }
    await store.heartbeat("n1", NOW + 10, TTL)
    await store.register_node(_node("n2", host="other", start=None), NOW + 20)  # seen again
    nodes = await _nodes(raw_engine)
    assert nodes["n1"][3:] == (NOW, NOW + 10)
    assert nodes["n2"][3:] == (NOW + 1, NOW + 20)
    await store.deregister_node("n1")
    await store.deregister_node("n1")  # idempotent
    assert set(await _nodes(raw_engine)) == {"n2"}


async def test_a_dead_node_of_this_host_gives_everything_back_at_once(store: SqlStore) -> None:
    await store.register_node(_node("dead", pid=100), NOW)
    await store.register_node(_node("alive", pid=200), NOW)
    await _hold(store, "dead", "s-dead", 300)
    await _hold(store, "alive", "s-alive", 200)
    asked: list[NodeRecord] = []

    def is_dead(node: NodeRecord) -> bool:
        asked.append(node)
        return node.pid == 100

    reclaimed = await store.reclaim_nodes(HOST, is_dead, NOW + 1)
    assert reclaimed == Reclaimed(nodes=1, leases=1, reservations=1)
    assert sorted(n.node_id for n in asked) == ["alive", "dead"]
    # The dead node's reservation is charged in full, the live one's still held.
    assert await store.usage(KEY, "ai") == LedgerUsage(used=300, reserved=200)
    # Its session is free long before its lease would have expired; the live one is not.
    await _lease(store, "new", "s-dead", NOW + 1)
    with pytest.raises(SessionError):
        await _lease(store, "new", "s-alive", NOW + 1)
    # It is forgotten: nothing more to take, and nothing charged twice.
    assert await store.reclaim_nodes(HOST, is_dead, NOW + 2) == Reclaimed(0, 0, 0)
    # The live node (which then stops heartbeating) and the new lease follow the TTL rule.
    assert await store.recover(NOW + 10 * TTL) == (2, 1)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=500, reserved=0)


async def test_nodes_of_other_hosts_are_not_even_looked_at(store: SqlStore) -> None:
    await store.register_node(_node("far", host="elsewhere"), NOW)
    await _hold(store, "far", "s1", 100)

    def is_dead(node: NodeRecord) -> bool:
        raise AssertionError(f"asked about {node}")

    assert await store.reclaim_nodes(HOST, is_dead, NOW) == Reclaimed(0, 0, 0)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=100)
    # The TTL rule still applies to them.
    assert await store.recover(NOW + TTL) == (1, 1)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=100, reserved=0)


async def test_settled_reservations_of_a_dead_node_stay_as_they_were(store: SqlStore) -> None:
    await store.register_node(_node("dead"), NOW)
    granted = await store.reserve(
        KEY, "ai", want=500, limit=10_000, minimum=1, now=NOW, ttl=TTL, node_id="dead"
    )
    assert granted is not None
    assert await store.settle(granted, 120, NOW) == 120
    reclaimed = await store.reclaim_nodes(HOST, lambda node: True, NOW + 1)
    assert reclaimed == Reclaimed(nodes=1, leases=0, reservations=0)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=120, reserved=0)
    assert await store.settle(granted, 500, NOW + 2) == 0


async def test_two_processes_reclaiming_one_dead_node_take_it_once(
    store: SqlStore, store_url: str
) -> None:
    other = SqlStore(store_url)
    await other.open()
    try:
        await store.register_node(_node("dead"), NOW)
        for i in range(5):
            await _hold(store, "dead", f"s{i}", 100)
        outcomes = await asyncio.gather(
            *(
                (store, other)[i % 2].reclaim_nodes(HOST, lambda node: True, NOW + 1)
                for i in range(6)
            )
        )
    finally:
        await other.aclose()
    assert sum(o.nodes for o in outcomes) == 1
    assert sum(o.leases for o in outcomes) == 5
    assert sum(o.reservations for o in outcomes) == 5
    assert await store.usage(KEY, "ai") == LedgerUsage(used=500, reserved=0)
    assert await store.count_active("proj_a", "alice", NOW + 1) == 0


async def test_recover_forgets_nodes_silent_for_a_day(
    store: SqlStore, raw_engine: AsyncEngine
) -> None:
    await store.register_node(_node("quiet"), NOW)
    await store.register_node(_node("beating"), NOW)
    await store.heartbeat("beating", NOW + 80_000, TTL)
    await store.recover(NOW + 86_400 - 1)
    assert set(await _nodes(raw_engine)) == {"quiet", "beating"}
    await store.recover(NOW + 86_401)
    assert set(await _nodes(raw_engine)) == {"beating"}
