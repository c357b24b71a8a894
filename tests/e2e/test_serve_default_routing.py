"""``chucky serve`` without ``--config`` (issue 4, section 7).

Without ``ANTHROPIC_API_KEY`` it serves the embedded local model whatever the model name (the
official client's default Claude name included) and reports ``local``; with the key, Claude
names go to Anthropic -- here a local stand-in for the Messages API on 127.0.0.1, reached
through the SDK's own ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.anthropic_api import MessagesAPI, sse_text
from support.serve import serve_process, sqlite_url, token_for

from chucky import Chucky
from chucky.errors import ProviderError, ValidationError

_IN_CI = os.environ.get("CI", "").lower() == "true"
try:
    from chucky.server.providers.llamacpp import default_model_path

    default_model_path()
except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
    if _IN_CI:
        raise
    pytest.skip(f"the local model is not available: {exc}", allow_module_level=True)

SECRET = "hk_live_" + "d" * 32
API_KEY = "sk-ant-e2e-" + "k" * 24
CLAUDE = "claude-haiku-4-5-20251001"


@pytest.fixture
def messages_api() -> Iterator[MessagesAPI]:
    with MessagesAPI([sse_text("Hi", model=CLAUDE)]) as api:
        yield api


def _serve_args(tmp_path: Path) -> tuple[str, ...]:
    return (
        "--db",
        sqlite_url(tmp_path / "c.db"),
        "--project",
        f"p:{SECRET}",
        "--config",
        "default",
    )


async def test_without_a_key_every_model_is_the_local_one(tmp_path: Path) -> None:
    with serve_process(*_serve_args(tmp_path), data_dir=tmp_path) as served:
        async with Chucky(token_for("u", "p", SECRET), served.url, max_tokens=8) as client:
            # The official client's default model name: no key, so the local model serves it.
            result = await client.prompt("Say hello.")
    assert result.subtype == "success", result
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.total_cost_usd == 0
    # The model actually used is what the session reports.
    from chucky.messages import AssistantMessage, SystemMessage

    reported = [m.model for m in result.messages if isinstance(m, SystemMessage)]
    reported += [m.message.model for m in result.messages if isinstance(m, AssistantMessage)]
    assert len(reported) >= 2 and set(reported) == {"local"}


async def test_with_a_key_claude_names_go_to_anthropic(
    tmp_path: Path, messages_api: MessagesAPI
) -> None:
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": messages_api.url}
    with serve_process(*_serve_args(tmp_path), data_dir=tmp_path, env=env) as served:
        async with Chucky(token_for("u", "p", SECRET), served.url, model=CLAUDE) as client:
            result = await client.prompt("hi")
            with pytest.raises(ValidationError, match="Available models: haiku, local"):
                await client.prompt("hi", model="gpt-4o")
    assert (result.subtype, result.result) == ("success", "Hi")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 3)
    assert result.total_cost_usd > 0  # priced as Claude Haiku 4.5
    [(path, body, key)] = messages_api.requests
    assert (path, body["model"], key) == ("/v1/messages", CLAUDE, API_KEY)
