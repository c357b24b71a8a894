"""``fallbackModel``: a call the primary provider fails (retryable, before streaming) is made
once more on the fallback (issue 4, section 1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from support.raw import check_result, open_raw, open_session, recv, send, turn

from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.providers.base import ModelRequest, provider_error
from chucky.server.providers.scripted import ScriptedProvider
from chucky.server.routing import ModelRouter, RoutingConfig
from chucky.testing import ScriptedServer

SECRET = "hk_live_" + "f" * 32


class Flaky(ScriptedProvider):
    """Fails every call with ``kind`` before any event."""

    def __init__(self, *, retryable: bool = True) -> None:
        self.retryable = retryable
        self.calls = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        raise provider_error("primary down", kind="overloaded", retryable=self.retryable)
        yield {}  # pragma: no cover - makes this an async generator


def _router(primary: ScriptedProvider) -> ModelRouter:
    import tomllib

    config = RoutingConfig.from_mapping(
        tomllib.loads(
            """
            [models.primary]
            provider = "scripted"
            [models.backup]
            provider = "scripted"
            model = "backup-model"
            """
        )
    )
    # The primary's provider: flaky for "primary" only.
    return ModelRouter.from_config(config, providers={"scripted": primary})


class Split(ScriptedProvider):
    """Fails for the model id ``primary``; the scripted model for any other."""

    def __init__(self, *, retryable: bool = True) -> None:
        self.flaky = Flaky(retryable=retryable)

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        source = self.flaky if request.model == "primary" else ScriptedProvider()
        async for event in source.stream(request):
            yield event


def _server(tmp_path: Path, provider: Split) -> ChuckyServer:
    config = ServerConfig(
        port=0, projects={"p": [SECRET]}, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    return ChuckyServer(config, router=_router(provider))


async def test_a_retryable_failure_moves_the_call_to_the_fallback(tmp_path: Path) -> None:
    provider = Split()
    async with _server(tmp_path, provider) as server:
        running = ScriptedServer(server, "p", SECRET)
        async with open_session(running, model="primary", fallbackModel="backup") as (ws, _):
            frames = await turn(ws, "echo saved")
            result = check_result(frames)
            assert result["result"] == "saved"
            assistant = next(f for f in frames if f["type"] == "assistant")
            assert assistant["message"]["model"] == "backup"  # what actually answered
        assert provider.flaky.calls == 1


async def test_without_fallback_or_when_not_retryable_the_error_is_reported(
    tmp_path: Path,
) -> None:
    for options, provider in (
        ({"model": "primary"}, Split()),
        ({"model": "primary", "fallbackModel": "backup"}, Split(retryable=False)),
    ):
        async with _server(tmp_path, provider) as server:
            running = ScriptedServer(server, "p", SECRET)
            async with open_raw(running) as ws:
                assert (await recv(ws))["payload"]["action"] == "ready"
                await send(ws, {"type": "init", "payload": options})
                await recv(ws)  # session_info
                frames = await turn(ws, "echo never")
                assert frames[-1]["type"] == "error"
                assert frames[-1]["payload"]["code"] == "PROVIDER_ERROR"
