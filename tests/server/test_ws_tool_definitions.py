"""Tool definitions are checked at init: a tool the model could not be offered is refused then."""

from __future__ import annotations

import pytest
from support.raw import init, open_raw, open_session, recv, send, turn, wait_closed

from chucky.testing import ScriptedServer


def _server_with(tool: dict[str, object]) -> dict[str, object]:
    return {"mcpServers": [{"name": "srv", "version": "1.0.0", "tools": [tool]}]}


@pytest.mark.parametrize(
    ("tool", "says"),
    [
        ({"name": "bad", "inputSchema": {"type": "strin"}}, "not a valid JSON Schema"),
        ({"name": "bad", "inputSchema": {"type": "object", "required": "x"}}, "required"),
        ({"name": "n" * 200, "inputSchema": {}}, "longer than"),
    ],
    ids=["unknown-type", "required-not-a-list", "long-name"],
)
async def test_a_broken_tool_definition_is_refused_at_init(
    server: ScriptedServer, tool: dict[str, object], says: str
) -> None:
    async with open_raw(server) as ws:
        assert (await recv(ws))["payload"]["action"] == "ready"
        await send(ws, {"type": "init", "payload": _server_with(tool)})
        frames = await wait_closed(ws)
        assert ws.close_code == 1008
    (error,) = frames
    assert error["payload"]["code"] == "VALIDATION_ERROR"
    assert error["payload"]["details"]["reason"] == "invalid_options"
    assert says in error["payload"]["message"]
    assert len(error["payload"]["message"]) < 500


async def test_tolerated_schema_quirks_pass(server: ScriptedServer) -> None:
    tool = {
        "name": "ok",
        "inputSchema": {
            "type": "object",
            "properties": {"xs": {"type": "array"}},
            "required": None,
        },
    }
    async with open_session(server, **_server_with(tool)) as (ws, info):
        assert info["tools"] == ["mcp__srv__ok"]
        frames = await turn(ws, "echo fine")
    assert frames[-1]["result"] == "fine"


async def test_servers_this_server_does_not_run_are_not_reported_connected(
    server: ScriptedServer,
) -> None:
    async with open_raw(server) as ws:
        await init(
            ws,
            mcpServers={
                "files": {"command": "mcp-files", "args": []},
                "web": {"type": "http", "url": "http://127.0.0.1:1/mcp"},
            },
        )
        frames = await turn(ws, "echo hi")
    system = frames[0]
    assert {s["name"]: s["status"] for s in system["mcp_servers"]} == {
        "files": "failed",
        "web": "failed",
    }
