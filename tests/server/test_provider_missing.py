"""A provider whose package is absent (issue 11, finding 8).

``chucky[server]`` alone with ``ANTHROPIC_API_KEY`` set: default routing sends Claude names to
the ``anthropic`` provider, which cannot be imported. Each turn routed there must fail with a
clear ``PROVIDER_ERROR`` naming the extra to install -- never an internal error, a traceback or
a path -- and the server says so once in its log, and at start-up (``chucky serve``: one line
on stderr). The missing package is simulated by making its import fail: ``None`` in
``sys.modules`` (in a subprocess, through a ``sitecustomize`` on its ``PYTHONPATH``).
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from pathlib import Path

import pytest
from support.serve import serve_process, token_for

from chucky import Chucky
from chucky.errors import ProviderError
from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.routing import ModelRouter, RoutingConfig, default_routing
from chucky.testing import ScriptedServer

SECRET = "hk_live_" + "e" * 32
INSTALL = 'pip install "chucky[anthropic]"'


@pytest.fixture
def no_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import anthropic`` fails, as without the extra (restored after the test)."""
    monkeypatch.setitem(sys.modules, "anthropic", None)
    # Another test may have imported the provider module already: it must be imported anew.
    monkeypatch.delitem(sys.modules, "chucky.server.providers.anthropic", raising=False)


def _server(tmp_path: Path, router: ModelRouter) -> ChuckyServer:
    config = ServerConfig(
        port=0, projects={"p": [SECRET]}, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    return ChuckyServer(config, router=router)


def _default_router() -> ModelRouter:
    return ModelRouter.from_config(default_routing({"ANTHROPIC_API_KEY": "sk-ant-test-key"}))


@pytest.mark.usefixtures("no_anthropic")
async def test_a_turn_routed_to_a_missing_provider_fails_with_the_extra_to_install(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chucky")
    async with _server(tmp_path, _default_router()) as server:
        running = ScriptedServer(server, "p", SECRET)
        async with Chucky(running.token(), server.url, model="sonnet") as client:
            errors = []
            for _ in range(2):
                with pytest.raises(ProviderError) as caught:
                    await client.prompt("hi")
                errors.append(caught.value)
    for error in errors:
        assert error.code == "PROVIDER_ERROR"
        assert INSTALL in error.message
        assert "anthropic" in error.message and "not installed" in error.message
        assert error.retryable is False and error.reason == "provider_rejected"
        assert error.details["kind"] == "provider_missing"
        assert error.details["extra"] == "anthropic"
        assert os.sep + "chucky" + os.sep not in error.message  # no path
    # Logged: at start-up (a warning), and once when a turn first needed it; no traceback.
    lines = [r for r in caplog.records if INSTALL in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.ERROR]
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("chucky"))
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage() == "turn failed" for r in caplog.records)


@pytest.mark.usefixtures("no_anthropic")
async def test_the_rest_of_the_routing_still_serves(tmp_path: Path) -> None:
    config = RoutingConfig.from_mapping(
        tomllib.loads(
            """
            [models.sonnet]
            provider = "anthropic"
            [models.echo]
            provider = "scripted"
            """
        )
    )
    async with _server(tmp_path, ModelRouter.from_config(config)) as server:
        running = ScriptedServer(server, "p", SECRET)
        async with Chucky(running.token(), server.url) as client:
            with pytest.raises(ProviderError, match="chucky\\[anthropic\\]"):
                await client.prompt("hi", model="sonnet")
            result = await client.prompt("echo still here", model="echo")
    assert result.result == "still here"


@pytest.mark.usefixtures("no_anthropic")
def test_missing_providers_lists_them_with_their_models() -> None:
    (missing,) = _default_router().missing_providers()
    assert (missing.name, missing.kind, missing.extra, missing.module) == (
        "anthropic",
        "anthropic",
        "anthropic",
        "anthropic",
    )
    assert missing.models == ("claude-*", "haiku", "opus", "sonnet")
    assert INSTALL in missing.message and "PROVIDER_ERROR" in missing.message


def test_installed_providers_are_not_reported() -> None:
    assert _default_router().missing_providers() == []
    config = RoutingConfig.from_mapping(
        {"providers": {"ollama": {"type": "openai"}}, "models": {"x": {"provider": "scripted"}}}
    )
    assert ModelRouter.from_config(config).missing_providers() == []


def test_a_missing_openai_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "chucky.server.providers.openai", raising=False)
    config = RoutingConfig.from_mapping(
        {
            "providers": {"ollama": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {"llama": {"provider": "ollama"}},
        }
    )
    router = ModelRouter.from_config(config)
    (missing,) = router.missing_providers()
    assert (missing.name, missing.kind, missing.extra) == ("ollama", "openai", "openai")
    with pytest.raises(ProviderError, match=r'pip install "chucky\[openai\]"') as caught:
        router.resolve("llama")
    assert caught.value.details["provider"] == "ollama"


async def test_settings_a_provider_refuses_are_a_provider_error(tmp_path: Path) -> None:
    config = RoutingConfig.from_mapping(
        {
            "providers": {"scripted": {"no_such_setting": 1}},
            "models": {"echo": {"provider": "scripted"}},
        }
    )
    async with _server(tmp_path, ModelRouter.from_config(config)) as server:
        running = ScriptedServer(server, "p", SECRET)
        async with Chucky(running.token(), server.url) as client:
            with pytest.raises(ProviderError) as caught:
                await client.prompt("echo hi", model="echo")
    error = caught.value
    assert error.details["kind"] == "provider_misconfigured" and error.retryable is False
    assert "cannot be created from its settings" in error.message
    assert "no_such_setting" in error.message


def test_chucky_serve_says_so_at_start_up_and_turns_fail_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['anthropic'] = None\n", encoding="utf-8"
    )
    path = os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {"ANTHROPIC_API_KEY": "sk-ant-test-" + "k" * 20, "PYTHONPATH": path}
    args = ("--db", f"sqlite+aiosqlite:///{tmp_path}/c.db", "--project", f"p:{SECRET}")
    with serve_process(*args, "--config", "default", data_dir=tmp_path, env=env) as served:
        startup = served.stderr()

        async def prompt() -> ProviderError:
            async with Chucky(token_for("u", "p", SECRET), served.url, model="sonnet") as client:
                with pytest.raises(ProviderError) as caught:
                    await client.prompt("hi")
            return caught.value

        import asyncio

        error = asyncio.run(prompt())
        later = served.stderr()
    warnings = [line for line in startup.splitlines() if INSTALL in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], startup
    assert "sonnet" in warnings[0]
    assert INSTALL in error.message
    assert "Traceback" not in later and "turn failed" not in later, later
