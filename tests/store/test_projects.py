"""Projects and their secrets."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chucky.errors import ValidationError
from chucky.server.sql import SqlStore
from chucky.server.sql.schema import metadata
from chucky.server.store import LedgerKey, LedgerUsage, ProjectDeletion

NOW = 1_800_000_000.0


def S(tag: str) -> str:
    """A well-formed secret starting with ``hk_live_<tag>`` (``tag``: hex digits)."""
    return "hk_live_" + tag.ljust(32, "0")


async def test_create_with_a_generated_id_and_get_it_back(store: SqlStore) -> None:
    project = await store.create_project("Demo", S("a"), NOW)
    assert re.fullmatch(r"proj_[0-9a-f]{12}", project.project_id)
    assert (project.name, project.created_at, project.secrets) == ("Demo", NOW, (S("a"),))
    assert await store.get_project(project.project_id) == project
    assert await store.get_project("proj_unknown") is None


async def test_a_taken_id_is_refused(store: SqlStore) -> None:
    await store.create_project("One", S("a"), NOW, project_id="proj_x")
    with pytest.raises(ValidationError, match="already exists") as caught:
        await store.create_project("Two", S("b"), NOW, project_id="proj_x")
    assert caught.value.details == {"reason": "invalid_options"}
    project = await store.get_project("proj_x")
    assert project is not None
    assert (project.name, project.secrets) == ("One", (S("a"),))


async def test_list_is_oldest_first(store: SqlStore) -> None:
    await store.create_project("B", S("c1"), NOW + 2, project_id="proj_b")
    await store.create_project("A", S("c2"), NOW + 1, project_id="proj_a")
    await store.create_project("C", S("c3"), NOW + 3, project_id="proj_c")
    assert [p.project_id for p in await store.list_projects()] == ["proj_a", "proj_b", "proj_c"]


async def test_added_secrets_keep_the_old_ones_oldest_first(store: SqlStore) -> None:
    await store.create_project("A", S("1"), NOW, project_id="proj_a")
    await store.add_secret("proj_a", S("2"), NOW + 1)
    project = await store.add_secret("proj_a", S("3"), NOW + 1)
    assert project.secrets == (S("1"), S("2"), S("3"))
    # Adding an active secret again changes nothing.
    assert (await store.add_secret("proj_a", S("1"), NOW + 2)).secrets == project.secrets
    with pytest.raises(ValidationError, match="No project"):
        await store.add_secret("proj_missing", S("9"), NOW)


async def test_revoke_by_prefix(store: SqlStore) -> None:
    await store.create_project("A", S("aaa1"), NOW, project_id="proj_a")
    await store.add_secret("proj_a", S("aaa2"), NOW)
    await store.add_secret("proj_a", S("bbb1"), NOW)
    assert await store.revoke_secrets("proj_a", "hk_live_aaa", NOW + 1) == 2
    project = await store.get_project("proj_a")
    assert project is not None
    assert project.secrets == (S("bbb1"),)
    assert await store.revoke_secrets("proj_a", "hk_live_zzz", NOW + 1) == 0
    assert await store.revoke_secrets("proj_a", "hk_live_aaa", NOW + 1) == 0  # revoked already


async def test_revoke_refuses_an_empty_prefix_the_last_secret_and_unknown_projects(
    store: SqlStore,
) -> None:
    await store.create_project("A", S("1"), NOW, project_id="proj_a")
    await store.add_secret("proj_a", S("2"), NOW)
    with pytest.raises(ValidationError) as empty:
        await store.revoke_secrets("proj_a", "", NOW)
    assert empty.value.details == {"reason": "invalid_options"}
    with pytest.raises(ValidationError, match="every active secret") as last:
        await store.revoke_secrets("proj_a", "hk_live_", NOW)
    assert last.value.details == {"reason": "invalid_options"}
    with pytest.raises(ValidationError, match="No project"):
        await store.revoke_secrets("proj_missing", "hk", NOW)
    project = await store.get_project("proj_a")
    assert project is not None
    assert project.secrets == (S("1"), S("2"))
    assert await store.revoke_secrets("proj_a", "hk_live_1", NOW) == 1
    with pytest.raises(ValidationError, match="every active secret"):
        await store.revoke_secrets("proj_a", "hk_live_2", NOW)


async def test_concurrent_revokes_never_leave_a_project_without_a_secret(
    store: SqlStore,
) -> None:
    await store.create_project("A", S("a"), NOW, project_id="proj_a")
    await store.add_secret("proj_a", S("b"), NOW)
    outcomes = await asyncio.gather(
        store.revoke_secrets("proj_a", "hk_live_a", NOW),
        store.revoke_secrets("proj_a", "hk_live_b", NOW),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ValidationError", "int"]
    project = await store.get_project("proj_a")
    assert project is not None
    assert len(project.secrets) == 1


async def test_upsert_creates_keeps_and_reactivates(store: SqlStore) -> None:
    created = await store.upsert_project("proj_cfg", [S("1"), S("2")], NOW)
    assert (created.project_id, created.name, created.secrets) == (
        "proj_cfg",
        "proj_cfg",
        (S("1"), S("2")),
    )
    assert await store.revoke_secrets("proj_cfg", "hk_live_1", NOW + 1) == 1
    await store.add_secret("proj_cfg", S("3"), NOW + 2)
    again = await store.upsert_project("proj_cfg", [S("1")], NOW + 3)
    # Revoked before, accepted again; the others stay; the original creation time stays.
    assert again.secrets == (S("1"), S("2"), S("3"))
    assert again.created_at == NOW
    assert await store.get_project("proj_cfg") == again
    assert [p.project_id for p in await store.list_projects()] == ["proj_cfg"]


async def test_upsert_of_an_existing_named_project_keeps_its_name(store: SqlStore) -> None:
    await store.create_project("Named", S("1"), NOW, project_id="proj_n")
    project = await store.upsert_project("proj_n", [S("2")], NOW + 1)
    assert (project.name, project.secrets) == ("Named", (S("1"), S("2")))


# -- the secret's form (issue 11, finding 10) ----------------------------------------------------

MALFORMED = [
    "hk_live_" + "a" * 33,  # one digit too many: accepted before
    "hk_live_" + "a" * 31,
    "hk_live_" + "g" * 32,
    "HK_LIVE_" + "a" * 32,
    " hk_live_" + "a" * 32,
    "hk_live_" + "a" * 32 + "\n",
    "hk_live_a",
    "",
]


@pytest.mark.parametrize("secret", MALFORMED)
async def test_every_way_in_refuses_a_malformed_secret(store: SqlStore, secret: str) -> None:
    await store.create_project("A", S("1"), NOW, project_id="proj_a")
    attempts = [
        store.create_project("B", secret, NOW, project_id="proj_b"),
        store.add_secret("proj_a", secret, NOW),
        store.upsert_project("proj_c", [S("2"), secret], NOW),
    ]
    for attempt in attempts:
        with pytest.raises(ValidationError) as caught:
            await attempt
        message = caught.value.message
        assert message.startswith("invalid secret of project 'proj_")
        assert "hk_live_ followed by exactly 32 hex digits" in message
        assert "\n" not in message
        assert secret.strip() not in message or not secret.strip()
        assert caught.value.details == {"reason": "invalid_options"}
    # Nothing was written.
    assert [p.project_id for p in await store.list_projects()] == ["proj_a"]
    project = await store.get_project("proj_a")
    assert project is not None
    assert project.secrets == (S("1"),)


async def test_upper_case_hex_digits_are_hex_digits(store: SqlStore) -> None:
    project = await store.create_project("A", "hk_live_" + "AbCdEf01" * 4, NOW)
    assert project.secrets == ("hk_live_" + "AbCdEf01" * 4,)


# -- deleting a project ---------------------------------------------------------------------------

KEY = LedgerKey("proj_a", "alice", "day:2027-01-15T00:00:00Z")


async def _populate(store: SqlStore, project_id: str, user: str = "alice") -> str:
    """A session with a message, usage, an open reservation, a lease, a rate count and a
    window anchor of ``user`` in ``project_id``; returns the session id."""
    session = await store.create_session(project_id, user, "m", NOW)
    session.append("user", "remember me")
    await store.save_session(session)
    key = LedgerKey(project_id, user, KEY.window)
    done = await store.reserve(
        key, "ai", want=100, limit=1000, minimum=1, now=NOW, ttl=60, node_id="n"
    )
    assert done is not None
    await store.settle(done, 40, NOW)
    held = await store.reserve(
        key, "ai", want=100, limit=1000, minimum=1, now=NOW, ttl=60, node_id="n"
    )
    assert held is not None
    await store.acquire_lease(
        project_id,
        user,
        session.session_id,
        node_id="n",
        now=NOW,
        ttl=60,
        user_limit=None,
        project_limit=None,
    )
    await store.count_turn(project_id, user, now=NOW, limit=10)
    await store.window_anchor(project_id, user, "day", NOW)
    return session.session_id


async def test_delete_removes_everything_stored_under_the_project(
    store: SqlStore, raw_engine: AsyncEngine
) -> None:
    await store.create_project("A", S("1"), NOW, project_id="proj_a")
    await store.add_secret("proj_a", S("2"), NOW)
    await store.revoke_secrets("proj_a", "hk_live_1", NOW)
    gone = await _populate(store, "proj_a")
    await store.create_project("B", S("3"), NOW, project_id="proj_b")
    kept = await _populate(store, "proj_b")

    deleted = await store.delete_project("proj_a")
    assert deleted == ProjectDeletion(
        project_id="proj_a", existed=True, secrets=2, sessions=1, ledger_rows=1
    )
    assert await store.get_project("proj_a") is None
    assert await store.get_session(gone, "proj_a", "alice") is None
    assert await store.latest_session("proj_a", "alice") is None
    assert await store.usage(KEY, "ai") == LedgerUsage(used=0, reserved=0)
    assert await store.count_active("proj_a", None, NOW) == 0
    # Not a row left under the id, in any table.
    async with raw_engine.connect() as connection:
        for table in metadata.sorted_tables:
            if "project_id" in table.c:
                rows = await connection.scalar(
                    select(func.count()).where(table.c.project_id == "proj_a")
                )
                assert rows == 0, table.name
            if table.name == "messages":
                assert (
                    await connection.scalar(select(func.count()).where(table.c.session_id == gone))
                    == 0
                )
    # The other project is untouched.
    other = await store.get_session(kept, "proj_b", "alice")
    assert other is not None
    assert len(other.transcript) == 1
    assert await store.count_active("proj_b", None, NOW) == 1
    # A project created again under the id starts from nothing.
    again = await store.create_project("A again", S("4"), NOW, project_id="proj_a")
    assert again.secrets == (S("4"),)
    assert await store.get_session(gone, "proj_a", "alice") is None


async def test_delete_of_a_configured_project_removes_its_sessions_and_usage(
    store: SqlStore,
) -> None:
    # A project given with --project has no row, but its sessions and usage are stored.
    gone = await _populate(store, "proj_cfg")
    deleted = await store.delete_project("proj_cfg")
    assert (deleted.existed, deleted.secrets, deleted.sessions) == (False, 0, 1)
    assert await store.get_session(gone, "proj_cfg", "alice") is None


async def test_delete_of_nothing_is_refused(store: SqlStore) -> None:
    with pytest.raises(ValidationError, match="No project proj_none") as caught:
        await store.delete_project("proj_none")
    assert caught.value.details == {"reason": "invalid_options"}
