"""A test kit for code that uses chucky: an in-process server with the scripted model.

The scripted model (:mod:`chucky.server.providers.scripted`) replies by following the user's
message as a script (``echo hi``, ``call get_time {}``, ``fail overloaded``, ...), so tests are
fast, offline and deterministic::

    from chucky.testing import scripted_server

    async def test_my_agent() -> None:
        async with scripted_server() as server:
            async with server.client() as client:
                result = await client.prompt("echo 4")
                assert result.result == "4"

With pytest and pytest-asyncio (``asyncio_mode = "auto"`` in the pytest configuration, or
``@pytest.mark.asyncio`` on each test), ``pytest_plugins = ["chucky.testing"]`` in a
``conftest.py`` provides the ``chucky_server`` and ``chucky_client`` fixtures (the README's
"Testing your code against chucky" shows a whole project). Needs the ``server`` extra.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .client import Chucky
from .server.app import ChuckyServer
from .server.config import ServerConfig
from .tokens import create_budget, create_token

__all__ = ["ScriptedServer", "scripted_server"]


class ScriptedServer:
    """A running in-process server and the project it accepts."""

    def __init__(self, server: ChuckyServer, project_id: str, secret: str) -> None:
        self.server = server
        self.project_id = project_id
        self.secret = secret

    @property
    def url(self) -> str:
        return self.server.url

    def token(
        self,
        user_id: str = "test-user",
        *,
        ai_dollars: float = 10.0,
        compute_hours: float = 10.0,
        window: str = "day",
        expires_in: int = 3600,
        window_start: str | None = None,
        permissions: Mapping[str, Any] | None = None,
        sdk_config: Mapping[str, Any] | None = None,
    ) -> str:
        """A valid token for this server's project (``expires_in`` may be negative)."""
        budget = create_budget(ai_dollars, compute_hours, window, window_start)
        return create_token(
            user_id,
            self.project_id,
            self.secret,
            budget,
            expires_in=expires_in,
            permissions=permissions,
            sdk_config=sdk_config,
        )

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP routes (``http://127.0.0.1:PORT``)."""
        return self.server.http_url

    def client(self, user_id: str = "test-user", **options: Any) -> Chucky:
        """A :class:`Chucky` client for this server (keyword options as for ``Chucky``)."""
        return Chucky(self.token(user_id), self.url, **options)


@asynccontextmanager
async def scripted_server(
    *, project_id: str = "test-project", secret: str | None = None, **config: Any
) -> AsyncIterator[ScriptedServer]:
    """Run a scripted-model server on ``127.0.0.1`` with a free port for the ``with`` block.

    Its state lives in a fresh SQLite file in a temporary directory, removed afterwards, unless
    ``database_url`` is given (not ``None``).

    Args:
        project_id: The project whose tokens are accepted.
        secret: Its secret, ``hk_live_`` + 32 hex digits (random by default). It is held by
            the server, not written to its database (a configured project).
        **config: :class:`~chucky.server.config.ServerConfig` fields (``tool_timeout`` ...).
    """
    secret = secret or f"hk_live_{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="chucky-test-") as directory:
        if config.get("database_url") is None:
            config["database_url"] = f"sqlite+aiosqlite:///{directory}/chucky.db"
        settings = ServerConfig(host="127.0.0.1", port=0, projects={project_id: [secret]}, **config)
        async with ChuckyServer(settings) as server:
            yield ScriptedServer(server, project_id, secret)


try:  # pytest fixtures, when pytest-asyncio is available
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def chucky_server() -> AsyncIterator[ScriptedServer]:
        """A scripted-model server for one test."""
        async with scripted_server() as server:
            yield server

    @pytest_asyncio.fixture
    async def chucky_client(chucky_server: ScriptedServer) -> AsyncIterator[Chucky]:
        """A client of ``chucky_server``; closed after the test."""
        async with chucky_server.client() as client:
            yield client

except ImportError:  # pragma: no cover
    pass
