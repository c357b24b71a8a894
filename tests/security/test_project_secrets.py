"""Issue 11, finding 10: a secret passed on a command line is not valid for ever.

Projects given with ``--project`` / ``CHUCKY_PROJECTS`` (``ServerConfig.projects``) live in
the process that was given them: their secrets are never written to the database, so a restart
with a new secret revokes the old one, and the database's secrets for that id are not accepted.
Deleting a project leaves none of its sessions usable. Real servers on 127.0.0.1, port 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from support.raw import check_result, open_raw, open_session, recv, send, turn, user_frame

from chucky import create_budget, create_token
from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.sql import SqlStore
from chucky.testing import ScriptedServer, scripted_server

OLD = "hk_live_" + "0123456789abcdef" * 2
NEW = "hk_live_" + "fedcba9876543210" * 2
STORED = "hk_live_" + "5" * 32
PROJECT = "test-project"


def token_of(secret: str, project: str = PROJECT, user: str = "carol") -> str:
    return create_token(user, project, secret, create_budget(1.0, 1.0))


async def verdict(server: ScriptedServer, token: str) -> dict[str, Any]:
    """The first frame the server sends to ``token``: ``ready``, or its ``error``."""
    async with open_raw(server, token=token) as ws:
        frame: dict[str, Any] = await recv(ws)
        return frame


def refused(frame: dict[str, Any]) -> bool:
    return frame["type"] == "error" and frame["payload"]["code"] == "AUTHENTICATION_ERROR"


async def test_a_restart_with_a_new_secret_revokes_the_old_one(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/state.db"
    async with scripted_server(secret=OLD, database_url=database_url) as server:
        assert not refused(await verdict(server, token_of(OLD)))
        async with open_session(server, user="carol", token=token_of(OLD)) as (ws, info):
            check_result(await turn(ws, "echo kept across the rotation"))
        session_id = info["sessionId"]
    async with scripted_server(secret=NEW, database_url=database_url) as server:
        old = await verdict(server, token_of(OLD))
        assert refused(old)
        assert old["payload"]["details"]["reason"] == "invalid_token"
        # The project's sessions belong to its id: the new secret's tokens resume them.
        async with open_session(
            server, user="carol", token=token_of(NEW), sessionId=session_id
        ) as (ws, info):
            assert info["sessionId"] == session_id
            assert check_result(await turn(ws, "recall"))["result"] == (
                "echo kept across the rotation"
            )


async def test_configured_secrets_are_never_written(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/state.db"
    async with scripted_server(secret=OLD, database_url=database_url) as server:
        async with open_session(server, token=token_of(OLD)) as (ws, _):
            check_result(await turn(ws, "echo hi"))
        store = server.server.store
        assert await store.get_project(PROJECT) is None
        assert await store.list_projects() == []
    # Not in the database file, nor in its write-ahead log.
    assert _files_holding(tmp_path, OLD.encode()) == []


def _files_holding(directory: Path, data: bytes) -> list[str]:
    files = list(directory.iterdir())
    assert files
    return [path.name for path in files if data in path.read_bytes()]


async def test_a_configured_project_ignores_the_databases_secrets_for_its_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database an older version wrote --project secrets into (or a project created there).
    database_url = f"sqlite+aiosqlite:///{tmp_path}/state.db"
    store = SqlStore(database_url)
    await store.open()
    await store.create_project("stale", STORED, 0.0, project_id=PROJECT)
    await store.create_project("other", STORED, 0.0, project_id="other")
    await store.aclose()
    with caplog.at_level(logging.WARNING, "chucky.server"):
        async with scripted_server(secret=NEW, database_url=database_url) as server:
            assert refused(await verdict(server, token_of(STORED)))
            assert not refused(await verdict(server, token_of(NEW)))
            # A project only the database knows is served from the database, as before.
            assert not refused(await verdict(server, token_of(STORED, project="other")))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"project {PROJECT} is configured (--project/CHUCKY_PROJECTS): this server accepts "
        "only the configured secrets, not the 1 the database holds for it"
    ]
    assert "hk_live_" not in caplog.text


async def test_a_configured_project_rotates_by_configuring_both_secrets(tmp_path: Path) -> None:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        projects={PROJECT: [OLD, NEW]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/state.db",
    )
    async with ChuckyServer(config) as running:
        server = ScriptedServer(running, PROJECT, NEW)
        for secret in (OLD, NEW):
            assert not refused(await verdict(server, token_of(secret)))


async def test_deleting_a_project_leaves_none_of_its_sessions_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/state.db"
    with caplog.at_level(logging.INFO, "chucky.server"):
        async with scripted_server(database_url=database_url) as server:
            store = server.server.store
            await store.create_project("acme", STORED, 0.0, project_id="acme")
            token = token_of(STORED, project="acme")
            async with open_session(server, token=token) as (ws, info):
                check_result(await turn(ws, "echo before"))
                await store.delete_project("acme")
                # The socket open at the time: its next turn finds no session.
                await send(ws, user_frame("echo after"))
                frame = await recv(ws)
                assert frame["type"] == "error", frame
                assert frame["payload"]["details"]["reason"] == "session_not_found"
            session_id = info["sessionId"]
    # An administrator's act, not a failure: no error logged, no retries.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    # The project made again under the same id, with a new secret: nothing of the old one.
    async with scripted_server(database_url=database_url) as server:
        store = server.server.store
        await store.create_project("acme again", NEW, 0.0, project_id="acme")
        async with open_raw(server, token=token_of(NEW, project="acme")) as ws:
            assert (await recv(ws))["payload"] == {"action": "ready"}
            await send(ws, {"type": "init", "payload": {"sessionId": session_id}})
            frame = await recv(ws)
            assert frame["type"] == "error", frame
            assert frame["payload"]["details"]["reason"] == "session_not_found"
