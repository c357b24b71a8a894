"""Inference parameters as session options (issue 4, section 1): init keys and client keywords."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from chucky import Chucky
from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.providers.base import ModelRequest
from chucky.server.providers.scripted import ScriptedProvider
from chucky.server.routing import ModelRouter
from chucky.tokens import create_budget, create_token

SECRET = "hk_live_" + "e" * 32


class Recording(ScriptedProvider):
    """The scripted model, remembering every request."""

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(request)
        async for event in super().stream(request):
            yield event


async def test_client_keywords_reach_the_provider(tmp_path: Path) -> None:
    provider = Recording()
    config = ServerConfig(
        port=0,
        projects={"p": [SECRET]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        max_tokens=1000,
    )
    token = create_token("u", "p", SECRET, create_budget(1, 1))
    async with (
        ChuckyServer(config, router=ModelRouter(provider, price_model="scripted")) as server,
        Chucky(token, server.url) as client,
    ):
        result = await client.prompt(
            "stream 100", temperature=0.25, top_p=0.5, top_k=7, stop=["END"], seed=42, max_tokens=5
        )
        assert result.stop_reason == "max_tokens"
        assert result.usage.output_tokens == 5
        request = provider.requests[-1]
        assert request.max_tokens == 5
        assert dict(request.params) == {
            "temperature": 0.25,
            "top_p": 0.5,
            "top_k": 7,
            "stop": ["END"],
            "seed": 42,
        }
        await client.prompt("echo hi", frequency_penalty=0.5, presence_penalty=-0.25)
        assert dict(provider.requests[-1].params) == {
            "frequency_penalty": 0.5,
            "presence_penalty": -0.25,
        }
        # The server's max_tokens is a cap: a client cannot raise it.
        await client.prompt("echo hi", max_tokens=100_000)
        assert provider.requests[-1].max_tokens == 1000
        # No parameter given: none sent.
        await client.prompt("echo hi")
        assert dict(provider.requests[-1].params) == {}


async def test_a_forced_tool_choice_binds_the_first_call_of_each_turn(tmp_path: Path) -> None:
    from chucky import text_result, tool

    @tool("get_time", "The time")
    async def get_time() -> dict[str, Any]:
        return text_result("12:00")

    provider = Recording()
    config = ServerConfig(
        port=0, projects={"p": [SECRET]}, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    token = create_token("u", "p", SECRET, create_budget(1, 1))
    async with (
        ChuckyServer(config, router=ModelRouter(provider, price_model="scripted")) as server,
        Chucky(token, server.url, tools=[get_time], tool_choice="get_time") as client,
    ):
        result = await client.prompt("call get_time")
        assert result.subtype == "success" and result.num_turns == 2
        first, second = provider.requests[-2:]
        assert first.params["tool_choice"] == {"type": "tool", "name": "get_time"}
        # After the tool's result the model answers freely (forced, it could never stop).
        assert "tool_choice" not in second.params
        # The next turn is forced again; "none" and "auto" bind every call.
        await client.prompt("call get_time")
        assert provider.requests[-2].params["tool_choice"]["type"] == "tool"
        await client.prompt("call get_time", tool_choice="none")
        assert [r.params["tool_choice"] for r in provider.requests[-2:]] == [{"type": "none"}] * 2
        # A list: each call's choice in order, the last one for the calls after it.
        await client.prompt("call get_time", tool_choice=["any", "none"])
        assert [r.params["tool_choice"] for r in provider.requests[-2:]] == [
            {"type": "any"},
            {"type": "none"},
        ]
