"""The ``chucky`` command: token minting, prompt, serve's configuration."""

from __future__ import annotations

import argparse

import pytest

from chucky import cli, verify_claims
from chucky.errors import ValidationError
from chucky.server.config import ServerConfig, parse_projects
from chucky.testing import ScriptedServer

SECRET = "hk_live_" + "a" * 32


def test_token_prints_a_verifiable_token(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["token", "--project", "p1", "--user", "u1", "--secret", SECRET, "--ai-dollars", "2.5"]
    )
    assert code == 0
    claims = verify_claims(capsys.readouterr().out.strip(), SECRET)
    assert (claims.iss, claims.sub, claims.budget.ai) == ("p1", "u1", 2_500_000)


def test_token_needs_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHUCKY_SECRET", raising=False)
    assert cli.main(["token", "--project", "p", "--user", "u"]) == 2
    assert "--secret" in capsys.readouterr().err


def test_parse_projects_accepts_repeats_and_commas() -> None:
    assert parse_projects(["a:s1", "b:s2,a:s3", " ", "a:s1"]) == {"a": ["s1", "s3"], "b": ["s2"]}
    for bad in ["nosecret", ":s", "a:"]:
        with pytest.raises(ValidationError, match="ID:SECRET"):
            parse_projects([bad])


def test_config_from_env_merges_chucky_projects() -> None:
    config = ServerConfig.from_env({"CHUCKY_PROJECTS": "a:s2,b:s3"}, projects={"a": ["s1"]}, port=0)
    assert config.projects == {"a": ["s1", "s2"], "b": ["s3"]}
    assert config.port == 0


async def test_prompt_command_streams_a_turn(
    server: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(
        message="call nothing {}; echo hello there",
        url=server.url,
        token=server.token(),
        model="sonnet",
    )
    assert await cli._prompt(args) == 0
    out = capsys.readouterr().out
    assert "hello there" in out
    assert "[success: $" in out


async def test_prompt_command_reports_a_failed_turn(
    server: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(
        message="fail bad_request", url=server.url, token=server.token(), model="sonnet"
    )
    assert await cli._prompt(args) == 1
    assert "error:" in capsys.readouterr().err


def test_cli_maps_library_errors_to_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["prompt", "--url", "ws://127.0.0.1:1/ws", "--token", "t", "hi"])
    assert code == 1
    assert "ConnectionError" in capsys.readouterr().err
