"""Every ``chucky`` command fails with one clear line and a proper exit status (issue 11,
finding 12): real processes, a real occupied port, real signals.

Exit status: 1 the command failed, 2 a usage error, 130 interrupted (Ctrl-C). ``chucky serve``
stops gracefully on SIGINT (exit 0), and a second SIGINT during that shutdown is answered with
one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw import check_result, collect_turn, init, open_url, send, user_frame
from support.serve import (
    PROCESS_TIMEOUT,
    ServeProcesses,
    chucky_env,
    run_chucky,
    token_for,
    until_system_init,
    usage,
)
from support.timing import ticks

from chucky.errors import ProviderError

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = str(ROOT / "examples" / "scripted.toml")
PROJECT = "proj"
SECRET = "hk_live_" + "c1" * 16
TURN_TIMEOUT = ticks(200)

try:
    from chucky.server.providers.llamacpp import default_model_path

    default_model_path()
    _MODEL = True
except (ImportError, ProviderError):  # pragma: no cover - depends on the environment
    if os.environ.get("CI", "").lower() == "true":
        raise
    _MODEL = False
needs_model = pytest.mark.skipif(not _MODEL, reason="the local model is not installed")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcesses]:
    with ServeProcesses(tmp_path) as processes:
        yield processes


def _one_line(stderr: str) -> str:
    """The single line of ``stderr`` (the test fails on anything more)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert stderr.endswith("\n"), stderr
    return lines[0]


@contextlib.contextmanager
def _popen(*args: str, data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "chucky.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=chucky_env(data_dir),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT)


def _read_until(process: subprocess.Popen[str], prefix: str) -> list[str]:
    """stdout lines up to the first one starting with ``prefix`` (which must come)."""
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        line = process.stdout.readline()
        assert line, f"no line starting with {prefix!r} in {lines}"
        lines.append(line)
        if line.startswith(prefix):
            return lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- interrupted: exit 130, one line ---------------------------------------------------------------


@needs_model
def test_ctrl_c_during_the_demo_turn_is_one_line_and_exit_130(tmp_path: Path) -> None:
    with _popen("demo", data_dir=tmp_path) as demo:
        _read_until(demo, "you ")
        time.sleep(0.2)  # the turn is running: the model generates the tool call
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=PROCESS_TIMEOUT)
    assert demo.returncode == 130, (out, err)
    assert _one_line(err) == "chucky demo: interrupted"
    assert out == "" or out.endswith("\n")  # a streamed answer's line is ended
    # The demo's temporary state is gone, interrupted or not.
    assert not any(tmp_path.iterdir())


@needs_model
def test_ctrl_c_while_the_demo_loads_the_model_is_one_line_and_exit_130(tmp_path: Path) -> None:
    with _popen("demo", data_dir=tmp_path) as demo:
        _read_until(demo, "loading the local model")
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=PROCESS_TIMEOUT)
    assert demo.returncode == 130, (out, err)
    assert _one_line(err) == "chucky demo: interrupted"


async def test_ctrl_c_during_a_prompt_is_one_line_and_exit_130(
    serve: ServeProcesses, tmp_path: Path
) -> None:
    node = await serve.start_with(PROJECT, SECRET)
    token = token_for("patient", PROJECT, SECRET)
    args = ("prompt", "--url", node.url, "--token", token, "sleep 30")
    with _popen(*args, data_dir=tmp_path) as prompt:
        # Interrupt once the turn runs on the server (it holds a compute reservation).
        deadline = time.monotonic() + TURN_TIMEOUT
        while (await usage(node.url, token))["compute"]["reserved"] == 0:
            assert time.monotonic() < deadline and prompt.poll() is None
            await asyncio.sleep(ticks(1))
        prompt.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(prompt.communicate, timeout=PROCESS_TIMEOUT)
    assert prompt.returncode == 130, (out, err)
    assert _one_line(err) == "chucky prompt: interrupted"


async def test_a_second_ctrl_c_does_not_break_the_graceful_shutdown(
    serve: ServeProcesses,
) -> None:
    node = await serve.start_with(PROJECT, SECRET, "--shutdown-grace", "10")
    token = token_for("graceful", PROJECT, SECRET)
    async with open_url(node.url, token) as ws:
        await init(ws)
        await send(ws, user_frame("sleep 1; echo done"))
        system = await until_system_init(ws)
        node.send_signal(signal.SIGINT)
        await asyncio.sleep(ticks(1))
        node.send_signal(signal.SIGINT)  # impatient
        frames = [system, *await collect_turn(ws, TURN_TIMEOUT)]
        assert check_result(frames)["result"] == "done"
    assert await asyncio.to_thread(node.wait, TURN_TIMEOUT) == 0
    # Besides the warning every --project start prints (tests/security/test_serve_cli.py).
    lines = [
        line
        for line in node.stderr().splitlines()
        if not line.startswith("chucky serve: warning: --project puts a secret")
    ]
    assert _one_line("\n".join(lines) + "\n") == (
        "chucky serve: already shutting down (running turns have up to 10 s to finish)"
    )


# -- the command failed: exit 1, one line ----------------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        run = run_chucky(
            *("serve", "--port", str(port), "--config", SCRIPTED),
            data_dir=tmp_path,
            check=False,
        )
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert _one_line(run.stderr) == (
        f"chucky serve: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(stop what listens there, or pick another --port; --port 0 picks a free one)"
    )


def test_serve_on_an_unknown_host_is_one_line_and_exit_1(tmp_path: Path) -> None:
    run = run_chucky(
        *("serve", "--port", "0", "--host", "no-such-host.invalid"),
        *("--config", SCRIPTED),
        data_dir=tmp_path,
        check=False,
    )
    assert run.returncode == 1, run
    line = _one_line(run.stderr)
    assert line.startswith("chucky serve: cannot listen on no-such-host.invalid:0: unknown host")


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{_free_port()}/ws"
    run = run_chucky("prompt", "--url", url, "--token", "t", "hi", data_dir=tmp_path, check=False)
    assert run.returncode == 1, run
    line = _one_line(run.stderr)
    assert line.startswith(f"chucky prompt: ConnectionError: cannot connect to {url}"), line


async def test_a_bad_token_is_one_line_and_exit_1(serve: ServeProcesses, tmp_path: Path) -> None:
    node = await serve.start_with(PROJECT, SECRET)
    wrong = token_for("mallory", PROJECT, "hk_live_" + "0" * 32)
    for token in (wrong, "not-a-token"):
        run = await asyncio.to_thread(
            run_chucky,
            *("prompt", "--url", node.url, "--token", token, "hi"),
            data_dir=tmp_path,
            check=False,
        )
        assert run.returncode == 1, run
        assert _one_line(run.stderr).startswith("chucky prompt: AuthenticationError: ")
        assert token not in run.stderr


async def test_a_failed_turn_is_one_line_and_exit_1(serve: ServeProcesses, tmp_path: Path) -> None:
    node = await serve.start_with(PROJECT, SECRET)
    token = token_for("unlucky", PROJECT, SECRET)
    run = await asyncio.to_thread(
        run_chucky,
        *("prompt", "--url", node.url, "--token", token, "stream 3; fail bad_request"),
        data_dir=tmp_path,
        check=False,
    )
    assert run.returncode == 1, run
    assert _one_line(run.stderr).startswith("chucky prompt: turn error: ProviderError: ")


def test_a_missing_model_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "missing.gguf"
    run = run_chucky("demo", "--model-path", str(missing), data_dir=tmp_path, check=False)
    assert run.returncode == 1, run
    line = _one_line(run.stderr)
    assert line.startswith("chucky demo: ProviderError: ") and str(missing) in line, line


def test_an_unusable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    commands = {"project list": ["project", "list"], "serve": ["serve", "--port", "0"]}
    for command, args in commands.items():
        run = run_chucky(*args, "--db", "nonsense://", data_dir=tmp_path, check=False)
        assert run.returncode == 1, run
        line = _one_line(run.stderr)
        assert line.startswith(f"chucky {command}: StoreError: "), line


def test_revoking_nothing_is_one_line_and_exit_1(tmp_path: Path) -> None:
    run_chucky("project", "create", "--name", "acme", "--id", "acme", data_dir=tmp_path)
    run = run_chucky(
        *("project", "revoke", "acme", "--secret-prefix", "hk_live_zz"),
        data_dir=tmp_path,
        check=False,
    )
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert _one_line(run.stderr) == (
        "chucky project revoke: no active secret of project 'acme' starts with 'hk_live_zz'"
    )


# -- usage errors: exit 2, one line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "chucky: the following arguments are required: command (see chucky --help)"),
        (["serve", "--port", "x"], "chucky serve: argument --port: invalid int value: 'x'"),
        (["serve", "--bogus"], "chucky: unrecognized arguments: --bogus"),
        (["project"], "chucky project: the following arguments are required: action"),
        (["token", "--user", "u"], "chucky token: the following arguments are required"),
        (["token", "--project", "nope", "--user", "u"], "chucky token: no secret for project"),
        (["prompt", "hi"], "chucky prompt: --token (or CHUCKY_TOKEN) is required"),
        (
            ["demo", "--max-tokens", "16"],
            "chucky demo: argument --max-tokens: must be at least 48, got 16",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    run = run_chucky(*args, data_dir=tmp_path, check=False)
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert _one_line(run.stderr).startswith(expected), run.stderr


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["serve"], ["project"], ["project", "create"], ["token"], ["prompt"], ["chat"]],
)
def test_help_is_plain_text(tmp_path: Path, command: list[str]) -> None:
    run = run_chucky(*command, "--help", data_dir=tmp_path)
    assert run.stdout.startswith("usage: chucky")
    for markup in ("``", ":class:", ":func:", ":data:", ":meth:", ":mod:", "`"):
        assert markup not in run.stdout, (markup, run.stdout)
