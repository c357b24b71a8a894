"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) in a subprocess.

:func:`llama_server` runs it on ``127.0.0.1`` on a free port for the ``with`` block, serving one
GGUF file under one model alias, and yields a :class:`LlamaServer` whose ``base_url``
(``http://127.0.0.1:PORT/v1``) an OpenAI client takes. Use it as a module-scoped fixture so the
model loads once::

    @pytest.fixture(scope="module")
    def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
        with llama_server(model_path, tmp_path_factory.mktemp("llama")) as server:
            yield server

The process writes stdout and stderr to ``llama-server.log`` in the given directory; a start-up
failure (early exit, no answer to ``GET /v1/models`` within :data:`START_TIMEOUT`) raises
:class:`LlamaServerError` with the log's tail. Whatever happens in the block, the process is
terminated, then killed if it lingers, and reaped. Nothing here contacts anything but
``127.0.0.1`` (the readiness probe bypasses any proxy of the environment).

The server runs with ``n_batch = n_ubatch = 1``: batched prompt decoding can crash the prebuilt
``llama-cpp-python`` wheels on some CPUs (see :mod:`chucky.server.providers.llamacpp`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.timing import SCALE, ticks

__all__ = [
    "CHAT_FORMAT",
    "START_TIMEOUT",
    "LlamaServer",
    "LlamaServerError",
    "free_port",
    "llama_server",
    "llama_server_command",
]

START_TIMEOUT = 60.0 * SCALE
"""How long the server may take to load the model and answer ``GET /v1/models``."""

STOP_TIMEOUT = 10.0 * SCALE
"""How long the server may take to exit after SIGTERM before it is killed."""

CHAT_FORMAT = "chatml-function-calling"
"""SmolLM2's template is ChatML; this handler also honours ``tools`` with a forced
``tool_choice`` (a named function: grammar-constrained arguments). Without ``tool_choice`` it
ignores the tools; ``"auto"`` cannot stream a call and ``"required"`` is not supported."""


class LlamaServerError(RuntimeError):
    """The server did not start (the message ends with the tail of its log)."""


@dataclass(frozen=True, slots=True)
class LlamaServer:
    """A running server: where to reach it and what it serves."""

    base_url: str
    """The API root, ``http://127.0.0.1:PORT/v1``."""
    model: str
    """The model id to request (the alias the server was started with)."""
    log_path: Path
    """Its stdout and stderr."""
    command: tuple[str, ...]
    """The command line it was started with."""

    def log_tail(self, size: int = 4000) -> str:
        return _tail(self.log_path, size)


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that was free a moment ago (bind to port 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def llama_server_command(
    model_path: str | os.PathLike[str],
    port: int,
    *,
    alias: str = "smol",
    chat_format: str = CHAT_FORMAT,
    n_ctx: int = 2048,
    n_threads: int = 2,
) -> list[str]:
    """The ``python -m llama_cpp.server`` command line (pure)."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        os.fspath(model_path),
        "--model_alias",
        alias,
        "--chat_format",
        chat_format,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_batch",
        "1",
        "--n_ubatch",
        "1",
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--verbose",
        "False",
    ]


def _tail(path: Path, size: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(no log: {exc})"
    return data[-size:].decode(errors="replace")


# A direct opener: the probe must reach 127.0.0.1 even when HTTP(S)_PROXY is set.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _serves(base_url: str, model: str) -> bool:
    try:
        with _DIRECT.open(f"{base_url}/models", timeout=ticks(20)) as response:
            listing = json.load(response)
    except (OSError, ValueError):  # refused, reset, timed out, not JSON yet
        return False
    data = listing.get("data") if isinstance(listing, dict) else None
    return isinstance(data, list) and any(
        isinstance(item, dict) and item.get("id") == model for item in data
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def llama_server(
    model_path: str | os.PathLike[str],
    directory: Path,
    *,
    alias: str = "smol",
    chat_format: str = CHAT_FORMAT,
    n_ctx: int = 2048,
    n_threads: int = 2,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[LlamaServer]:
    """Run ``python -m llama_cpp.server`` for the ``with`` block (see the module docstring).

    Raises:
        LlamaServerError: it exited or did not answer within ``start_timeout`` seconds.
    """
    port = free_port()
    command = llama_server_command(
        model_path, port, alias=alias, chat_format=chat_format, n_ctx=n_ctx, n_threads=n_threads
    )
    log_path = directory / "llama-server.log"
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", alias, log_path, tuple(command))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + start_timeout
        while not _serves(server.base_url, alias):
            if process.poll() is not None:
                raise LlamaServerError(
                    f"llama_cpp.server exited with {process.returncode} at start-up:\n"
                    f"{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LlamaServerError(
                    f"llama_cpp.server did not answer GET /v1/models within {start_timeout} s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(ticks(4))
        yield server
    finally:
        _stop(process)
