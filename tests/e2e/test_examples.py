"""The documented examples run as written, against ``chucky serve`` started as users start it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.anthropic_api import MessagesAPI, sse_text, sse_tool_use
from support.serve import ServeProcess, serve_process, sqlite_url

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_SECRET = "hk_live_0123456789abcdef0123456789abcdef"
DOC_URL = "ws://127.0.0.1:8765/ws"


def _serve(
    data_dir: Path, config: str, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[ServeProcess]:
    return serve_process(
        *("--db", sqlite_url(data_dir / "chucky.db")),
        *("--project", f"proj:{QUICKSTART_SECRET}"),
        *("--config", config),
        data_dir=data_dir,
        env=env,
    )


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chucky serve --config examples/scripted.toml`` in a subprocess; yields its URL."""
    with _serve(tmp_path_factory.mktemp("chucky-data"), str(ROOT / "examples/scripted.toml")) as s:
        yield s.url


@pytest.fixture(scope="module")
def serve_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chucky serve`` as users start it, without a key: the embedded local model."""
    with _serve(tmp_path_factory.mktemp("chucky-data"), "default") as served:
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


def test_readme_quickstart_block(serve_local: str) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    quickstart = next(b for b in blocks if "asyncio.run(main())" in b)
    out = _run(quickstart, serve_local)
    _check_local_model_output(out)


def test_local_model_example(serve_local: str) -> None:
    out = _run((ROOT / "examples" / "local_model.py").read_text(), serve_local)
    _check_local_model_output(out)


def _check_local_model_output(out: str) -> None:
    # The model's words vary; the shape does not.
    assert re.search(r"^\[\d+ tokens, \$0\.000000\]$", out, re.M), out
    assert re.search(r"^\[Using tool: get_weather \{'city': .*\}\]$", out, re.M), out
    assert "[success: 2 model calls]" in out


def test_anthropic_example_against_a_recorded_stream(tmp_path: Path) -> None:
    # Claude's side is a local stand-in replaying recorded Messages API streams: a tool call,
    # then (after the tool's result) the answer.
    bodies = [
        sse_tool_use("mcp__inline-tools__get_weather", {"city": "Paris"}),
        sse_text("It is sunny", " and 18 C in Paris."),
    ]
    with MessagesAPI(bodies) as api:
        env = {"ANTHROPIC_API_KEY": "sk-ant-example-key", "ANTHROPIC_BASE_URL": api.url}
        with _serve(tmp_path, "default", env) as served:
            out = _run((ROOT / "examples" / "anthropic_claude.py").read_text(), served.url)
    assert "[Using tool: get_weather {'city': 'Paris'}]" in out
    assert "It is sunny and 18 C in Paris." in out
    # 40 + 12 input and 20 + 6 output tokens at Claude Haiku 4.5's $1 / $5 per million.
    assert "[success: $0.000182, 52 in / 26 out]" in out
    first, second = (body for _, body, _ in api.requests)
    assert first["model"] == second["model"] == "claude-haiku-4-5-20251001"
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
