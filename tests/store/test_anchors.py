"""Window anchors: the first token of a (project, user, window type) fixes where its windows
are counted from, so no number of tokens multiplies a budget (docs/protocol.md section 7)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from chucky.server.budget import BudgetSettings, UserBudget
from chucky.server.sql import SqlStore
from chucky.server.store import LedgerKey
from chucky.tokens import TokenClaims, create_budget, create_token, decode_token

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SECRET = "hk_live_00000000000000000000000000000000"


def _claims(
    window: str, window_start: str | None, *, user: str = "alice", iat: float = NOW - 60
) -> TokenClaims:
    budget = create_budget(1.0, 1.0, window, window_start)
    if window_start is None:
        budget = budget.model_copy(update={"window_start": None})
    token = create_token(user, "proj_a", SECRET, budget, now=iat)
    return decode_token(token).claims


def _budget(store: SqlStore, claims: TokenClaims) -> UserBudget:
    return UserBudget(store, claims, BudgetSettings(), node_id="node-1")


async def test_the_first_anchor_stays(store: SqlStore) -> None:
    assert await store.window_anchor("proj_a", "alice", "day", 100.5) == 100.5
    assert await store.window_anchor("proj_a", "alice", "day", 200.0) == 100.5
    # Another window type, user or project is an anchor of its own.
    assert await store.window_anchor("proj_a", "alice", "hour", 300.0) == 300.0
    assert await store.window_anchor("proj_a", "bob", "day", 400.0) == 400.0
    assert await store.window_anchor("proj_b", "alice", "day", 500.0) == 500.0
    assert await store.window_anchor("proj_a", "alice", "day", 600.0) == 100.5


async def test_an_anchor_keeps_its_microseconds(store: SqlStore) -> None:
    proposed = datetime(2027, 1, 15, 7, 59, 58, 123457, tzinfo=UTC).timestamp()
    assert await store.window_anchor("proj_a", "alice", "day", proposed) == proposed


async def test_concurrent_first_anchors_on_two_stores_agree(
    store: SqlStore, store_url: str
) -> None:
    other = SqlStore(store_url)
    await other.open()
    try:
        stores = (store, other)
        anchors = await asyncio.gather(
            *(stores[i % 2].window_anchor("proj_a", "racer", "day", NOW + i) for i in range(20))
        )
    finally:
        await other.aclose()
    assert len(set(anchors)) == 1
    assert anchors[0] in {NOW + i for i in range(20)}


async def test_later_tokens_count_in_the_first_tokens_window(store: SqlStore) -> None:
    first = _budget(store, _claims("day", "2027-01-15T06:00:00Z"))
    later = _budget(store, _claims("day", "2027-01-15T07:59:58.500000Z", iat=NOW - 1))
    key = await first.key(NOW)
    assert key == LedgerKey("proj_a", "alice", "day:2027-01-15T06:00:00Z")
    assert await later.key(NOW) == key
    assert await later.window(NOW) == ("2027-01-15T06:00:00Z", "2027-01-16T06:00:00Z")
    # The next instance, counted from the first token's anchor.
    assert (await later.key(NOW + 86_400)).window == "day:2027-01-16T06:00:00Z"


async def test_without_window_start_the_first_tokens_iat_anchors(store: SqlStore) -> None:
    first = _budget(store, _claims("hour", None, iat=NOW - 90))
    later = _budget(store, _claims("hour", None, iat=NOW - 10))
    assert (await first.key(NOW)).window == "hour:2027-01-15T07:58:30Z"
    assert (await later.key(NOW)).window == "hour:2027-01-15T07:58:30Z"


async def _reserve_all(budget: UserBudget, want: int) -> bool:
    key, limit = await budget.key(NOW), budget.limit("ai")
    granted = await budget.store.reserve(
        key, "ai", want=want, limit=limit, minimum=1, now=NOW, ttl=30, node_id="node-1"
    )
    return granted is not None


async def test_two_budgets_of_one_user_share_one_limit(store: SqlStore) -> None:
    first = _budget(store, _claims("day", "2027-01-15T06:00:00Z"))
    later = _budget(store, _claims("day", "2027-01-15T08:00:00Z", iat=NOW))
    assert await _reserve_all(first, first.limit("ai"))
    assert not await _reserve_all(later, 1)
    error = await later.exceeded_now("ai", NOW)
    assert error.details["remaining"] == 0
    assert error.details["windowEnd"] == "2027-01-16T06:00:00Z"


@pytest.mark.parametrize(
    ("window_start", "iat"),
    [("2024-01-01T00:00:00Z", NOW - 60), ("2027-01-15T07:59:00Z", NOW - 1), (None, NOW - 5)],
)
async def test_lifetime_has_one_key_whatever_the_token(
    store: SqlStore, window_start: str | None, iat: float
) -> None:
    budget = _budget(store, _claims("lifetime", window_start, iat=iat))
    assert await budget.key(NOW) == LedgerKey("proj_a", "alice", "lifetime")
    assert await budget.key(NOW + 10 * 365 * 86_400) == LedgerKey("proj_a", "alice", "lifetime")
    start, end = await budget.window(NOW)
    assert end is None
    assert start.endswith("Z")


async def test_the_lifetime_window_starts_at_the_first_tokens_anchor(store: SqlStore) -> None:
    first = _budget(store, _claims("lifetime", "2024-01-01T00:00:00Z"))
    later = _budget(store, _claims("lifetime", "2027-01-15T07:00:00Z"))
    assert await first.window(NOW) == ("2024-01-01T00:00:00Z", None)
    assert await later.window(NOW) == ("2024-01-01T00:00:00Z", None)
    report = await later.report(NOW)
    assert report["window"] == {"type": "lifetime", "start": "2024-01-01T00:00:00Z", "end": None}


async def test_a_budget_reads_its_anchor_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = _budget(store, _claims("day", "2027-01-15T06:00:00Z"))
    calls: list[tuple[str, str, str, float]] = []
    original = store.window_anchor

    async def counting(project_id: str, user_id: str, window: str, proposed: float) -> float:
        calls.append((project_id, user_id, window, proposed))
        return await original(project_id, user_id, window, proposed)

    monkeypatch.setattr(store, "window_anchor", counting)
    for _ in range(3):
        await budget.key(NOW)
        await budget.report(NOW)
        await budget.exceeded_now("compute", NOW)
    anchor = datetime(2027, 1, 15, 6, tzinfo=UTC).timestamp()
    assert calls == [("proj_a", "alice", "day", anchor)]
