"""Issue 11, findings 4 and 10, as users meet them: ``chucky serve`` in a subprocess."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw import http_get_url
from support.serve import ServeProcesses, run_chucky, serve_process

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
    assert "address already in use" in result.stderr
