"""Every benchmark script still runs: each one's ``--quick`` smoke mode, as a subprocess.

``python bench/<script> --quick`` from the repository root must exit with 0 and print a Markdown
table. No timing is asserted: a smoke run's figures mean little. ``flame_summary.py`` reads a
``py-spy`` profile, so it gets a small synthetic one.

Like the rest of the suite: ``bench_client.py`` drives the official client (the cached venv of
``tests/support/official.py``, marked ``conformance``); ``bench_local_model.py`` needs the
embedded model (skipped without it, except under ``CI=true``); the PostgreSQL run needs the
PostgreSQL binaries (the same rule).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.timing import ticks

from chucky.errors import ProviderError

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = ticks(4800)  # 240 s per script, scaled by CHUCKY_TEST_TIME_SCALE
_IN_CI = os.environ.get("CI", "").lower() == "true"


def run_bench(*args: str) -> str:
    """Run ``python bench/ARGS`` from the repository root; its stdout (it must succeed)."""
    try:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} ran for more than {TIMEOUT:.0f} s: {exc.stderr!r}")
    assert done.returncode == 0, (
        f"{' '.join(args)} exited with {done.returncode}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    return done.stdout


def assert_table(output: str) -> None:
    lines = output.splitlines()
    assert any(line.startswith("|") for line in lines), f"no Markdown table in:\n{output[-3000:]}"


@pytest.mark.parametrize(
    "script",
    [
        "bench_server.py",
        "bench_sql.py",
        "bench_state.py",
        "history_growth.py",
        "profile_client.py",
        "bench_reconnect.py",
    ],
)
def test_quick_mode_runs(script: str) -> None:
    assert_table(run_bench(f"bench/{script}", "--quick"))


def test_bench_server_on_postgresql() -> None:
    output = run_bench(
        "bench/bench_server.py", "--quick", "--db", "postgresql", "--sections", "latency,cpu"
    )
    if "(PostgreSQL skipped:" in output:
        note = next(line for line in output.splitlines() if "PostgreSQL skipped" in line)
        if _IN_CI:
            pytest.fail(note)
        pytest.skip(note)
    assert "postgresql" in output
    assert_table(output)


@pytest.mark.conformance
def test_bench_client_quick_mode(official_python: Path) -> None:
    # The fixture builds (or finds) the official client's venv the bench uses too.
    assert official_python.exists()
    assert_table(run_bench("bench/bench_client.py", "--quick"))


def test_bench_local_model_quick_mode() -> None:
    try:
        from chucky.server.providers.llamacpp import default_model_path

        default_model_path()
    except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
        if _IN_CI:
            raise
        pytest.skip(f"the local model is not available: {exc}")
    assert_table(run_bench("bench/bench_local_model.py", "--quick"))


def test_flame_summary_reads_a_py_spy_raw_profile(tmp_path: Path) -> None:
    # py-spy's `-f raw` format: one line per distinct stack, frames joined by ';', then a count.
    profile = tmp_path / "profile.raw"
    profile.write_text(
        "main (app.py:1);_read (chucky/client/connection.py:10);loads (json.py:3) 6\n"
        "main (app.py:1);_read (chucky/client/connection.py:12) 2\n"
        "main (app.py:1);setup (app.py:5) 2\n",
        encoding="utf-8",
    )
    output = run_bench("bench/flame_summary.py", str(profile), "--within", "_read")
    assert_table(output)
    assert "8 samples within '_read'" in output
    rows = [line for line in output.splitlines() if line.startswith("| 75.0")]
    assert rows and "loads (json.py)" in rows[0]
