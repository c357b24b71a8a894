"""Sessions over a raw WebSocket: resume, continue, fork, cut, ownership, busy.

The rules are docs/protocol.md section 5.
"""

from __future__ import annotations

import uuid

import pytest
from support.raw import (
    Frame,
    check_result,
    closed_code,
    init,
    open_raw,
    open_session,
    recv,
    send,
    turn,
)

from chucky.testing import ScriptedServer


async def _session_with_turns(server: ScriptedServer, *texts: str, user: str = "alice") -> str:
    """A session of ``user`` that ran ``texts``, closed again; its id."""
    async with open_session(server, user=user) as (ws, info):
        for text in texts:
            check_result(await turn(ws, text))
        return str(info["sessionId"])


async def _rejected(server: ScriptedServer, *, user: str, **options: object) -> Frame:
    """Open a socket whose ``init`` must fail fatally: its error payload (then close 1008)."""
    async with open_raw(server, user=user) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": options})
        error = await recv(ws)
        assert error["type"] == "error", error
        assert await closed_code(ws) == 1008
        payload = error["payload"]
        assert isinstance(payload, dict)
        return payload


@pytest.mark.parametrize("key", ["sessionId", "resume"])
async def test_resume_keeps_history(server: ScriptedServer, key: str) -> None:
    session_id = await _session_with_turns(server, "echo first words", "echo later")
    async with open_session(server, user="alice", **{key: session_id}) as (ws, info):
        assert info["sessionId"] == session_id
        assert info["messageCount"] == 4
        frames = await turn(ws, "recall")
        assert frames[0]["session_id"] == session_id
        assert check_result(frames)["result"] == "echo first words"


async def test_resume_by_another_user_is_session_not_found(server: ScriptedServer) -> None:
    session_id = await _session_with_turns(server, "echo secret", user="alice")
    stolen = await _rejected(server, user="mallory", sessionId=session_id)
    missing_id = str(uuid.uuid4())
    missing = await _rejected(server, user="mallory", sessionId=missing_id)
    for payload in (stolen, missing):
        assert payload["code"] == "SESSION_ERROR"
        assert payload["details"] == {"reason": "session_not_found"}
        assert "session" in payload["message"].lower()
    # Same answer as for an id that does not exist (no ownership oracle).
    assert stolen["message"].replace(session_id, "<id>") == missing["message"].replace(
        missing_id, "<id>"
    )
    # The owner still has it.
    async with open_session(server, user="alice", sessionId=session_id) as (ws, _):
        assert check_result(await turn(ws, "recall"))["result"] == "echo secret"


async def test_continue_picks_the_users_latest_session(server: ScriptedServer) -> None:
    await _session_with_turns(server, "echo older", user="alice")
    latest = await _session_with_turns(server, "echo newer", user="alice")
    await _session_with_turns(server, "echo not alice", user="bob")
    async with open_session(server, user="alice", **{"continue": True}) as (ws, info):
        assert info["sessionId"] == latest
        assert check_result(await turn(ws, "recall"))["result"] == "echo newer"


async def test_continue_without_a_session_starts_one(server: ScriptedServer) -> None:
    async with open_session(server, user="nobody-yet", **{"continue": True}) as (ws, info):
        assert info["messageCount"] == 0
        assert check_result(await turn(ws, "recall"))["result"] == "recall"


async def test_fork_copies_history_into_a_new_session(server: ScriptedServer) -> None:
    original = await _session_with_turns(server, "echo root", user="alice")
    async with open_session(server, user="alice", sessionId=original, forkSession=True) as (
        ws,
        info,
    ):
        fork = info["sessionId"]
        assert fork != original
        assert info["messageCount"] == 2
        frames = await turn(ws, "recall")
        assert frames[0]["session_id"] == fork
        assert check_result(frames)["result"] == "echo root"
    # The original is untouched by what happened in the fork.
    async with open_session(server, user="alice", sessionId=original) as (_, info):
        assert info["messageCount"] == 2


async def test_resume_session_at_drops_later_history(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        session_id = info["sessionId"]
        first = await turn(ws, "echo one")
        check_result(await turn(ws, "echo two"))
    cut_at = next(f["uuid"] for f in first if f["type"] == "assistant")
    async with open_session(server, user="alice", sessionId=session_id, resumeSessionAt=cut_at) as (
        ws,
        info,
    ):
        assert info["sessionId"] == session_id
        assert info["messageCount"] == 2
        check_result(await turn(ws, "echo three"))
    async with open_session(server, user="alice", sessionId=session_id) as (_, info):
        assert info["messageCount"] == 4


async def test_resume_session_at_unknown_uuid_is_rejected(server: ScriptedServer) -> None:
    session_id = await _session_with_turns(server, "echo one", user="alice")
    payload = await _rejected(
        server, user="alice", sessionId=session_id, resumeSessionAt=str(uuid.uuid4())
    )
    assert payload["code"] == "VALIDATION_ERROR"
    assert payload["details"]["reason"] == "invalid_options"
    async with open_session(server, user="alice", sessionId=session_id) as (_, info):
        assert info["messageCount"] == 2


async def test_a_session_open_on_two_sockets_is_busy(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        session_id = info["sessionId"]
        check_result(await turn(ws, "echo one"))
        payload = await _rejected(server, user="alice", sessionId=session_id)
        assert payload["code"] == "SESSION_ERROR"
        assert payload["details"]["reason"] == "session_busy"
        # The first socket is unaffected.
        assert check_result(await turn(ws, "recall"))["result"] == "echo one"
    # Once it is closed, the session can be resumed.
    async with open_session(server, user="alice", sessionId=session_id) as (ws, info):
        assert info["messageCount"] == 4


async def test_a_busy_session_is_not_cut_by_a_rejected_resume(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        session_id = info["sessionId"]
        first = await turn(ws, "echo one")
        check_result(await turn(ws, "echo two"))
        cut_at = next(f["uuid"] for f in first if f["type"] == "assistant")
        payload = await _rejected(
            server, user="alice", sessionId=session_id, resumeSessionAt=cut_at
        )
        assert payload["details"]["reason"] == "session_busy"
    async with open_session(server, user="alice", sessionId=session_id) as (_, info):
        assert info["messageCount"] == 4


async def test_a_busy_session_can_be_forked(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        session_id = info["sessionId"]
        check_result(await turn(ws, "echo live"))
        async with open_session(server, user="alice", sessionId=session_id, forkSession=True) as (
            fork_ws,
            fork_info,
        ):
            assert fork_info["sessionId"] != session_id
            assert check_result(await turn(fork_ws, "recall"))["result"] == "echo live"
        assert check_result(await turn(ws, "echo still mine"))["result"] == "still mine"


async def test_implicit_sessions_are_separate_per_socket(server: ScriptedServer) -> None:
    ids = []
    for _ in range(2):
        async with open_raw(server, user="alice") as ws:
            info = await init(ws)
            ids.append(info["sessionId"])
    assert ids[0] != ids[1]
