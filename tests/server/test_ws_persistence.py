"""Sessions that survive (issue 3, section 5) and token claims that govern (section 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.raw import check_result, open_raw, open_session, recv, send, turn, user_frame

from chucky.testing import scripted_server

SECRET = "hk_live_" + "c" * 32


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_session_resumes_after_a_server_restart(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database_url = (
        f"sqlite+aiosqlite:///{tmp_path}/state.db"
        if engine == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    async with scripted_server(secret=SECRET, database_url=database_url) as server:
        async with open_session(server, user="carol") as (ws, info):
            check_result(await turn(ws, "echo remember me"))
            check_result(await turn(ws, "echo and this"))
        session_id = info["sessionId"]
    async with scripted_server(secret=SECRET, database_url=database_url) as server:
        async with open_session(server, user="carol", sessionId=session_id) as (ws, info):
            assert info["sessionId"] == session_id
            assert info["messageCount"] == 4
            assert info["createdAt"] <= info["lastActivityAt"]
            result = check_result(await turn(ws, "recall"))
            assert result["result"] == "echo remember me"
        # continue: true finds it too (the user's most recent session).
        async with open_session(server, user="carol", **{"continue": True}) as (_, info):
            assert info["sessionId"] == session_id
            assert info["messageCount"] == 6


async def test_resume_fork_and_cut_keep_the_stored_history() -> None:
    async with scripted_server() as server:
        async with open_session(server, user="dan") as (ws, info):
            first = await turn(ws, "echo one")
            check_result(await turn(ws, "echo two"))
        session_id = info["sessionId"]
        cut_at = next(f for f in first if f["type"] == "assistant")["uuid"]
        async with open_session(server, user="dan", sessionId=session_id, forkSession=True) as (
            _,
            fork,
        ):
            assert fork["sessionId"] != session_id
            assert fork["messageCount"] == 4
        async with open_session(
            server, user="dan", sessionId=session_id, resumeSessionAt=cut_at
        ) as (_, cut):
            assert cut["messageCount"] == 2
        async with open_session(server, user="dan", sessionId=session_id) as (_, again):
            assert again["messageCount"] == 2  # the cut was stored


@pytest.mark.parametrize("owner", ["other-user", "other-project"])
async def test_someone_elses_session_is_not_found_like_an_unknown_one(owner: str) -> None:
    async with scripted_server() as server:
        async with open_session(server, user="erin") as (ws, info):
            check_result(await turn(ws, "echo private"))
        answers = []
        for session_id in (info["sessionId"], "00000000-0000-4000-8000-000000000000"):
            if owner == "other-user":
                token = server.token("mallory")
            else:
                await server.server.store.upsert_project("other", [SECRET], 0.0)
                from chucky.tokens import create_budget, create_token

                token = create_token("erin", "other", SECRET, create_budget(1, 1))
            async with open_raw(server, token=token) as ws:
                assert (await recv(ws))["payload"]["action"] == "ready"
                await send(ws, {"type": "init", "payload": {"sessionId": session_id}})
                error = await recv(ws)
                payload = error["payload"]
                answers.append((payload["code"], payload["details"]["reason"]))
        assert answers == [("SESSION_ERROR", "session_not_found")] * 2


async def test_a_session_open_elsewhere_is_busy() -> None:
    async with (
        scripted_server() as server,
        open_session(server, user="fay") as (_, info),
        open_raw(server, user="fay") as ws,
    ):
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": {"sessionId": info["sessionId"]}})
        error = await recv(ws)
        assert error["payload"]["code"] == "SESSION_ERROR"
        assert error["payload"]["details"]["reason"] == "session_busy"


async def test_token_permissions_and_sdk_config_govern_what_is_in_force() -> None:
    tools = {
        "mcpServers": [
            {
                "name": "kit",
                "tools": [
                    {"name": "safe", "description": "ok", "inputSchema": {}},
                    {"name": "rm_rf", "description": "no", "inputSchema": {}},
                ],
            }
        ]
    }
    async with scripted_server() as server:
        token = server.token(
            "gus",
            permissions={"blockedTools": ["rm_rf"], "model": "claude-haiku-4-5", "maxTurns": 1},
            sdk_config={"systemPrompt": "be brief"},
        )
        async with open_raw(server, token=token) as ws:
            assert (await recv(ws))["payload"]["action"] == "ready"
            await send(ws, {"type": "init", "payload": {"model": "claude-opus-4-1", **tools}})
            info = (await recv(ws))["payload"]["data"]
            assert info["tools"] == ["mcp__kit__safe"]
            await send(ws, user_frame("call safe {}"))
            frames = [await recv(ws) for _ in range(3)]
            system = frames[0]
            assert system["type"] == "system" and system["subtype"] == "init"
            assert system["model"] == "claude-haiku-4-5"  # the token's model wins
            assert system["tools"] == ["mcp__kit__safe"]
            # maxTurns 1 from the token: the tool's answer would need a second call.
            tool_call = next(f for f in frames if f["type"] == "tool_call")
            await send(
                ws,
                {
                    "type": "tool_result",
                    "payload": {
                        "callId": tool_call["payload"]["callId"],
                        "result": {"content": [{"type": "text", "text": "done"}]},
                    },
                },
            )
            frames = [await recv(ws)]
            while frames[-1]["type"] not in ("result", "error"):
                frames.append(await recv(ws))
            check_result(frames, subtype="error_max_turns")
