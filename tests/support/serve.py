"""``chucky serve`` and the other ``chucky`` commands in subprocesses, as users run them.

:func:`start_serve` runs ``python -m chucky.cli serve --port 0 ...`` (with the scripted model
unless told otherwise) and reads the URL from its first line (``chucky serve listening on
ws://HOST:PORT/ws``) and the database from its second.
:class:`ServeProcesses` starts any number of them and kills every one still running when it
exits, whatever the test did: use it as a fixture::

    @pytest.fixture
    def serve(tmp_path: Path) -> Iterator[ServeProcesses]:
        with ServeProcesses(tmp_path) as processes:
            yield processes

Each process gets ``CHUCKY_DATA_DIR`` set to the given directory (and none of the ``CHUCKY_DB``,
``CHUCKY_PROJECTS``, ``CHUCKY_SECRET`` variables of the caller), so nothing touches the user's
data directory. Every wait is bounded.

The async helpers at the end drive a served process over its URL: :func:`usage`
(``GET /usage``), :func:`until_system_init`, :func:`resumed` (``init`` with ``sessionId``,
retried while the session is ``session_busy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from websockets.asyncio.client import ClientConnection

from chucky.tokens import create_budget, create_token
from support.raw import Frame, http_get_url, open_url, recv, send
from support.timing import ticks

__all__ = [
    "PROCESS_TIMEOUT",
    "ServeProcess",
    "ServeProcesses",
    "chucky_env",
    "resumed",
    "run_chucky",
    "scripted_routing",
    "serve_process",
    "sqlite_url",
    "start_serve",
    "token_for",
    "until_system_init",
    "usage",
]

PROCESS_TIMEOUT = 30.0
"""How long a ``chucky`` process may take to start, to answer or to exit (a loaded machine)."""

_LISTENING = re.compile(r"chucky serve listening on (ws://127\.0\.0\.1:\d+/ws)")
_DATABASE = re.compile(r"chucky serve database (\S+)")
_ISOLATED = (
    "CHUCKY_DB",
    "CHUCKY_PROJECTS",
    "CHUCKY_SECRET",
    "CHUCKY_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
)


def chucky_env(data_dir: Path | str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``chucky`` subprocess: ``CHUCKY_DATA_DIR=data_dir``, nothing of the
    caller's chucky configuration (nor its Anthropic key or URL)."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATED}
    env["CHUCKY_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


def sqlite_url(path: Path) -> str:
    """The ``--db`` URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def run_chucky(
    *args: str, data_dir: Path | str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m chucky.cli ARGS`` to its end; ``check``: it must exit with 0."""
    result = subprocess.run(
        [sys.executable, "-m", "chucky.cli", *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=chucky_env(data_dir),
        check=False,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


class ServeProcess:
    """A running ``chucky serve``: its URL, its database, and ways to stop it."""

    def __init__(self, process: subprocess.Popen[str], stderr: IO[bytes]) -> None:
        self.process = process
        self._stderr = stderr
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(process.stdout,), name="chucky-serve-stdout", daemon=True
        )
        self._reader.start()
        self.url = ""
        self.database = ""

    def _read(self, stdout: IO[str]) -> None:
        # Drains stdout to its end, so the child never blocks on a full pipe.
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float = PROCESS_TIMEOUT) -> str:
        """The next line the process prints after its two announcement lines."""
        return self._line(timeout)

    def _line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"chucky serve printed nothing in time\n{self.stderr()}") from None
        if line is None:
            raise AssertionError(f"chucky serve exited early\n{self.stderr()}")
        return line

    def _announce(self, timeout: float) -> None:
        first = self._line(timeout)
        match = _LISTENING.fullmatch(first.rstrip("\n"))
        assert match, f"unexpected first line {first!r}\n{self.stderr()}"
        self.url = match.group(1)
        second = self._line(timeout)
        match = _DATABASE.fullmatch(second.rstrip("\n"))
        assert match, f"unexpected second line {second!r}\n{self.stderr()}"
        self.database = match.group(1)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the HTTP routes)."""
        return self.url.removesuffix("/ws").replace("ws://", "http://", 1)

    def stderr(self) -> str:
        """What the process wrote to stderr so far (for failure messages)."""
        # pread: the child shares the file offset, which must not move.
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - 4000)
        return os.pread(fd, size - start, start).decode(errors="replace")

    def send_signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> int:
        """The exit code (the process must exit within ``timeout``)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"chucky serve did not exit within {timeout} s\n{self.stderr()}"
            ) from None

    def kill(self) -> int:
        """``kill -9`` (SIGKILL) and reap it; returns the exit code."""
        self.process.kill()
        return self.process.wait(PROCESS_TIMEOUT)

    def stop(self) -> None:
        """Kill it if it still runs, reap it, and close its pipes (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(PROCESS_TIMEOUT)
        self._reader.join(PROCESS_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


SCRIPTED_ROUTING = """\
# Every model name is served by the scripted model (and reported under its own name).
[models."*"]
provider = "scripted"
"""


def scripted_routing(data_dir: Path | str) -> Path:
    """A ``--config`` file routing every model to the scripted provider, in ``data_dir``."""
    path = Path(data_dir) / "scripted-routing.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCRIPTED_ROUTING, encoding="utf-8")
    return path


def start_serve(
    *args: str,
    data_dir: Path | str,
    timeout: float = PROCESS_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> ServeProcess:
    """Start ``chucky serve --port 0 ARGS`` and wait for its two announcement lines.

    Without ``--config`` in ``ARGS`` the process serves the scripted model
    (:func:`scripted_routing`); pass ``--config default`` for the routing users get without
    one (the local model, Claude with ``ANTHROPIC_API_KEY``). ``env`` adds variables.
    The caller must :meth:`ServeProcess.stop` it (or use :class:`ServeProcesses`).
    """
    if "--config" not in args:
        args = (*args, "--config", str(scripted_routing(data_dir)))
    elif args[args.index("--config") + 1] == "default":
        at = args.index("--config")
        args = args[:at] + args[at + 2 :]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by ServeProcess.stop
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "chucky.cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env=chucky_env(data_dir, env),
        )
    except BaseException:
        stderr.close()
        raise
    served = ServeProcess(process, stderr)
    try:
        served._announce(timeout)
    except BaseException:
        served.stop()
        raise
    return served


@contextlib.contextmanager
def serve_process(
    *args: str, data_dir: Path | str, env: Mapping[str, str] | None = None
) -> Iterator[ServeProcess]:
    """One ``chucky serve`` for the ``with`` block; killed at its end if still running."""
    served = start_serve(*args, data_dir=data_dir, env=env)
    try:
        yield served
    finally:
        served.stop()


class ServeProcesses:
    """Starts ``chucky serve`` processes; on exit, kills and reaps every one of them."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self._started: list[ServeProcess] = []

    def start(self, *args: str) -> ServeProcess:
        """``chucky serve --port 0 ARGS`` (blocks until it listens: from async code, call it
        through ``asyncio.to_thread``)."""
        served = start_serve(*args, data_dir=self.data_dir)
        self._started.append(served)
        return served

    async def start_with(self, project: str, secret: str, *args: str) -> ServeProcess:
        """From async code: ``chucky serve`` on ``data_dir/chucky.db`` (shared by every process
        started this way), accepting ``project`` with ``secret``, plus ``ARGS``."""
        database = sqlite_url(self.data_dir / "chucky.db")
        return await asyncio.to_thread(
            self.start, "--db", database, "--project", f"{project}:{secret}", *args
        )

    def close(self) -> None:
        for served in reversed(self._started):
            served.stop()
        self._started.clear()

    def __enter__(self) -> ServeProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- clients of a served process -----------------------------------------------------------------


def token_for(
    user: str,
    project: str,
    secret: str,
    *,
    ai_dollars: float = 1.0,
    compute_hours: float = 1.0,
    window: str = "day",
) -> str:
    """A token of ``user`` in ``project``, signed with ``secret``."""
    budget = create_budget(ai_dollars, compute_hours, window)
    return create_token(user, project, secret, budget)


async def usage(url: str, token: str) -> dict[str, Any]:
    """``GET /usage`` of the server at ``url`` with ``Authorization: Bearer token``."""
    status, _, body = await http_get_url(url, "/usage", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    report = json.loads(body)
    assert isinstance(report, dict)
    return report


async def until_system_init(ws: ClientConnection, timeout: float = ticks(200)) -> Frame:
    """Skip frames up to the turn's ``system`` ``init`` (the turn is running) and return it."""
    while True:
        frame = await recv(ws, timeout)
        if frame.get("type") == "system" and frame.get("subtype") == "init":
            return frame
        assert frame.get("type") not in ("result", "error"), frame


def _busy(frame: Frame) -> bool:
    payload = frame.get("payload") or {}
    reason = (payload.get("details") or {}).get("reason")
    return (
        frame.get("type") == "error"
        and payload.get("code") == "SESSION_ERROR"
        and reason == "session_busy"
    )


@contextlib.asynccontextmanager
async def resumed(
    url: str, token: str, session_id: str, *, within: float = ticks(200)
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A connection with ``session_id`` resumed: ``(ws, session_info data)``.

    While the server answers ``session_busy`` (a lease still held: by a dead node until it
    expires, or by a socket that is closing), connects again, for up to ``within`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + within
    answers: list[Frame] = []
    while True:
        async with open_url(url, token) as ws:
            ready = await recv(ws)
            assert ready == {"type": "control", "payload": {"action": "ready"}}, ready
            await send(ws, {"type": "init", "payload": {"sessionId": session_id}})
            # The server itself retries a busy lease for a while before it answers.
            frame = await recv(ws, ticks(200))
            if not _busy(frame):
                assert frame.get("type") == "control", frame
                assert frame["payload"]["action"] == "session_info", frame
                yield ws, frame["payload"]["data"]
                return
            answers.append(frame)
        assert asyncio.get_running_loop().time() < deadline, f"still busy: {answers[-1]}"
        await asyncio.sleep(ticks(2))
