"""Shared plumbing of the benchmarks: subprocess servers, statistics, tables.

Not a test and not part of the library. Everything here runs on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
async def chucky_server(database_url: str | None = None) -> AsyncIterator[Subprocess]:
    """``chucky serve --port 0`` (scripted model) in its own process, its state in
    ``database_url`` (a fresh SQLite file if ``None``).

    Every model name is served by the scripted model and priced as itself (the server's default
    model is a priced Claude model), so the ledger works as in production. Without a routing
    file ``chucky serve`` would route to the embedded local model.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chucky-bench-") as directory:
        routing = Path(directory) / "scripted.toml"
        routing.write_text('[models."*"]\nprovider = "scripted"\n', encoding="utf-8")
        async with child(
            sys.executable,
            "-m",
            "chucky.cli",
            "serve",
            "--port",
            "0",
            "--db",
            database_url or f"sqlite+aiosqlite:///{directory}/bench.db",
            "--project",
            f"{PROJECT_ID}:{SECRET}",
            "--config",
            str(routing),
        ) as server:
            yield server


def raw_server(*args: str) -> contextlib.AbstractAsyncContextManager[Subprocess]:
    """``bench/raw_server.py`` (a minimal websockets server) in its own process."""
    return child(sys.executable, str(BENCH / "raw_server.py"), *args)


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
