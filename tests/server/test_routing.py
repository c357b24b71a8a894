"""Model routing by configuration (issue 4, section 1)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.raw import open_session, turn

from chucky.errors import ValidationError
from chucky.server.pricing import CLAUDE_CEILING, FREE, known_price, price_for
from chucky.server.providers.scripted import ScriptedProvider
from chucky.server.routing import CLAUDE_ALIASES, ModelRouter, RoutingConfig, default_routing
from chucky.testing import scripted_server

CONFIG = """
fallback = "default"

[providers.scripted]

[providers.ollama]
type = "openai"
base_url = "http://127.0.0.1:1/v1"

[models.default]
provider = "scripted"
model = "scripted"

[models.sonnet]
provider = "scripted"
model = "claude-sonnet-4-5-20250929"
aliases = ["claude-sonnet-4-5"]

[models.cheap]
provider = "scripted"
price = { input = 0.5, output = 1.5 }
"""


def _config(text: str = CONFIG) -> RoutingConfig:
    import tomllib

    return RoutingConfig.from_mapping(tomllib.loads(text))


def test_names_and_aliases_route_case_insensitively() -> None:
    router = ModelRouter.from_config(_config())
    route = router.resolve("SONNET")
    assert isinstance(route.provider, ScriptedProvider)
    assert route.model == "claude-sonnet-4-5-20250929"
    assert route.price == price_for("claude-sonnet-4-5-20250929")
    assert router.resolve("claude-sonnet-4-5").model == route.model
    assert router.resolve("sonnet").provider is route.provider  # created once, shared
    cheap = router.resolve("cheap")
    assert (cheap.model, cheap.price.input, cheap.price.output) == ("cheap", 0.5, 1.5)


def test_unknown_models_go_to_the_fallback_which_is_what_is_reported() -> None:
    route = ModelRouter.from_config(_config()).resolve("gpt-17")
    assert (route.name, route.model) == ("default", "scripted")


def test_without_fallback_an_unknown_model_lists_the_available_ones() -> None:
    router = ModelRouter.from_config(_config(CONFIG.replace('fallback = "default"', "")))
    with pytest.raises(ValidationError, match="Available models: cheap") as info:
        router.resolve("gpt-17")
    assert info.value.details["reason"] == "invalid_options"
    assert "sonnet" in info.value.details["available"]


def test_provider_slash_model_names_a_configured_provider() -> None:
    route = ModelRouter.from_config(_config()).resolve("scripted/anything")
    assert isinstance(route.provider, ScriptedProvider)
    assert route.model == "anything"


def test_patterns_match_in_order_and_pass_the_name_through() -> None:
    router = ModelRouter.from_config(
        _config(
            """
            [models."claude-opus-*"]
            provider = "scripted"
            model = "opus-pinned"

            [models."claude-*"]
            provider = "scripted"

            [models."sonnet[1m]"]
            provider = "scripted"
            """
        )
    )
    passthrough = router.resolve("Claude-Sonnet-4-5-20250929")
    assert (passthrough.model, passthrough.name) == (
        "Claude-Sonnet-4-5-20250929",
        "Claude-Sonnet-4-5-20250929",
    )
    assert passthrough.price == price_for("claude-sonnet-4-5-20250929")
    assert router.resolve("claude-opus-4-5").model == "opus-pinned"  # the first match wins
    assert router.resolve("sonnet[1m]").model == "sonnet[1m]"  # brackets are literal names
    with pytest.raises(ValidationError, match=r"claude-opus-\*, claude-\*"):
        router.resolve("gpt-4o")


def test_unknown_models_are_free_except_claude_which_costs_the_ceiling() -> None:
    assert known_price("my-local-llama") is None and price_for("my-local-llama") == FREE
    assert known_price("claude-haiku-4-5") == price_for("claude-haiku-4-5-20251001")
    assert CLAUDE_CEILING.output == max(
        price_for(m).output for m in ("sonnet", "opus", "haiku", "claude-opus-4-1")
    )
    # A pattern routing to a non-Anthropic provider keeps unknown models free.
    router = ModelRouter.from_config(_config('[models."x-*"]\nprovider = "scripted"'))
    assert router.resolve("x-1").price == FREE


def test_default_routing_without_a_key_serves_everything_locally() -> None:
    config = default_routing({})
    router = ModelRouter.from_config(config)
    assert config.providers["local"] == {"type": "llamacpp", "repeat_penalty": 1.3}
    for model in ("claude-sonnet-4-5-20250929", "sonnet", "gpt-4o", "local"):
        route = router.resolve(model)
        assert (route.name, route.price.output) == ("local", 0)
    # The penalty that keeps SmolLM2 from looping, as chucky demo and chucky chat use it.
    from chucky.server.providers.llamacpp import LlamaCppProvider

    provider = router.resolve("local").provider
    assert isinstance(provider, LlamaCppProvider)
    assert provider.repeat_penalty == 1.3


async def test_default_routing_with_a_key_sends_claude_names_to_anthropic(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from chucky.server.providers.anthropic import AnthropicProvider

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    config = default_routing()
    assert config.fallback is None
    assert config.providers["anthropic"] == {"api_key_env": "ANTHROPIC_API_KEY"}
    router = ModelRouter.from_config(config)
    assert router.resolve("local").name == "local"
    claude = router.resolve("claude-haiku-4-5-20251001")
    assert isinstance(claude.provider, AnthropicProvider)
    assert (claude.model, claude.name) == ("claude-haiku-4-5-20251001",) * 2
    assert claude.price == price_for("claude-haiku-4-5-20251001")
    assert router.resolve("sonnet").model == CLAUDE_ALIASES["sonnet"]
    # A Claude model the price table does not know is charged the dearest Claude price (a
    # budget never undercharges it), and the operator is told once.
    with caplog.at_level(logging.WARNING, logger="chucky.server.routing"):
        newer = router.resolve("claude-sonnet-9-9")
        router.resolve("claude-sonnet-9-9")
    assert (newer.model, newer.price) == ("claude-sonnet-9-9", CLAUDE_CEILING)
    assert [
        r.getMessage().startswith("no price known for claude-sonnet-9-9") for r in caplog.records
    ] == [True]
    await router.aclose()
    by_alias = {alias: config.models[alias] for alias in ("sonnet", "opus", "haiku")}
    assert {a: (e.provider, e.model) for a, e in by_alias.items()} == {
        a: ("anthropic", m) for a, m in CLAUDE_ALIASES.items()
    }
    assert [(glob, e.provider) for glob, e in config.patterns] == [("claude-*", "anthropic")]
    with pytest.raises(ValidationError, match="Available models: haiku, local, opus, sonnet"):
        router.resolve("gpt-4o")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.x]\nmodel = 'y'", "needs a provider"),
        ("[models.x]\nprovider = 'nope'", "unknown provider"),
        ("fallback = 'ghost'\n[models.x]\nprovider = 'scripted'", "fallback"),
        ("[models.x]\nprovider = 'scripted'\nprice = 3", "price"),
        ("[models.x]\nprovider = 'scripted'\nprice = { input = 'free' }", "price"),
    ],
)
def test_invalid_configs_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(text)


def test_an_unreadable_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="routing config"):
        RoutingConfig.from_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[models\n")
    with pytest.raises(ValidationError, match="routing config"):
        RoutingConfig.from_toml(broken)


async def test_the_server_routes_by_its_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(CONFIG.replace('fallback = "default"', ""))
    async with scripted_server(routing_file=str(path)) as server:
        async with open_session(server, model="sonnet") as (ws, _):
            frames = await turn(ws, "echo routed")
            assert frames[0]["model"] == "sonnet"
            assert frames[-1]["result"] == "routed"
        async with open_session(server, model="gpt-17") as (ws, _):
            frames = await turn(ws, "echo never")
            assert [f["type"] for f in frames] == ["error"]
            error = frames[0]["payload"]
            assert error["code"] == "VALIDATION_ERROR"
            assert "Available models: cheap, claude-sonnet-4-5, default, sonnet" in error["message"]


async def test_the_local_models_settings_come_from_the_routing_file(tmp_path: Path) -> None:
    try:
        from chucky.server.providers.llamacpp import LlamaCppProvider, default_model_path

        default_model_path()
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"the local model cannot run here: {exc}")
    config = _config(
        "[providers.local]\n"
        'type = "llamacpp"\n'
        "n_threads = 1\nn_threads_batch = 1\n"
        "n_batch = 64\nn_ubatch = 32\nn_ctx = 1024\nprompt_cache_mb = 8\n"
        "repeat_penalty = 1.2\n\n"
        '[models.small]\nprovider = "local"\n'
    )
    provider = ModelRouter.from_config(config).resolve("small").provider
    assert isinstance(provider, LlamaCppProvider)
    await provider.load()
    settings = provider.settings
    assert settings is not None
    assert (settings.n_threads, settings.n_threads_batch) == (1, 1)
    assert (settings.n_batch, settings.n_ubatch, settings.n_ctx) == (64, 32, 1024)
    assert settings.prompt_cache_mb == 8 and provider.repeat_penalty == 1.2
    llama = provider._loaded.llama if provider._loaded is not None else None
    assert llama is not None and llama.n_batch == 64 and llama.n_ctx() == 1024
    assert llama.context_params.n_ubatch == 32 and llama.context_params.n_threads == 1
