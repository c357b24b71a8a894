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


S1, S2, S3 = ("hk_live_" + digit * 32 for digit in "123")


def test_parse_projects_accepts_repeats_and_commas() -> None:
    assert parse_projects([f"a:{S1}", f"b:{S2},a:{S3}", " ", f"a:{S1}"]) == {
        "a": [S1, S3],
        "b": [S2],
    }
    for bad in ["nosecret", f":{S1}", "a:"]:
        with pytest.raises(ValidationError, match="ID:SECRET"):
            parse_projects([bad])


def test_config_from_env_merges_chucky_projects() -> None:
    config = ServerConfig.from_env(
        {"CHUCKY_PROJECTS": f"a:{S2},b:{S3}"}, projects={"a": [S1]}, port=0
    )
    assert config.projects == {"a": [S1, S2], "b": [S3]}
    assert config.port == 0


@pytest.mark.parametrize(
    "secret",
    ["s1", S1 + "0", S1[:-1], S1.replace("1", "z"), "hk_live_x", S1.upper()],
    ids=["short", "33-digits", "31-digits", "not-hex", "one-digit", "prefix-case"],
)
def test_a_malformed_secret_is_refused_wherever_it_comes_from(secret: str) -> None:
    sources = [
        lambda: parse_projects([f"proj:{secret}"]),
        lambda: ServerConfig.from_env({"CHUCKY_PROJECTS": f"proj:{secret}"}),
        lambda: ServerConfig(projects={"proj": [secret]}),
    ]
    for source in sources:
        with pytest.raises(ValidationError) as caught:
            source()
        message = caught.value.message
        assert message.startswith("invalid secret of project 'proj': expected hk_live_")
        assert "\n" not in message
        assert secret not in message


def test_token_refuses_a_malformed_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = SECRET + "0"  # 33 digits
    assert cli.main(["token", "--project", "p", "--user", "u", "--secret", bad]) == 1
    monkeypatch.setenv("CHUCKY_SECRET", bad)
    assert cli.main(["token", "--project", "p", "--user", "u"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert (
        lines
        == [
            "chucky token: ValidationError: invalid secret of project 'p': expected hk_live_ "
            "followed by exactly 32 hex digits (33 characters after the prefix)"
        ]
        * 2
    )


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
