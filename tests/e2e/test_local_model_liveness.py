"""A slow local-model call does not delay another session's ping or turn (issue 4, section 8).

The embedded model generates in a worker thread: while one session's long generation runs, the
server still answers another session's JSON ping, and that session's turn is served after it
(FIFO), with no socket timing out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.raw import open_session, recv, send, user_frame

from chucky.errors import ProviderError
from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.routing import ModelRouter
from chucky.testing import ScriptedServer

_IN_CI = os.environ.get("CI", "").lower() == "true"
try:
    from chucky.server.providers.llamacpp import LlamaCppProvider, default_model_path

    default_model_path()
except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
    if _IN_CI:
        raise
    pytest.skip(f"the local model is not available: {exc}", allow_module_level=True)

SECRET = "hk_live_" + "9" * 32


async def test_a_long_generation_does_not_stall_another_sessions_ping(tmp_path: Path) -> None:
    config = ServerConfig(
        port=0,
        projects={"p": [SECRET]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        max_tokens=160,
    )
    router = ModelRouter(LlamaCppProvider(), price_model="local")
    async with ChuckyServer(config, router=router) as chucky:
        server = ScriptedServer(chucky, "p", SECRET)
        async with (
            open_session(server, user="a", includePartialMessages=True) as (busy, _),
            open_session(server, user="b") as (idle, _),
        ):
            await send(busy, user_frame("Write a long story about the sea."))
            # The generation is under way once its first delta arrives.
            while (await recv(busy, timeout=60))["type"] != "stream_event":
                pass
            await send(idle, {"type": "ping", "payload": {"timestamp": 1}})
            pong = await recv(idle, timeout=60)
            assert pong == {"type": "pong", "payload": {"timestamp": 1}}
            # The other session's turn queues behind the running generation and is served.
            await send(idle, user_frame("Say hi."))
            busy_frames = [await recv(busy, timeout=120)]
            while busy_frames[-1]["type"] != "result":
                busy_frames.append(await recv(busy, timeout=120))
            idle_frames = [await recv(idle, timeout=120)]
            while idle_frames[-1]["type"] != "result":
                idle_frames.append(await recv(idle, timeout=120))
            assert busy_frames[-1]["subtype"] == "success"
            assert idle_frames[-1]["subtype"] == "success"
            assert idle_frames[-1]["usage"]["output_tokens"] > 0
