"""``chucky demo``, the README's main command, as a user runs it (issue 4, section 7).

It needs no key and no network: an embedded server, the local model, a token, one streamed turn
with a forced client-side tool call. The wording is the model's; the structure is asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.serve import chucky_env

from chucky.errors import ProviderError

_IN_CI = os.environ.get("CI", "").lower() == "true"
try:
    from chucky.server.providers.llamacpp import default_model_path

    default_model_path()
except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
    if _IN_CI:
        raise
    pytest.skip(f"the local model is not available: {exc}", allow_module_level=True)


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chucky.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=chucky_env(tmp_path),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_demo_runs_a_session_with_a_tool_call(tmp_path: Path) -> None:
    run = _demo(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"loading the local model \S+\.gguf \(\d+ MB\) \.\.\.", lines[1]), lines
    assert re.fullmatch(r"ready in \d+\.\d s", lines[2])
    assert re.fullmatch(r"server  ws://127\.0\.0\.1:\d+/ws \(token for demo-user: .*\)", lines[3])
    [tool] = [line for line in lines if line.startswith("tool ")]
    call = re.fullmatch(r"tool    get_weather\((\{.*\})\) -> (\{.*\})", tool)
    assert call, tool
    assert isinstance(json.loads(call.group(1)), dict)
    assert json.loads(call.group(2))["conditions"] == "sunny"
    assert "result  success, 2 model calls, 1 tool call" in lines
    assert "cost    $0.000000 (local models are free unless priced)" in lines
    [usage] = [line for line in lines if line.startswith("usage ")]
    tokens = re.fullmatch(r"usage   (\d+) input tokens, (\d+) output tokens", usage)
    assert tokens and int(tokens.group(1)) > 0 and int(tokens.group(2)) > 0
    # The model's answer streamed after the tool call, before the result.
    answer = lines.index("result  success, 2 model calls, 1 tool call") - 1
    assert lines.index(tool) < answer and lines[answer].startswith("model   ")
    # Nothing is left in the user's data directory: the demo's state is temporary.
    assert not any(tmp_path.iterdir())


def test_a_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    run = _demo(tmp_path, "--model-path", str(tmp_path / "missing.gguf"))
    assert run.returncode != 0
    assert "missing.gguf" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_the_token_budget_has_a_floor_that_fits_the_tool_call(tmp_path: Path) -> None:
    # Below the floor the forced tool call would be cut (issue 11, finding 13): refused.
    refused = _demo(tmp_path, "--max-tokens", "16")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("chucky demo: argument --max-tokens: must be at least 48")
    # At the floor the call fits: it runs, and its JSON never shows as the model's answer.
    run = _demo(tmp_path, "--max-tokens", "48")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("tool    get_weather(") for line in lines), lines
    assert "result  success, 2 model calls, 1 tool call" in lines
    assert not any(line.startswith("model") and '"tool"' in line for line in lines), lines


def test_a_cut_tool_call_is_reported_as_cut_never_shown_as_the_answer(tmp_path: Path) -> None:
    # A city name long enough that the forced call does not fit 48 tokens -- if the model copies
    # it: it abbreviates some names, and which depends on the build's arithmetic (batched or
    # not), so the first of a few that is cut is the one checked.
    for city in (
        "Taumatawhakatangihangakoauauotamateaturipukakapikimaungahoronukupokaiwhenuakitanatahu",
        "San-Jose-de-las-Matas-de-Santa-Cruz-de-la-Sierra-de-los-Caballeros",
    ):
        run = _demo(tmp_path, "--max-tokens", "48", "--prompt", f"What is the weather in {city}?")
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        if "cut     the model's last reply was cut at --max-tokens 48" in lines:
            break
    else:
        pytest.fail(f"the model fitted every long city name in 48 tokens: {lines}")
    assert "result  success, 1 model calls, 0 tool call" in lines, lines
    assert not any(line.startswith(("model", "tool")) for line in lines), lines
    assert "{" not in run.stdout.split("you ", 1)[1].split("cost ", 1)[0], run.stdout
