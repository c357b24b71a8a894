"""Shared pytest fixtures.

Time-based waits in tests are multiples of :data:`support.timing.TICK`, scaled by the
``CHUCKY_TEST_TIME_SCALE`` environment variable so a slow machine can stretch them.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import AsyncIterator, Iterator
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


# -- no token or secret in any log record -----------------------------------------------------

_LEAK = re.compile(
    r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{8,}|hk_live_[0-9a-fA-F]{8,}"
)
"""A whole signed JWT, or a project secret past its prefix (redacted ones are masked)."""


class _LeakCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
        if record.exc_info and not record.exc_text:
            text += "".join(traceback.format_exception(*record.exc_info))
        found = _LEAK.search(text)
        if found:
            self.leaks.append(f"{record.name} {record.levelname}: ...{found.group(0)[:24]}...")


@pytest.fixture(autouse=True)
def _no_token_in_logs() -> Iterator[None]:
    """Fail any test whose log records hold a token or a secret: every record a test's loggers
    emit (WARNING and up by default; everything in a test that lowers the level, as the
    security tests do at DEBUG) is searched."""
    catcher = _LeakCatcher()
    root = logging.getLogger()
    root.addHandler(catcher)
    try:
        yield
    finally:
        root.removeHandler(catcher)
    assert not catcher.leaks, f"a token or secret reached a log record: {catcher.leaks[:3]}"


@pytest.fixture(scope="session", autouse=True)
def _batched_decode_verdict() -> None:
    """Find out once, before any test starts a process on the local model, whether batched
    prompt evaluation works here (a child process probes it, chucky caches the verdict): the
    processes the tests start then read it from the cache instead of each warning about it on
    stderr, which the CLI tests read line by line."""
    try:
        from chucky.server.providers.llamacpp import default_model_path
        from chucky.server.providers.llamacpp_probe import batched_decode_works

        path = default_model_path()
    except Exception:  # no local model here: nothing will probe
        return
    batched_decode_works(str(path))
