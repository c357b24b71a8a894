"""The documented examples run as written, against ``chucky serve`` started as users start it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.serve import serve_process, sqlite_url

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_SECRET = "hk_live_0123456789abcdef0123456789abcdef"
DOC_URL = "ws://127.0.0.1:8765/ws"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chucky serve --port 0`` in a subprocess; yields the URL from its first line."""
    data_dir = tmp_path_factory.mktemp("chucky-data")
    with serve_process(
        *("--db", sqlite_url(data_dir / "chucky.db")),
        *("--project", f"proj:{QUICKSTART_SECRET}"),
        *("--project", "proj:hk_live_..."),
        data_dir=data_dir,
    ) as served:
        yield served.url


def _run(code: str, url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code.replace(DOC_URL, url)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CHUCKY_URL": url},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_example(serve: str) -> None:
    out = _run((ROOT / "examples" / "quickstart.py").read_text(), serve)
    assert "echo: What is 2 + 2?" in out
    assert "[Using tool: get_time]" in out
    assert "tool get_time returned: 12:00" in out
    assert "Hello, I am Alice" in out


def test_issue_sdk_tour_example(serve: str) -> None:
    out = _run((ROOT / "examples" / "sdk_tour.py").read_text(), serve)
    lines = out.splitlines()
    assert lines[0].startswith("echo: What is 2 + 2? ")
    assert lines[1] == "echo: What is 2 + 2? success"
    assert "echo: Write a poem about coding" in out
    assert out.rstrip().endswith("echo: What is my name?")


def test_readme_quickstart_block(serve: str) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    quickstart = next(b for b in blocks if "asyncio.run(main())" in b)
    out = _run(quickstart, serve)
    assert "echo: What is 2 + 2?" in out
    assert "[Using tool: get_time]" in out
    assert out.rstrip().endswith("Hello, I am Alice")
