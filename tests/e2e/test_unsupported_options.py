"""Issue 11, finding 9: options the server accepts and does not act on are said, not dropped."""

from __future__ import annotations

import json
import warnings

import pytest
from websockets.asyncio.client import connect

from chucky import Chucky
from chucky.options import IGNORED_OPTIONS, SessionOptions
from chucky.testing import ScriptedServer


async def test_the_server_reports_unsupported_and_unknown_init_options(
    server: ScriptedServer,
) -> None:
    payload = {
        "agents": {"reviewer": {"description": "d", "prompt": "p"}},
        "settingSources": ["user", "project"],
        "madeUpOption": 1,
        "systemPrompt": "be brief",
        "maxTurns": 3,
    }
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "init", "payload": payload}))
        info = json.loads(await ws.recv())["payload"]["data"]
        assert info["unsupportedOptions"] == ["agents", "madeUpOption", "settingSources"]
        user = {"type": "user", "message": {"role": "user", "content": "echo hi"}}
        await ws.send(json.dumps(user))
        system = json.loads(await ws.recv())
        assert system["type"] == "system"
        assert system["unsupportedOptions"] == ["agents", "madeUpOption", "settingSources"]


async def test_a_session_without_them_hears_nothing_of_it(server: ScriptedServer) -> None:
    async with connect(f"{server.url}?token={server.token()}") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "init", "payload": {"maxTurns": 2}}))
        info = json.loads(await ws.recv())["payload"]["data"]
        assert "unsupportedOptions" not in info
        user = {"type": "user", "message": {"role": "user", "content": "echo hi"}}
        await ws.send(json.dumps(user))
        assert "unsupportedOptions" not in json.loads(await ws.recv())


def test_every_ignored_option_is_an_option() -> None:
    for name in IGNORED_OPTIONS:
        assert name in SessionOptions.model_fields
        assert SessionOptions.model_validate({name: None}).unsupported() == []


async def test_the_client_warns_at_the_applications_line(server: ScriptedServer) -> None:
    async with Chucky(server.token(), server.url) as client:
        with pytest.warns(UserWarning, match="agents, settingSources") as caught:
            result = await client.prompt(
                "echo hi", agents={"a": {"description": "d"}}, setting_sources=["user"]
            )
        assert result.result == "hi"
        assert caught[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no options the server ignores: no warning
            assert (await client.prompt("echo again")).result == "again"
