"""The ``messages`` init key seeds a transcript; ``POST /sessions/clear`` deletes a session
(docs/protocol.md sections 9 and 10; issue 12, part 2)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.raw import check_result, closed_code, http_post, open_raw, open_session, recv, send
from support.raw import turn as run_turn

from chucky import SessionError, SessionNotFoundError
from chucky.testing import ScriptedServer

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first words"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {}}],
    },
    {"role": "tool", "toolCallId": "t1", "content": "seen", "isError": True},
    {"role": "user", "content": "and more"},
    {"role": "assistant", "content": "noted"},
]


async def test_init_messages_seed_the_transcript(server: ScriptedServer) -> None:
    async with open_session(server, messages=HISTORY) as (ws, info):
        # The system message is the prompt; the tool result and the user message after it
        # merge into one user message: user, assistant, user, assistant.
        assert info["messageCount"] == 4
        assert check_result(await run_turn(ws, "recall"))["result"] == "first words"


async def _refused(server: ScriptedServer, messages: Any) -> dict[str, Any]:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": {"messages": messages}})
        error = await recv(ws)
        assert error["type"] == "error", error
        assert await closed_code(ws) == 1008
        payload = error["payload"]
        assert isinstance(payload, dict)
        return payload


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([{"role": "tool", "toolCallId": "nope", "content": "x"}], "messages[0]: tool_call_id"),
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}],
            "messages[1]: a tool message needs the tool_call_id",
        ),
        ([{"role": "wizard", "content": "x"}], "messages[0]: role"),
        ([{"role": "assistant", "content": ""}], "messages[0]: a assistant message needs"),
        (["text"], "messages[0]: a message must be an object"),
        ([{"role": "user", "content": "x", "toolCallId": "t"}], "belong to tool messages"),
    ],
)
async def test_a_bad_history_is_a_validation_error(
    server: ScriptedServer, messages: Any, fragment: str
) -> None:
    payload = await _refused(server, messages)
    assert payload["code"] == "VALIDATION_ERROR"
    assert payload["details"]["reason"] == "invalid_options"
    assert fragment in payload["message"]


async def _clear(server: ScriptedServer, session_id: str, user: str = "alice") -> Any:
    token = server.token(user)
    status, _, body = await http_post(
        server, "/sessions/clear", {"sessionId": session_id}, {"Authorization": f"Bearer {token}"}
    )
    return status, json.loads(body)


async def test_clear_deletes_a_session_for_its_owner_only(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        check_result(await run_turn(ws, "echo keep me"))
        session_id = str(info["sessionId"])
        # Open on a connection: busy.
        status, body = await _clear(server, session_id)
        assert status == 409 and body["error"]["details"]["reason"] == "session_busy"
    # Someone else: as if it did not exist, and nothing is deleted.
    assert await _clear(server, session_id, user="mallory") == (
        200,
        {"sessionId": session_id, "deleted": False},
    )
    assert await _clear(server, session_id) == (200, {"sessionId": session_id, "deleted": True})
    # Idempotent.
    assert await _clear(server, session_id) == (200, {"sessionId": session_id, "deleted": False})
    payload = await _refused_resume(server, session_id)
    assert payload["details"]["reason"] == "session_not_found"


async def _refused_resume(server: ScriptedServer, session_id: str) -> dict[str, Any]:
    async with open_raw(server, user="alice") as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": {"sessionId": session_id}})
        error = await recv(ws)
        assert error["type"] == "error", error
        payload = error["payload"]
        assert isinstance(payload, dict)
        return payload


async def test_clear_needs_a_token_and_a_session_id(server: ScriptedServer) -> None:
    status, _, _ = await http_post(server, "/sessions/clear", {"sessionId": "x"})
    assert status == 401
    token = server.token("alice")
    status, _, body = await http_post(
        server, "/sessions/clear", {"id": "x"}, {"Authorization": f"Bearer {token}"}
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "VALIDATION_ERROR"


async def test_client_clear_session(server: ScriptedServer) -> None:
    async with server.client("alice") as client:
        reply = await client.prompt("echo remember me")
        session_id = reply.session_id
        assert session_id
        session = client.resume_session(session_id)
        await session.send("recall")
        async for _ in session.stream():
            pass
        # The client closes its own session with that id before it asks.
        assert await client.clear_session(session_id) is True
        assert await client.clear_session(session_id) is False
        with pytest.raises(SessionNotFoundError):
            await client.prompt("recall", session_id=session_id)
    async with server.client("bob") as other, other.create_session() as busy:
        await busy.send("echo hi")
        async for _ in busy.stream():
            pass
        busy_id = busy.session_id
        assert busy_id
        async with server.client("bob") as second:
            with pytest.raises(SessionError) as raised:
                await second.clear_session(busy_id)
            assert raised.value.reason == "session_busy"


async def test_a_history_is_appended_to_a_resumed_session(server: ScriptedServer) -> None:
    async with open_session(server, user="alice") as (ws, info):
        check_result(await run_turn(ws, "echo opening"))
        session_id = info["sessionId"]
    added = [{"role": "user", "content": "later"}, {"role": "assistant", "content": "ok"}]
    async with open_session(server, user="alice", sessionId=session_id, messages=added) as (
        ws,
        info,
    ):
        assert info["messageCount"] == 4
        assert check_result(await run_turn(ws, "recall"))["result"] == "echo opening"
