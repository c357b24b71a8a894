"""The public test kit's pytest fixtures, used as its docstring says."""

from __future__ import annotations

from chucky import Chucky
from chucky.testing import ScriptedServer


async def test_chucky_client_fixture(chucky_client: Chucky) -> None:
    result = await chucky_client.prompt("echo 4")
    assert result.result == "4"


async def test_chucky_server_fixture(chucky_server: ScriptedServer) -> None:
    async with chucky_server.client("alice") as client:
        assert (await client.prompt("recall")).result == "recall"
