"""Projects and their secrets."""

from __future__ import annotations

import asyncio
import re

import pytest

from chucky.errors import ValidationError
from chucky.server.sql import SqlStore

NOW = 1_800_000_000.0


async def test_create_with_a_generated_id_and_get_it_back(store: SqlStore) -> None:
    project = await store.create_project("Demo", "hk_live_a", NOW)
    assert re.fullmatch(r"proj_[0-9a-f]{12}", project.project_id)
    assert (project.name, project.created_at, project.secrets) == ("Demo", NOW, ("hk_live_a",))
    assert await store.get_project(project.project_id) == project
    assert await store.get_project("proj_unknown") is None


async def test_a_taken_id_is_refused(store: SqlStore) -> None:
    await store.create_project("One", "hk_live_a", NOW, project_id="proj_x")
    with pytest.raises(ValidationError, match="already exists") as caught:
        await store.create_project("Two", "hk_live_b", NOW, project_id="proj_x")
    assert caught.value.details == {"reason": "invalid_options"}
    project = await store.get_project("proj_x")
    assert project is not None
    assert (project.name, project.secrets) == ("One", ("hk_live_a",))


async def test_list_is_oldest_first(store: SqlStore) -> None:
    await store.create_project("B", "s1", NOW + 2, project_id="proj_b")
    await store.create_project("A", "s2", NOW + 1, project_id="proj_a")
    await store.create_project("C", "s3", NOW + 3, project_id="proj_c")
    assert [p.project_id for p in await store.list_projects()] == ["proj_a", "proj_b", "proj_c"]


async def test_added_secrets_keep_the_old_ones_oldest_first(store: SqlStore) -> None:
    await store.create_project("A", "hk_live_1", NOW, project_id="proj_a")
    await store.add_secret("proj_a", "hk_live_2", NOW + 1)
    project = await store.add_secret("proj_a", "hk_live_3", NOW + 1)
    assert project.secrets == ("hk_live_1", "hk_live_2", "hk_live_3")
    # Adding an active secret again changes nothing.
    assert (await store.add_secret("proj_a", "hk_live_1", NOW + 2)).secrets == project.secrets
    with pytest.raises(ValidationError, match="No project"):
        await store.add_secret("proj_missing", "hk_live_9", NOW)


async def test_revoke_by_prefix(store: SqlStore) -> None:
    await store.create_project("A", "hk_live_aaa1", NOW, project_id="proj_a")
    await store.add_secret("proj_a", "hk_live_aaa2", NOW)
    await store.add_secret("proj_a", "hk_live_bbb1", NOW)
    assert await store.revoke_secrets("proj_a", "hk_live_aaa", NOW + 1) == 2
    project = await store.get_project("proj_a")
    assert project is not None
    assert project.secrets == ("hk_live_bbb1",)
    assert await store.revoke_secrets("proj_a", "hk_live_zzz", NOW + 1) == 0
    assert await store.revoke_secrets("proj_a", "hk_live_aaa", NOW + 1) == 0  # revoked already


async def test_revoke_refuses_an_empty_prefix_the_last_secret_and_unknown_projects(
    store: SqlStore,
) -> None:
    await store.create_project("A", "hk_live_1", NOW, project_id="proj_a")
    await store.add_secret("proj_a", "hk_live_2", NOW)
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
    assert project.secrets == ("hk_live_1", "hk_live_2")
    assert await store.revoke_secrets("proj_a", "hk_live_1", NOW) == 1
    with pytest.raises(ValidationError, match="every active secret"):
        await store.revoke_secrets("proj_a", "hk_live_2", NOW)


async def test_concurrent_revokes_never_leave_a_project_without_a_secret(
    store: SqlStore,
) -> None:
    await store.create_project("A", "hk_live_a", NOW, project_id="proj_a")
    await store.add_secret("proj_a", "hk_live_b", NOW)
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
    created = await store.upsert_project("proj_cfg", ["hk_live_1", "hk_live_2"], NOW)
    assert (created.project_id, created.name, created.secrets) == (
        "proj_cfg",
        "proj_cfg",
        ("hk_live_1", "hk_live_2"),
    )
    assert await store.revoke_secrets("proj_cfg", "hk_live_1", NOW + 1) == 1
    await store.add_secret("proj_cfg", "hk_live_3", NOW + 2)
    again = await store.upsert_project("proj_cfg", ["hk_live_1"], NOW + 3)
    # Revoked before, accepted again; the others stay; the original creation time stays.
    assert again.secrets == ("hk_live_1", "hk_live_2", "hk_live_3")
    assert again.created_at == NOW
    assert await store.get_project("proj_cfg") == again
    assert [p.project_id for p in await store.list_projects()] == ["proj_cfg"]


async def test_upsert_of_an_existing_named_project_keeps_its_name(store: SqlStore) -> None:
    await store.create_project("Named", "hk_live_1", NOW, project_id="proj_n")
    project = await store.upsert_project("proj_n", ["hk_live_2"], NOW + 1)
    assert (project.name, project.secrets) == ("Named", ("hk_live_1", "hk_live_2"))
