"""Shared pytest fixtures.

Time-based waits in tests are multiples of :data:`support.timing.TICK`, scaled by the
``CHUCKY_TEST_TIME_SCALE`` environment variable so a slow machine can stretch them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from support.official import official_python as _build_official_python

if TYPE_CHECKING:
    from chucky.testing import ScriptedServer

# The public test kit's fixtures (chucky_server, chucky_client), registered the way its
# docstring tells users to; it must not be imported before this line is processed.
pytest_plugins = ["chucky.testing", "support.postgres"]


@pytest.fixture(scope="session")
def official_python() -> Path:
    """The interpreter of a cached venv with the official ``chucky-sdk==0.2.0`` installed."""
    return _build_official_python()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    """A scripted-model server on 127.0.0.1 (free port) for one test."""
    from chucky.testing import scripted_server

    async with scripted_server() as running:
        yield running
