"""The budget ledger: reserve, settle, recover, heartbeat, and the races."""

from __future__ import annotations

import asyncio

from chucky.server.sql import SqlStore
from chucky.server.store import LedgerKey, LedgerUsage, Reservation

NOW = 1_800_000_000.0
KEY = LedgerKey("proj_a", "alice", "day:2027-01-15T00:00:00Z")
TTL = 60.0


async def _reserve(
    store: SqlStore,
    want: int,
    *,
    limit: int = 1_000,
    minimum: int = 1,
    now: float = NOW,
    node: str = "node-1",
    key: LedgerKey = KEY,
) -> Reservation | None:
    return await store.reserve(
        key, "ai", want=want, limit=limit, minimum=minimum, now=now, ttl=TTL, node_id=node
    )


async def test_usage_is_zero_for_an_unknown_window(store: SqlStore) -> None:
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=0)


async def test_reserve_in_full_then_partly_then_not_at_all(store: SqlStore) -> None:
    full = await _reserve(store, 600)
    assert full is not None
    assert (full.amount, full.used, full.reserved, full.kind, full.key) == (600, 0, 600, "ai", KEY)
    partial = await _reserve(store, 600, minimum=100)
    assert partial is not None
    assert (partial.amount, partial.reserved) == (400, 1_000)
    assert partial.reservation_id != full.reservation_id
    assert await _reserve(store, 600) is None
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=1_000)


async def test_below_the_minimum_nothing_is_granted_or_changed(store: SqlStore) -> None:
    assert await _reserve(store, 700) is not None
    assert await _reserve(store, 500, minimum=301) is None
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=700)
    exact = await _reserve(store, 500, minimum=300)
    assert exact is not None
    assert exact.amount == 300


async def test_a_zero_minimum_may_grant_zero(store: SqlStore) -> None:
    assert await _reserve(store, 1_000) is not None
    zero = await _reserve(store, 50, minimum=0)
    assert zero is not None
    assert zero.amount == 0
    assert await store.settle(zero, 10, NOW) == 0
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=1_000)


async def test_kinds_windows_and_users_are_separate(store: SqlStore) -> None:
    await _reserve(store, 100)
    await store.reserve(
        KEY, "compute", want=7, limit=10, minimum=1, now=NOW, ttl=TTL, node_id="node-1"
    )
    other_window = LedgerKey("proj_a", "alice", "day:2027-01-16T00:00:00Z")
    other_user = LedgerKey("proj_a", "bob", KEY.window)
    await _reserve(store, 5, key=other_window)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=100)
    assert await store.usage(KEY, "compute") == LedgerUsage(used=0, reserved=7)
    assert await store.usage(other_window, "ai") == LedgerUsage(used=0, reserved=5)
    assert await store.usage(other_user, "ai") == LedgerUsage(used=0, reserved=0)


async def test_settle_charges_what_was_used_clamped_to_the_reservation(store: SqlStore) -> None:
    less = await _reserve(store, 300)
    more = await _reserve(store, 300)
    negative = await _reserve(store, 300)
    assert less is not None and more is not None and negative is not None
    assert await store.settle(less, 120, NOW + 1) == 120
    assert await store.usage(KEY, "ai") == LedgerUsage(used=120, reserved=600)
    assert await store.settle(more, 10_000, NOW + 1) == 300
    assert await store.settle(negative, -5, NOW + 1) == 0
    assert await store.usage(KEY, "ai") == LedgerUsage(used=420, reserved=0)
    # What was released is available again.
    again = await _reserve(store, 1_000)
    assert again is not None
    assert (again.amount, again.used) == (580, 420)


async def test_settling_twice_charges_once(store: SqlStore) -> None:
    reservation = await _reserve(store, 300)
    assert reservation is not None
    assert await store.settle(reservation, 200, NOW) == 200
    assert await store.settle(reservation, 200, NOW) == 0
    assert await store.settle(reservation, 300, NOW) == 0
    assert await store.usage(KEY, "ai") == LedgerUsage(used=200, reserved=0)


async def test_concurrent_settles_of_one_reservation_charge_once(store: SqlStore) -> None:
    reservation = await _reserve(store, 300)
    assert reservation is not None
    charged = await asyncio.gather(*(store.settle(reservation, 250, NOW) for _ in range(10)))
    assert sorted(charged) == [0] * 9 + [250]
    assert await store.usage(KEY, "ai") == LedgerUsage(used=250, reserved=0)


async def test_recover_charges_expired_reservations_in_full(store: SqlStore) -> None:
    dead = await _reserve(store, 300, node="node-dead")
    live = await _reserve(store, 200, now=NOW + 30, node="node-live")
    assert dead is not None and live is not None
    assert await store.recover(NOW + TTL - 1) == (0, 0)
    assert await store.recover(NOW + TTL) == (0, 1)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=300, reserved=200)
    assert await store.recover(NOW + TTL + 1) == (0, 0)
    # The owner coming back late charges nothing more.
    assert await store.settle(dead, 10, NOW + TTL + 2) == 0
    assert await store.settle(live, 150, NOW + TTL + 2) == 150
    assert await store.usage(KEY, "ai") == LedgerUsage(used=450, reserved=0)


async def test_heartbeat_keeps_a_nodes_reservations_alive(store: SqlStore) -> None:
    mine = await _reserve(store, 300, node="node-1")
    theirs = await _reserve(store, 100, node="node-2")
    assert mine is not None and theirs is not None
    await store.heartbeat("node-1", NOW + 50, TTL)
    assert await store.recover(NOW + TTL + 10) == (0, 1)  # only node-2's
    assert await store.usage(KEY, "ai") == LedgerUsage(used=100, reserved=300)
    assert await store.recover(NOW + 50 + TTL) == (0, 1)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=400, reserved=0)


async def test_heartbeat_leaves_settled_reservations_settled(store: SqlStore) -> None:
    reservation = await _reserve(store, 300)
    assert reservation is not None
    await store.settle(reservation, 100, NOW + 1)
    await store.heartbeat("node-1", NOW + 2, TTL)
    assert await store.recover(NOW + 10 * TTL) == (0, 0)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=100, reserved=0)


async def test_twenty_concurrent_reserves_get_exactly_three_turns(store: SqlStore) -> None:
    grants = await asyncio.gather(
        *(_reserve(store, 100, limit=300, minimum=100, node=f"n{i}") for i in range(20))
    )
    granted = [g for g in grants if g is not None]
    assert len(granted) == 3
    assert all(g.amount == 100 for g in granted)
    assert all(g.used + g.reserved <= 300 for g in granted)
    assert sorted(g.reserved for g in granted) == [100, 200, 300]
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=300)


async def test_concurrent_partial_grants_never_exceed_the_limit(store: SqlStore) -> None:
    grants = await asyncio.gather(*(_reserve(store, 70, limit=300, minimum=1) for _ in range(20)))
    granted = [g for g in grants if g is not None]
    assert sum(g.amount for g in granted) == 300
    assert all(0 < g.amount <= 70 for g in granted)
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=300)


async def test_reserving_and_settling_at_once_never_exceeds_the_limit(store: SqlStore) -> None:
    limit = 1_000

    async def turn(i: int) -> int:
        reservation = await _reserve(store, 150, limit=limit, minimum=50, node=f"n{i}")
        if reservation is None:
            return 0
        return await store.settle(reservation, 100 + i, NOW + 1)

    charged = await asyncio.gather(*(turn(i) for i in range(30)))
    usage = await store.usage(KEY, "ai")
    assert usage.reserved == 0
    assert usage.used == sum(charged) <= limit


async def test_two_nodes_on_one_database_never_exceed_the_limit(
    store: SqlStore, store_url: str
) -> None:
    other = SqlStore(store_url)
    await other.open()
    try:
        grants = await asyncio.gather(
            *(
                _reserve(node_store, 100, limit=300, minimum=100, node=f"n{i}")
                for i in range(20)
                for node_store in ([store, other][i % 2],)
            )
        )
        assert sum(1 for g in grants if g is not None) == 3
        partial = await asyncio.gather(
            *(
                _reserve(
                    [store, other][i % 2],
                    70,
                    limit=300,
                    minimum=1,
                    key=LedgerKey("proj_a", "bob", KEY.window),
                )
                for i in range(20)
            )
        )
        assert sum(g.amount for g in partial if g is not None) == 300
        assert await other.usage(KEY, "ai") == LedgerUsage(used=0, reserved=300)
    finally:
        await other.aclose()
