"""Issue 11, findings 4 and 10, as users meet them: ``chucky serve`` in a subprocess."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw import Frame, http_get_url, open_url, recv
from support.serve import (
    PROCESS_TIMEOUT,
    ServeProcesses,
    chucky_env,
    run_chucky,
    serve_process,
    sqlite_url,
    token_for,
)

METRICS_TOKEN = "0123456789abcdef" * 2
_METRICS_LINE = re.compile(r"chucky serve metrics on (http://127\.0\.0\.1:\d+)/metrics\n")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcesses]:
    with ServeProcesses(tmp_path) as processes:
        yield processes


async def test_metrics_on_their_own_port_with_the_token_from_the_environment(
    tmp_path: Path,
) -> None:
    with serve_process(
        "--metrics-port", "0", data_dir=tmp_path, env={"CHUCKY_METRICS_TOKEN": METRICS_TOKEN}
    ) as served:
        match = _METRICS_LINE.fullmatch(served.line())
        assert match, served.stderr()
        metrics = match.group(1).replace("http://", "ws://") + "/ws"
        status, _, _ = await http_get_url(metrics, "/metrics")
        assert status == 401
        bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        status, _, body = await http_get_url(metrics, "/metrics", bearer)
        assert status == 200
        assert b"chucky_connections_total" in body
        status, _, _ = await http_get_url(served.url, "/metrics", bearer)
        assert status == 404
        assert "warning" not in served.stderr()  # the variable is not in the process list
        assert METRICS_TOKEN not in served.stderr()


def test_a_metrics_token_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    with serve_process("--metrics-token", METRICS_TOKEN, data_dir=tmp_path) as served:
        warnings = [line for line in served.stderr().splitlines() if "warning" in line]
    assert warnings == [
        "chucky serve: warning: --metrics-token puts a secret in the process list (ps, /proc) "
        "of every user of this machine; prefer CHUCKY_METRICS_TOKEN"
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ("--metrics-token", "short"),
            "chucky serve: ValidationError: invalid metrics token: use 16 or more",
        ),
        (("--metrics-host", "127.0.0.1"), "--metrics-host needs --metrics-port"),
        (
            ("--metrics-host", "0.0.0.0", "--metrics-port", "0"),
            "--metrics-host 0.0.0.0 is not a loopback address: set a metrics token too",
        ),
    ],
    ids=["short-token", "host-without-port", "public-without-token"],
)
def test_bad_metrics_options_get_one_line(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    result = run_chucky("serve", "--port", "0", *args, data_dir=tmp_path, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "warning" not in line]
    assert len(lines) == 1, result.stderr
    assert error in lines[0]
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_gets_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_chucky(
            "serve", "--port", "0", "--metrics-port", str(port), data_dir=tmp_path, check=False
        )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "already in use" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--metrics-port" in result.stderr


# -- project secrets (finding 10) ----------------------------------------------------------------

OLD = "hk_live_" + "0123456789abcdef" * 2
NEW = "hk_live_" + "fedcba9876543210" * 2
_PROJECT_WARNING = (
    "chucky serve: warning: --project puts a secret in the process list (ps, /proc) of every "
    "user of this machine; prefer CHUCKY_PROJECTS, or a project in the database"
)


async def _first_frame(url: str, secret: str, project: str = "proj") -> Frame:
    async with open_url(url, token_for("u", project, secret)) as ws:
        return await recv(ws)


def _accepted(frame: Frame) -> bool:
    return frame == {"type": "control", "payload": {"action": "ready"}}


async def test_a_restarted_serve_forgets_the_secret_it_was_given(serve: ServeProcesses) -> None:
    db = sqlite_url(serve.data_dir / "state.db")
    node = await asyncio.to_thread(serve.start, "--db", db, "--project", f"proj:{OLD}")
    assert _accepted(await _first_frame(node.url, OLD))
    warnings = [line for line in node.stderr().splitlines() if "warning" in line]
    assert warnings == [_PROJECT_WARNING]
    assert OLD not in node.stderr()
    node.stop()

    listed = await asyncio.to_thread(
        run_chucky, "project", "list", "--db", db, data_dir=serve.data_dir
    )
    assert listed.stdout == ""  # never written

    node = await asyncio.to_thread(serve.start, "--db", db, "--project", f"proj:{NEW}")
    old = await _first_frame(node.url, OLD)
    assert old["type"] == "error"
    assert old["payload"]["details"]["reason"] == "invalid_token"
    assert _accepted(await _first_frame(node.url, NEW))


async def test_chucky_projects_is_not_warned_about(tmp_path: Path) -> None:
    with serve_process(data_dir=tmp_path, env={"CHUCKY_PROJECTS": f"proj:{NEW}"}) as served:
        assert _accepted(await _first_frame(served.url, NEW))
        assert "warning" not in served.stderr()


@pytest.mark.parametrize(
    ("source", "secret"),
    [
        ("flag", OLD + "0"),
        ("flag", OLD[:-1]),
        ("flag", "hk_live_..."),
        ("flag", "sk_test_0123456789"),
        ("env", OLD + "0"),
    ],
    ids=["33-digits", "31-digits", "placeholder", "no-prefix", "env-33-digits"],
)
def test_a_malformed_secret_stops_serve_in_one_line(
    tmp_path: Path, source: str, secret: str
) -> None:
    if source == "flag":
        result = run_chucky(
            "serve", "--port", "0", "--project", f"proj:{secret}", data_dir=tmp_path, check=False
        )
    else:
        result = subprocess.run(
            [sys.executable, "-m", "chucky.cli", "serve", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            env=chucky_env(tmp_path, {"CHUCKY_PROJECTS": f"proj:{secret}"}),
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "chucky serve: ValidationError: invalid secret of project 'proj': expected hk_live_ "
        "followed by exactly 32 hex digits ("
    )
    assert secret not in result.stderr


def test_project_delete(tmp_path: Path) -> None:
    db = sqlite_url(tmp_path / "state.db")
    created = run_chucky(
        "project", "create", "--name", "acme", "--id", "acme", "--db", db, data_dir=tmp_path
    )
    assert created.stdout.startswith("project acme\n")
    deleted = run_chucky("project", "delete", "acme", "--db", db, data_dir=tmp_path)
    assert deleted.stdout == (
        "deleted project acme: 1 secret(s), 0 session(s) with their messages, 0 usage row(s)\n"
    )
    assert run_chucky("project", "list", "--db", db, data_dir=tmp_path).stdout == ""
    again = run_chucky("project", "delete", "acme", "--db", db, data_dir=tmp_path, check=False)
    assert again.returncode == 1
    assert again.stderr == "chucky project delete: ValidationError: No project acme\n"
