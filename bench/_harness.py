"""Shared plumbing of the benchmarks: subprocess servers, statistics, tables.

Not a test and not part of the library. Everything here runs on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

PROJECT_ID = "bench"
SECRET = "hk_live_0123456789abcdef0123456789abcdef"

# Interpreter settings of this process that must not leak into the official client's venv.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")


def bench_token(user_id: str = "bench-user") -> str:
    """A token for the bench project with a budget that many thousands of turns cannot exhaust."""
    from chucky import create_budget, create_token

    budget = create_budget(ai_dollars=1_000_000, compute_hours=10_000, window="lifetime")
    return create_token(user_id, PROJECT_ID, SECRET, budget, expires_in=24 * 3600)


def official_python() -> Path:
    """The interpreter of the cached venv holding the official ``chucky-sdk==0.2.0``."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from support.official import official_python as build
    finally:
        sys.path.pop(0)
    return build()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- subprocesses ----------------------------------------------------------------------------


class Subprocess:
    """A long-running child process whose first stdout line is announced."""

    def __init__(self, proc: asyncio.subprocess.Process, first_line: str) -> None:
        self.proc = proc
        self.first_line = first_line

    @property
    def url(self) -> str:
        return self.first_line.split()[-1]

    async def readline(self, wait_s: float = 60.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(wait_s):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process {self.proc.pid} exited ({self.proc.returncode})")
        return line.decode().strip()


@contextlib.asynccontextmanager
async def child(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[Subprocess]:
    """Start ``argv``, wait for its first stdout line, terminate it on exit."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        limit=64 * 1024 * 1024,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            first = (await proc.stdout.readline()).decode().strip()
        if not first:
            raise RuntimeError(f"{argv[:3]} exited before announcing itself")
        yield Subprocess(proc, first)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def chucky_server(
    database_url: str | None = None,
    *,
    scripted: bool = True,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[Subprocess]:
    """``chucky serve --port 0`` in its own process, its state in ``database_url`` (a fresh
    SQLite file if ``None``).

    With ``scripted`` (the default) every model name is served by the scripted model and priced
    as itself (the server's default model is a priced Claude model), so the ledger works as in
    production. Without it, no routing file is passed: the routing users get (the embedded
    local model; Claude names to Anthropic when ``ANTHROPIC_API_KEY`` is set). ``env`` adds
    variables to the server's environment; ``extra_args`` are appended to its command line.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chucky-bench-") as directory:
        argv = [
            sys.executable,
            "-m",
            "chucky.cli",
            "serve",
            "--port",
            "0",
            "--db",
            database_url or f"sqlite+aiosqlite:///{directory}/bench.db",
        ]
        if scripted:
            routing = Path(directory) / "scripted.toml"
            routing.write_text('[models."*"]\nprovider = "scripted"\n', encoding="utf-8")
            argv += ["--config", str(routing)]
        argv += extra_args
        # The project through the environment: --project would put its secret in ps.
        server_env = {**os.environ, **(env or {}), "CHUCKY_PROJECTS": f"{PROJECT_ID}:{SECRET}"}
        async with child(*argv, env=server_env) as server:
            yield server


def raw_server(*args: str) -> contextlib.AbstractAsyncContextManager[Subprocess]:
    """``bench/raw_server.py`` (a minimal websockets server) in its own process."""
    return child(sys.executable, str(BENCH / "raw_server.py"), *args)


def floor_server() -> contextlib.AbstractAsyncContextManager[Subprocess]:
    """``bench/floor_server.py`` (a durable turn's work, no chucky code) in its own process."""
    return child(sys.executable, str(BENCH / "floor_server.py"))


async def run_official(spec: dict[str, Any], wait_s: float = 600.0) -> dict[str, Any]:
    """Run ``bench/official_client.py`` under the official client's interpreter.

    The child runs isolated (``-I``): the official ``chucky`` is imported, never ours.
    """
    import json

    proc = await asyncio.create_subprocess_exec(
        str(official_python()),
        "-I",
        "-W",
        "ignore::DeprecationWarning",
        str(BENCH / "official_client.py"),
        json.dumps(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=str(BENCH),
    )
    async with asyncio.timeout(wait_s):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"official client helper failed ({proc.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- raw protocol client (websockets frames, no chucky client code) -----------------------

BENCH_MODEL = "claude-sonnet-5-5"
"""The model sessions name: priced (the scripted model serves it, priced as itself)."""


def user_frame(text: str) -> str:
    """A ``user`` turn frame (the form of the TypeScript SDK) carrying ``text``."""
    return json.dumps(
        {
            "type": "user",
            "session_id": "",
            "message": {"role": "user", "content": text},
            "parent_tool_use_id": None,
        },
        separators=(",", ":"),
    )


async def open_raw_session(url: str, user: str, model: str = BENCH_MODEL) -> ClientConnection:
    """Connect, send ``init`` and read until its ``session_info`` (``ready`` comes first).

    Raises:
        RuntimeError: the server answered the ``init`` with an ``error`` frame.
    """
    ws = await connect(
        f"{url}?token={bench_token(user)}",
        compression=None,
        ping_interval=None,  # the server pings; answering is enough
        max_size=16 * 1024 * 1024,
        open_timeout=120,
    )
    try:
        await ws.send(json.dumps({"type": "init", "payload": {"model": model}}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "error":
                raise RuntimeError(f"session refused: {frame['payload']}")
            if frame["type"] == "control" and frame["payload"]["action"] == "session_info":
                return ws
    except BaseException:
        await ws.close()
        raise


async def raw_turn(ws: ClientConnection, frame: str) -> dict[str, Any]:
    """Send a turn; the frame that ended it (its ``result``, or an ``error``)."""
    await ws.send(frame)
    while True:
        msg: dict[str, Any] = json.loads(await ws.recv())
        if msg["type"] in ("result", "error"):
            return msg


def turn_failure(msg: dict[str, Any]) -> str | None:
    """Why a turn's last frame is not a success (``None`` if it is)."""
    if msg["type"] == "error":
        payload = msg.get("payload", {})
        return f"error frame {payload.get('code')}/{payload.get('details', {}).get('reason')}"
    if msg.get("subtype") != "success" or msg.get("is_error"):
        return f"result {msg.get('subtype')} {msg.get('errors', '')}"
    return None


async def open_raw_sessions(
    url: str, users: list[str], concurrency: int
) -> tuple[list[ClientConnection], Counter[str]]:
    """Open a session per user, ``concurrency`` handshakes at a time; the sockets and the
    reasons of the ones that failed."""
    gate = asyncio.Semaphore(concurrency)
    failed: Counter[str] = Counter()

    async def one(user: str) -> ClientConnection | None:
        async with gate:
            try:
                return await open_raw_session(url, user)
            except Exception as exc:  # counted and reported
                failed[f"open: {type(exc).__name__}: {str(exc)[:60]}"] += 1
                return None

    opened = await asyncio.gather(*(one(u) for u in users))
    return [ws for ws in opened if ws is not None], failed


async def close_raw_sessions(sockets: list[ClientConnection], concurrency: int = 500) -> None:
    """Close the sockets, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets), return_exceptions=True)


# -- process accounting (Linux /proc) -------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, all its threads (exited ones too).

    From ``utime`` + ``stime`` of ``/proc/<pid>/stat``: clock ticks (10 ms at the usual 100 Hz),
    so measure windows of a second or more of CPU for a precise figure.
    """
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); the new
    soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- databases -------------------------------------------------------------------------------

DB_CHOICES = ("sqlite", "sqlite-ram", "postgresql")


@dataclass
class Database:
    """One kind of store; :meth:`fresh_url` gives an empty database of that kind."""

    key: str
    label: str
    directory: str = ""
    cluster_url: str = ""
    _count: int = 0

    async def fresh_url(self) -> str:
        self._count += 1
        if not self.cluster_url:
            return f"sqlite+aiosqlite:///{self.directory}/bench-{self._count}.db"
        import asyncpg

        sys.path.insert(0, str(ROOT / "tests"))
        try:
            from support.postgres import with_database
        finally:
            sys.path.pop(0)
        name = f"bench_{self._count}"
        admin = await asyncpg.connect(self.cluster_url.replace("+asyncpg", ""))
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        return str(with_database(self.cluster_url, name))


@contextlib.asynccontextmanager
async def databases(choice: str) -> AsyncIterator[list[Database]]:
    """The stores ``choice`` names (``sqlite``, ``sqlite-ram``, ``postgresql`` or ``all``).

    ``sqlite``: a file in the temporary directory; ``sqlite-ram``: a file on the ``/dev/shm``
    RAM disk (no fsync cost); ``postgresql``: a throwaway cluster (``tests/support/postgres.py``,
    durability off), left out with a printed note when it cannot be started.
    """
    import tempfile

    keys = DB_CHOICES if choice == "all" else (choice,)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: ASYNC240 - before any I/O
    cluster = None
    with (
        tempfile.TemporaryDirectory(prefix="chucky-bench-") as disk,
        tempfile.TemporaryDirectory(prefix="chucky-bench-", dir=shm) as ram,
    ):
        found: list[Database] = []
        try:
            for key in keys:
                if key == "sqlite":
                    found.append(Database(key, "sqlite (file)", directory=disk))
                elif key == "sqlite-ram":
                    found.append(Database(key, "sqlite (RAM disk)", directory=ram))
                elif key == "postgresql":
                    sys.path.insert(0, str(ROOT / "tests"))
                    try:
                        from support.postgres import PostgresUnavailable, start_cluster
                    finally:
                        sys.path.pop(0)
                    try:
                        cluster = await asyncio.to_thread(start_cluster)
                    except PostgresUnavailable as exc:
                        print(f"(PostgreSQL skipped: {exc})", flush=True)
                        continue
                    found.append(Database(key, "postgresql (fsync off)", cluster_url=cluster.url))
                else:
                    raise ValueError(f"unknown database {key!r}")
            yield found
        finally:
            if cluster is not None:
                cluster.stop()


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Samples:
    """Measurements of one row, accumulated over the rounds of a run."""

    label: str
    unit: str = "us"
    values: list[float] = field(default_factory=list)

    def add_ns(self, values_ns: Sequence[int | float]) -> None:
        self.values.extend(v / 1000 for v in values_ns)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def p90(self) -> float:
        return percentile(self.values, 90)

    @property
    def p10(self) -> float:
        return percentile(self.values, 10)


def quiet_gc() -> None:
    """Collect now, so a collection of the previous batch's garbage lands outside timing."""
    gc.collect()


# -- tables ----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "n/a"
    return f"{value / base:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (aligned, so it also reads well in a terminal)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join([line, sep, *body])


def git_state() -> str:
    """The commit benchmarked, and whether the library had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "chucky"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if dirty:
        return f"{head} + uncommitted changes to {len(dirty)} file(s) under chucky/"
    return head


def machine() -> str:
    """One line describing the machine, the interpreter and the libraries."""
    import pydantic
    import websockets

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()} "
        f"({platform.python_implementation()}); websockets {websockets.__version__}; "
        f"pydantic {pydantic.__version__}; {platform.system()} {platform.release()}"
    )
