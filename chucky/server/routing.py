"""Model routing: which provider serves a requested model name, under which id, at what price.

A :class:`ModelRouter` is either **single** (every model goes to one provider: the scripted
model of the tests) or built from a :class:`RoutingConfig` -- a TOML file (``chucky serve
--config``) that maps model names and aliases to providers::

    fallback = "local"                  # unknown names go here (else VALIDATION_ERROR)

    [providers.anthropic]               # settings passed to the provider (keys from env)
    api_key_env = "ANTHROPIC_API_KEY"

    [providers.openai]
    base_url = "http://127.0.0.1:8080/v1"

    [models.sonnet]
    provider = "anthropic"
    model = "claude-sonnet-5-5"

    [models.local]
    provider = "openai"
    model = "smollm2"
    price = { input = 0.0, output = 0.0 }   # USD per million tokens (optional)

    [models."claude-*"]                 # a glob pattern; without `model`, the name passes through
    provider = "anthropic"

A name is looked up case-insensitively among the models, then among the patterns (in file
order); ``provider/model`` (``openai/gpt-4o``) names a configured provider directly. Providers
are created on first use, so a provider whose key is missing only fails when a model routed to it
is used. A provider whose package is not installed (``anthropic`` without the extra of that
name) fails every turn routed to it with ``PROVIDER_ERROR`` naming the extra to install
(:func:`missing_provider_error`); :meth:`ModelRouter.missing_providers` lists them up front
(``chucky serve`` logs one line per provider at start-up).

A provider table may also set the deadlines of its model calls, in seconds, overriding the
server's (``--model-timeout``, ``--first-event-timeout``)::

    [providers.local]
    type = "llamacpp"
    first_event_timeout = 300           # no event for this long: the call fails (PROVIDER_ERROR)
    model_timeout = 1800                # the whole call, from the request to its last event

Without ``--config``, ``chucky serve`` routes by :func:`default_routing`: the embedded local
model, and Claude through Anthropic when ``ANTHROPIC_API_KEY`` is set.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from .._redact import redacting_logger
from ..errors import ProviderError, ValidationError
from .pricing import CLAUDE_CEILING, FREE, ModelPrice, known_price, price_for
from .providers.base import Provider, provider_error

__all__ = [
    "CLAUDE_ALIASES",
    "DEADLINE_SETTINGS",
    "MissingProvider",
    "ModelEntry",
    "ModelRouter",
    "ProviderKind",
    "Route",
    "RoutingConfig",
    "default_routing",
    "missing_provider_error",
    "provider_factories",
    "provider_kinds",
]

logger = redacting_logger("chucky.server.routing")

CLAUDE_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sonnet": "claude-sonnet-5-5",
        "opus": "claude-opus-5-5",
        "haiku": "claude-haiku-4-5-20251001",
    }
)
"""The Claude family names of :func:`default_routing` and the model ids they stand for."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model request goes: the provider, the model id it knows, the price to charge.

    ``name`` is the model as reported to the client (the ``system`` init, ``assistant``
    messages): the configured name the request resolved to, fallback included.
    ``model_timeout`` and ``first_event_timeout`` are the provider table's deadlines of a call
    (seconds); ``None``: the server's.
    """

    provider: Provider
    model: str
    price: ModelPrice
    name: str = ""
    model_timeout: float | None = None
    first_event_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One configured model: its provider, the provider's id for it, and its price.

    An empty ``model`` (a pattern without one) passes the requested name through.
    """

    provider: str
    model: str
    price: ModelPrice | None = None


def _price(value: Any, where: str) -> ModelPrice:
    if not isinstance(value, Mapping):
        raise ValidationError(f"Invalid routing config: {where}.price must be a table")
    try:
        input_price = float(value.get("input", 0))
        return ModelPrice(
            input=input_price,
            output=float(value.get("output", 0)),
            cache_write=float(value.get("cache_write", input_price)),
            cache_read=float(value.get("cache_read", input_price)),
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"Invalid routing config: {where}.price: {exc}") from exc


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Models, providers and the fallback (see the module docstring)."""

    models: Mapping[str, ModelEntry] = field(default_factory=dict)
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fallback: str | None = None
    patterns: tuple[tuple[str, ModelEntry], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RoutingConfig:
        """Build from parsed TOML.

        Raises:
            ValidationError: a model without a provider or id, an unknown provider, a bad
                price, or a fallback that names no model.
        """
        providers = data.get("providers", {})
        if not isinstance(providers, Mapping) or not all(
            isinstance(v, Mapping) for v in providers.values()
        ):
            raise ValidationError("Invalid routing config: [providers.NAME] must be tables")
        for name, table in providers.items():
            for key in DEADLINE_SETTINGS:
                value = table.get(key)
                if value is not None and not _is_seconds(value):
                    raise ValidationError(
                        f"Invalid routing config: providers.{name}.{key} must be a number of "
                        f"seconds > 0, got {value!r}"
                    )
        models: dict[str, ModelEntry] = {}
        patterns: list[tuple[str, ModelEntry]] = []
        raw_models = data.get("models", {})
        if not isinstance(raw_models, Mapping):
            raise ValidationError("Invalid routing config: [models.NAME] must be tables")
        for name, spec in raw_models.items():
            if not isinstance(spec, Mapping) or not isinstance(spec.get("provider"), str):
                raise ValidationError(f"Invalid routing config: models.{name} needs a provider")
            provider = spec["provider"]
            if provider not in providers and provider not in provider_factories():
                raise ValidationError(
                    f"Invalid routing config: models.{name}: unknown provider {provider!r}"
                )
            is_pattern = _is_pattern(name)
            model = spec.get("model", "" if is_pattern else name)
            if not isinstance(model, str) or not (model or is_pattern):
                raise ValidationError(f"Invalid routing config: models.{name}.model")
            price = _price(spec["price"], f"models.{name}") if "price" in spec else None
            entry = ModelEntry(provider, model, price)
            for key in [name, *spec.get("aliases", ())]:
                key = str(key).lower()
                if _is_pattern(key):
                    patterns.append((key, entry))
                else:
                    models[key] = entry
        fallback = data.get("fallback")
        if fallback is not None and (
            not isinstance(fallback, str) or fallback.lower() not in models
        ):
            raise ValidationError(
                f"Invalid routing config: fallback {fallback!r} is not a configured model"
            )
        provider_settings = {k: dict(v) for k, v in providers.items()}
        return cls(models, provider_settings, fallback, tuple(patterns))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> RoutingConfig:
        """Read a TOML routing file.

        Raises:
            ValidationError: the file cannot be read or parsed, or is invalid.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValidationError(f"Invalid routing config {os.fspath(path)!r}: {exc}") from exc
        return cls.from_mapping(data)


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _is_pattern(name: str) -> bool:
    # Only * and ?: a bracket is part of real model names (claude-sonnet-4-5[1m]).
    return "*" in name or "?" in name


LOCAL_REPEAT_PENALTY: Final = 1.3
"""The embedded model's ``repeat_penalty`` where chucky picks it (``chucky serve`` without
``--config``, ``chucky demo``, ``chucky chat``): without one, SmolLM2-135M loops on a phrase."""


def default_routing(environ: Mapping[str, str] | None = None) -> RoutingConfig:
    """The routing of ``chucky serve`` without ``--config``.

    ``local`` is the embedded model (provider ``llamacpp``, its default GGUF file, free,
    ``repeat_penalty`` :data:`LOCAL_REPEAT_PENALTY`).
    Without ``ANTHROPIC_API_KEY`` every other name falls back to it too: a fresh machine needs
    no key and no network, and the model actually used (``local``) is what the session reports.
    With the key, ``claude-*`` names and ``sonnet``/``opus``/``haiku`` (:data:`CLAUDE_ALIASES`)
    go to Anthropic and other names are refused with the list of models available.

    Args:
        environ: The environment to read the key from; ``os.environ`` by default.
    """
    env = os.environ if environ is None else environ
    models: dict[str, Any] = {"local": {"provider": "local"}}
    providers: dict[str, Any] = {
        "local": {"type": "llamacpp", "repeat_penalty": LOCAL_REPEAT_PENALTY}
    }
    data: dict[str, Any] = {"models": models, "providers": providers}
    if env.get("ANTHROPIC_API_KEY"):
        providers["anthropic"] = {"api_key_env": "ANTHROPIC_API_KEY"}
        models["claude-*"] = {"provider": "anthropic"}
        for alias, model in CLAUDE_ALIASES.items():
            models[alias] = {"provider": "anthropic", "model": model}
    else:
        data["fallback"] = "local"
    return RoutingConfig.from_mapping(data)


ProviderFactory = Callable[[Mapping[str, Any]], Provider]

DEADLINE_SETTINGS: Final = ("model_timeout", "first_event_timeout")
"""The keys of a provider table that are the deadlines of its calls, not provider settings."""


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """A provider kind a config may name (``type``): where its class lives, and what it needs.

    Attributes:
        module, cls: The module (imported on first use) and the class in it.
        extra: The chucky extra that installs what it needs (``pip install "chucky[EXTRA]"``);
            ``None``: nothing beyond the server.
        requires: The top-level modules it cannot work without.
    """

    module: str
    cls: str
    extra: str | None = None
    requires: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MissingProvider:
    """A configured provider whose package is not installed (:meth:`ModelRouter.
    missing_providers`)."""

    name: str
    kind: str
    extra: str
    module: str
    models: tuple[str, ...]

    @property
    def message(self) -> str:
        """One log line: what is missing, what fails, what to install."""
        models = ", ".join(self.models) or "none"
        return (
            f"provider {self.name!r} ({self.kind}) is not installed: no module {self.module!r}; "
            f"turns for its models ({models}) fail with PROVIDER_ERROR. "
            f'Install it with: pip install "chucky[{self.extra}]"'
        )


def provider_kinds() -> dict[str, ProviderKind]:
    """The provider kinds a config may name."""
    providers = "chucky.server.providers"
    return {
        "scripted": ProviderKind(f"{providers}.scripted", "ScriptedProvider"),
        "anthropic": ProviderKind(
            f"{providers}.anthropic", "AnthropicProvider", "anthropic", ("anthropic",)
        ),
        "openai": ProviderKind(f"{providers}.openai", "OpenAIProvider", "openai", ("openai",)),
        "llamacpp": ProviderKind(
            f"{providers}.llamacpp", "LlamaCppProvider", "local", ("llama_cpp",)
        ),
    }


def missing_provider_error(name: str, kind: ProviderKind, module: str | None) -> ProviderError:
    """The ``PROVIDER_ERROR`` of a turn routed to provider ``name`` whose package is absent.

    Not retryable (``provider_rejected``): nothing changes until the extra is installed and the
    server restarted. The message names the extra, never a path.
    """
    missing = f"no module {module!r}" if module else "a module it needs is missing"
    install = f' Install it with: pip install "chucky[{kind.extra}]"' if kind.extra else ""
    return provider_error(
        f"Provider error: the {name!r} model provider is not installed on this server "
        f"({missing}).{install}",
        kind="provider_missing",
        retryable=False,
        provider=name,
        extra=kind.extra,
    )


def _lazy(kind: ProviderKind) -> ProviderFactory:
    def make(settings: Mapping[str, Any]) -> Provider:
        options = {k: v for k, v in settings.items() if k not in DEADLINE_SETTINGS}
        key_env = options.pop("api_key_env", None)
        if isinstance(key_env, str) and os.environ.get(key_env):
            options.setdefault("api_key", os.environ[key_env])
        provider_class = getattr(importlib.import_module(kind.module), kind.cls)
        provider: Provider = provider_class(**options)
        return provider

    return make


def provider_factories() -> dict[str, ProviderFactory]:
    """The provider kinds a config may name, created from their settings table.

    A factory raises :class:`ImportError` when the kind's package is absent
    (:class:`ModelRouter` turns it into :func:`missing_provider_error`).
    """
    return {name: _lazy(kind) for name, kind in provider_kinds().items()}


def _absent(module: str) -> bool:
    """Whether ``module`` cannot be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


class ModelRouter:
    """Maps requested model names to routes.

    ``ModelRouter(provider)`` routes every model to ``provider`` (priced as ``price_model``, or
    as the provider's name); ``ModelRouter.from_config(config)`` routes by configuration.
    """

    def __init__(
        self,
        provider: Provider | None = None,
        *,
        price_model: str | None = None,
        config: RoutingConfig | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        if (provider is None) == (config is None):
            raise ValueError("give either one provider or a routing config")
        self._single = provider
        self._price = price_for(price_model or provider.name) if provider is not None else None
        self.config = config
        self._providers: dict[str, Provider] = dict(providers or {})
        self._unpriced_logged: set[str] = set()
        self._failures_logged: set[str] = set()

    @classmethod
    def from_config(
        cls, config: RoutingConfig, *, providers: Mapping[str, Provider] | None = None
    ) -> ModelRouter:
        """Route by ``config``; ``providers`` gives ready instances for some provider names
        (a client with custom HTTP settings, a test double) instead of creating them."""
        return cls(config=config, providers=providers)

    @property
    def available(self) -> list[str]:
        """The configured model names and patterns (empty for a single-provider router)."""
        if self.config is None:
            return []
        return sorted(self.config.models) + [pattern for pattern, _ in self.config.patterns]

    def missing_providers(self) -> list[MissingProvider]:
        """The configured providers that a model routes to and whose package is absent.

        Checked without importing anything (``importlib.util.find_spec``); providers given
        ready (``providers=``) are not checked.
        """
        config = self.config
        if config is None:
            return []
        kinds = provider_kinds()
        routed: dict[str, list[str]] = {}
        entries = [*config.models.items(), *config.patterns]
        for name, entry in entries:
            routed.setdefault(entry.provider, []).append(name)
        for name in config.providers:
            routed.setdefault(name, [])
        missing = []
        for name, models in routed.items():
            if name in self._providers:
                continue
            kind_name = str(config.providers.get(name, {}).get("type", name))
            kind = kinds.get(kind_name)
            if kind is None or kind.extra is None:
                continue
            absent = next((module for module in kind.requires if _absent(module)), None)
            if absent is not None:
                missing.append(
                    MissingProvider(name, kind_name, kind.extra, absent, tuple(sorted(models)))
                )
        return missing

    def resolve(self, model: str) -> Route:
        """The route of ``model``.

        Raises:
            ValidationError: no provider serves ``model`` and no fallback is configured
                (``reason`` ``invalid_options``; the message lists the models available).
            ProviderError: the provider cannot be created: its package is not installed
                (:func:`missing_provider_error`) or its settings are refused.
        """
        if self._single is not None:
            assert self._price is not None
            return Route(self._single, model, self._price, model)
        config = self.config
        assert config is not None
        entry = config.models.get(model.lower())
        name = model
        if entry is None:
            lowered = model.lower()
            matches = (e for glob, e in config.patterns if fnmatch.fnmatchcase(lowered, glob))
            entry = next(matches, None)
        if entry is None and "/" in model:
            provider, _, provider_model = model.partition("/")
            if provider in config.providers and provider_model:
                entry = ModelEntry(provider, provider_model)
        if entry is None and config.fallback is not None:
            name = config.fallback
            entry = config.models[config.fallback.lower()]
        if entry is None:
            available = ", ".join(self.available) or "none"
            raise ValidationError(
                f"Invalid options: model {model[:100]!r} is not served here. "
                f"Available models: {available}",
                details={"reason": "invalid_options", "available": self.available},
            )
        provider_model = entry.model or model
        target = self._provider(entry.provider)
        price = entry.price or known_price(provider_model)
        if price is None:
            price = self._unknown_price(target, provider_model)
        settings = config.providers.get(entry.provider, {})
        return Route(
            target,
            provider_model,
            price,
            name,
            model_timeout=settings.get("model_timeout"),
            first_event_timeout=settings.get("first_event_timeout"),
        )

    def _unknown_price(self, provider: Provider, model: str) -> ModelPrice:
        """A model the price table does not know: free, unless Claude (always paid), which is
        charged :data:`~chucky.server.pricing.CLAUDE_CEILING` -- never under its real price."""
        if provider.name != "anthropic":
            return FREE
        if model not in self._unpriced_logged:
            self._unpriced_logged.add(model)
            logger.warning(
                "no price known for %s: charged as the dearest Claude model (%s/%s USD per "
                "million input/output tokens) until its price is configured",
                model,
                CLAUDE_CEILING.input,
                CLAUDE_CEILING.output,
            )
        return CLAUDE_CEILING

    def _provider(self, kind: str) -> Provider:
        provider = self._providers.get(kind)
        if provider is None:
            assert self.config is not None
            settings = self.config.providers.get(kind, {})
            factory_kind = str(settings.get("type", kind))
            kind_spec = provider_kinds().get(factory_kind)
            if kind_spec is None:
                raise ValidationError(f"Invalid routing config: unknown provider {kind!r}")
            factory = _lazy(kind_spec)
            try:
                provider = factory({k: v for k, v in settings.items() if k != "type"})
            except ImportError as exc:
                # Logged once, one line: the module that is missing, never a path or a trace.
                error = missing_provider_error(kind, kind_spec, exc.name)
                self._log_failure(kind, error)
                raise error from None
            except (TypeError, ValueError) as exc:
                # Settings the provider's class refuses (an unknown key, a negative retry). The
                # keys are named, never the values (a key, a URL with a password).
                keys = ", ".join(sorted(k for k in settings if k not in ("type", "api_key")))
                text = str(exc)
                for value in settings.values():
                    if isinstance(value, str) and len(value) >= 4:
                        text = text.replace(value, "[redacted]")
                error = provider_error(
                    f"Provider error: the {kind!r} model provider cannot be created from its "
                    f"settings ({keys or 'none'}): {text}",
                    kind="provider_misconfigured",
                    retryable=False,
                    provider=kind,
                )
                self._log_failure(kind, error)
                raise error from None
            self._providers[kind] = provider
        return provider

    def _log_failure(self, kind: str, error: ProviderError) -> None:
        if kind not in self._failures_logged:
            self._failures_logged.add(kind)
            logger.error("%s", error.message)

    async def aclose(self) -> None:
        if self._single is not None:
            await self._single.aclose()
        for provider in self._providers.values():
            await provider.aclose()
