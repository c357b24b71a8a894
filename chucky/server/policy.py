"""What a token imposes on its sessions: ``sdkConfig`` and ``permissions``.

The rules are docs/protocol.md, sections 5 and 7.

Theory of operation. A token may carry two claims that shape its sessions:

- ``sdkConfig``: the project's configuration of the session. Every option it sets replaces the
  client's (``model``/``defaultModel``, ``systemPrompt``, ``tools``, ``mcpServers``, ...).
- ``permissions``: limits. ``model``/``allowedModels`` lists the models a session may use,
  ``tools``/``allowedTools`` and ``blockedTools`` the tools it may be offered,
  ``maxTurns``/``maxTurnsPerSession`` caps ``maxTurns``.

Precedence (section 5): ``sdkConfig`` > ``permissions`` > ``init`` options > server defaults. A
client option the token forbids is not an error: the token's value wins, and the ``system`` init
message shows what is in force. :meth:`Policy.apply` turns a client's options into the options
in force; it is pure, idempotent, and changes nothing for a token with neither claim.

=====================  ======================================================================
option                 in force
=====================  ======================================================================
``model``              ``sdkConfig``'s if set (even outside ``allowedModels``: it is higher);
                       else the client's if allowed; else the server default if allowed; else
                       the first allowed model
``fallbackModel``      ``sdkConfig``'s if set; else the client's, dropped if not allowed
``maxTurns``           ``sdkConfig``'s if set; else ``min(client, permissions.maxTurns)``
                       (the permission alone if the client sets none)
``maxBudgetUsd``       ``min(client, sdkConfig)``: a lower cap is always allowed
``allowedTools``       a tool must match every allowlist (client, ``sdkConfig``, permissions)
``disallowedTools``    client + ``sdkConfig`` + ``blockedTools``: a tool any of them matches
                       is not offered
everything else        ``sdkConfig``'s if set, else the client's
=====================  ======================================================================

``sdkConfig`` is parsed key by key: an unknown key is ignored (logged at debug) and an invalid
value drops that key only (logged as a warning). The token is signed by the project, so it is
trusted, but a typo in it must not lock every user out. Keys that name a connection's session
rather than configure one (``sessionId``/``resume``, ``continue``, ``forkSession``,
``resumeSessionAt``, ``jobId``, ``chuckyExtensions``) are ignored with a warning.

Tools are matched as :class:`~chucky.server.catalog.ToolCatalog` matches ``allowedTools``: ``*``,
the full name ``mcp__<server>__<tool>``, the bare name, ``mcp__<server>`` or
``mcp__<server>__*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError as PydanticValidationError

from .._redact import redacting_logger
from ..options import SessionOptions, ToolDefinition
from ..tokens import TokenClaims
from .catalog import LEGACY_SERVER, ClientTool, ToolCatalog, _allowed

__all__ = ["Policy"]

logger = redacting_logger("chucky.server.policy")

# sdkConfig spellings SessionOptions does not know. ``model`` beats ``defaultModel``.
_SDK_ALIASES: Final = {"defaultModel": "model", "default_model": "model"}
# Options that pick or identify a connection's session (or negotiate our extensions): a token
# that forced one would make every session of its user the same session.
_NOT_CONFIGURATION: Final = frozenset(
    {
        "session_id",
        "continue_session",
        "fork_session",
        "resume_session_at",
        "job_id",
        "chucky_extensions",
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a token imposes on its sessions.

    ``Policy()`` imposes nothing. Build one from verified claims with :meth:`from_claims`.

    Attributes:
        overrides: ``sdkConfig`` parsed as session options; every option set replaces the
            client's (see :meth:`apply` for the caps that combine instead).
        allowed_models: ``permissions.model``/``allowedModels``; ``None`` allows every model,
            ``"*"`` in it too. Never empty.
        allowed_tools: ``permissions.tools``/``allowedTools`` patterns; ``None`` allows every
            tool.
        blocked_tools: ``permissions.blockedTools`` patterns.
        max_turns: ``permissions.maxTurns``/``maxTurnsPerSession``: a cap on ``maxTurns``.

    Raises:
        ValueError: ``allowed_models`` is empty (use ``None`` for "every model") or
            ``max_turns`` is below 1.
    """

    overrides: SessionOptions = field(default_factory=SessionOptions)
    allowed_models: tuple[str, ...] | None = None
    allowed_tools: tuple[str, ...] | None = None
    blocked_tools: tuple[str, ...] = ()
    max_turns: int | None = None

    def __post_init__(self) -> None:
        if self.allowed_models is not None and not self.allowed_models:
            raise ValueError("allowed_models must not be empty: None allows every model")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")

    @classmethod
    def from_claims(cls, claims: TokenClaims) -> Policy:
        """The policy of a verified token's ``sdkConfig`` and ``permissions`` claims.

        Never fails: an unusable part of a claim is ignored and logged (see the module
        docstring). Normalisations: a ``permissions.model`` list with no non-empty name
        allows every model (a warning is logged); a ``permissions.maxTurns`` of ``0`` caps
        ``maxTurns`` at ``1``, the tightest cap a session can run with.

        Args:
            claims: The token's claims.

        Returns:
            The policy; ``Policy()`` for a token with neither claim.
        """
        overrides = _parse_sdk_config(claims.sdk_config)
        permissions = claims.permissions
        if permissions is None:
            return cls(overrides=overrides)
        allowed_models: tuple[str, ...] | None = None
        if permissions.allowed_models is not None:
            allowed_models = tuple(model for model in permissions.allowed_models if model)
            if not allowed_models:
                logger.warning("permissions.model names no model; every model is allowed")
                allowed_models = None
        max_turns = permissions.max_turns
        if max_turns == 0:
            logger.warning("permissions.maxTurns 0 is read as 1")
            max_turns = 1
        allowed_tools = permissions.allowed_tools
        return cls(
            overrides=overrides,
            allowed_models=allowed_models,
            allowed_tools=None if allowed_tools is None else tuple(allowed_tools),
            blocked_tools=tuple(permissions.blocked_tools or ()),
            max_turns=max_turns,
        )

    def model_allowed(self, model: str) -> bool:
        """Whether ``permissions`` allow ``model``.

        Names are compared exactly, ignoring case; aliases are not resolved (``sonnet`` does not
        allow ``claude-sonnet-4-5-20250929``). ``*`` allows every model.

        Args:
            model: A model id or alias.

        Returns:
            ``True`` if there is no model limit or ``model`` is in it.
        """
        if self.allowed_models is None:
            return True
        wanted = model.casefold()
        return any(name == "*" or name.casefold() == wanted for name in self.allowed_models)

    def tool_allowed(self, full_name: str, bare_name: str) -> bool:
        """Whether the token lets a session be offered a tool.

        The token's lists are ``permissions`` (``allowedTools``, ``blockedTools``) and
        ``sdkConfig`` (``allowedTools``, ``disallowedTools``); the client's own lists are not
        consulted (they are in the options :meth:`apply` returns).

        Args:
            full_name: The name the model sees (``mcp__<server>__<tool>`` for a client tool).
            bare_name: The tool's own name (the same as ``full_name`` for a tool of no server).

        Returns:
            ``True`` if every token allowlist matches the tool and no token denylist does.
        """
        server = _server_of(full_name, bare_name)
        denied = (*self.blocked_tools, *(self.overrides.disallowed_tools or ()))
        if _matches(full_name, bare_name, server, denied):
            return False
        return all(
            _matches(full_name, bare_name, server, patterns) for patterns in self._token_allowlists
        )

    def filter_catalog(self, catalog: ToolCatalog) -> ToolCatalog:
        """``catalog`` without the tools the token forbids (see :meth:`tool_allowed`).

        A catalog built with ``ToolCatalog.from_options(policy.apply(options, ...))`` already
        leaves them out; filtering it as well costs little and holds even for tool names that
        themselves look like patterns (a tool called ``mcp__x__y``), which one ``allowedTools``
        list cannot always express exactly.

        Args:
            catalog: A session's tools.

        Returns:
            ``catalog`` itself if the token limits no tool, else a new catalog with the same
            servers and only the tools the token allows.
        """
        if not self._limits_tools:
            return catalog
        offered = [tool for tool in catalog.tools if self.tool_allowed(tool.full_name, tool.name)]
        if len(offered) == len(catalog.names):
            return catalog
        return ToolCatalog(offered, catalog.servers)

    def apply(self, options: SessionOptions, *, default_model: str) -> SessionOptions:
        """The options in force for a session (see the table in the module docstring).

        Pass the ``init`` options, or the ``init`` options merged with a prompt's per-turn
        options (:meth:`SessionOptions.merged`): the result is the same whether or not they have
        been through ``apply`` before (``apply`` is idempotent).

        ``sdkConfig`` values win even where ``permissions`` would forbid them (a ``model``
        outside ``allowedModels``, a ``maxTurns`` above the permission): ``sdkConfig`` ranks
        higher. Only ``maxBudgetUsd`` combines with the client's value, as the lower of the two.

        The tool lists are composed so that ``ToolCatalog.from_options(result)`` offers exactly
        the tools the client's lists and the token both allow: ``disallowedTools`` is the union
        of every denylist; when more than one allowlist is given, ``allowedTools`` becomes the
        full names of the client tools in ``result`` that match all of them, plus each pattern
        every allowlist contains (or allows with ``*``), so names of tools the server does not
        list (built-in tools) keep working. Filter the catalog with :meth:`filter_catalog` too.

        Args:
            options: The client's options.
            default_model: The model the session runs when ``options`` name none: the
                server's default, or a resumed session's model. Kept (``model`` left unset) if
                allowed, else ``model`` is set to the first allowed model.

        Returns:
            The options in force; ``options`` itself if the token changes nothing.
        """
        sdk = self.overrides
        result = options.merged(sdk)
        update: dict[str, Any] = {}

        # Limits: sdkConfig ranks above permissions, so where it sets the option it stands.
        if sdk.model is None and not self.model_allowed(options.model or default_model):
            update["model"] = self._first_allowed_model
        fallback = options.fallback_model
        if sdk.fallback_model is None and fallback is not None and not self.model_allowed(fallback):
            update["fallback_model"] = None
        cap, turns = self.max_turns, options.max_turns
        if sdk.max_turns is None and cap is not None and (turns is None or turns > cap):
            update["max_turns"] = cap
        # A lower budget is always allowed.
        budget, sdk_budget = options.max_budget_usd, sdk.max_budget_usd
        if budget is not None and sdk_budget is not None and budget < sdk_budget:
            update["max_budget_usd"] = budget

        # merged() put sdkConfig's denylist in place of the client's: they add up instead.
        if sdk.disallowed_tools is not None or self.blocked_tools:
            denied = [
                *(options.disallowed_tools or ()),
                *(sdk.disallowed_tools or ()),
                *self.blocked_tools,
            ]
            update["disallowed_tools"] = _unique(denied)
        allowlists: list[list[str]] = []
        for patterns in (options.allowed_tools, sdk.allowed_tools, self.allowed_tools):
            # A list that allows what an earlier one allows adds nothing (and keeps apply
            # idempotent: the result's list meets the token's again on the next call).
            if patterns is not None and all(set(patterns) != set(seen) for seen in allowlists):
                allowlists.append(list(patterns))
        if len(allowlists) > 1:
            update["allowed_tools"] = _intersection(allowlists, _client_tools(result))
        elif self._token_allowlists and allowlists:
            update["allowed_tools"] = allowlists[0]

        return result.model_copy(update=update) if update else result

    @property
    def _token_allowlists(self) -> list[Sequence[str]]:
        return [
            patterns
            for patterns in (self.allowed_tools, self.overrides.allowed_tools)
            if patterns is not None
        ]

    @property
    def _limits_tools(self) -> bool:
        return bool(self.blocked_tools or self.overrides.disallowed_tools or self._token_allowlists)

    @property
    def _first_allowed_model(self) -> str:
        # Only asked when some model is not allowed, so the limit has a name that is not "*".
        assert self.allowed_models is not None
        return next(name for name in self.allowed_models if name != "*")


def _parse_sdk_config(raw: Mapping[str, Any] | None) -> SessionOptions:
    """``sdkConfig`` as session options, one key at a time so a bad value drops only its key."""
    if not raw:
        return SessionOptions()
    values: dict[str, Any] = {}
    # Stable sort: canonical spellings before aliases, so ``model`` beats ``defaultModel``.
    for key, value in sorted(raw.items(), key=lambda item: item[0] in _SDK_ALIASES):
        if value is None:  # null means absent (section 5)
            continue
        try:
            parsed = SessionOptions.model_validate({_SDK_ALIASES.get(key, key): value})
        except PydanticValidationError as exc:
            # The messages only: the value may be a secret (``env``, ``mcpServers`` headers).
            reason = "; ".join(str(error["msg"]) for error in exc.errors())
            logger.warning("sdkConfig key %.80r ignored: %.300s", key, reason)
            continue
        if not parsed.model_fields_set:
            logger.debug("sdkConfig key %.80r is not a session option; ignored", key)
            continue
        (name,) = parsed.model_fields_set
        if name in _NOT_CONFIGURATION:
            logger.warning("sdkConfig key %.80r does not configure a session; ignored", key)
        elif name in values:
            logger.debug("sdkConfig key %.80r repeats option %s; ignored", key, name)
        else:
            values[name] = getattr(parsed, name)
    return SessionOptions().model_copy(update=values) if values else SessionOptions()


def _client_tools(options: SessionOptions) -> list[ClientTool]:
    # Mirrors how ToolCatalog.from_options collects tools (before its allow and deny lists).
    tools = [
        ClientTool(server.name or "tools", definition)
        for server in options.mcp_server_list()
        if server.is_client_tools
        for definition in server.tools or ()
    ]
    if isinstance(options.tools, list):
        tools.extend(
            ClientTool(LEGACY_SERVER, item)
            for item in options.tools
            if isinstance(item, ToolDefinition)
        )
    return tools


def _intersection(allowlists: Sequence[Sequence[str]], tools: Iterable[ClientTool]) -> list[str]:
    """One allowlist that allows what every one of ``allowlists`` allows, for these tools."""
    names = [tool.full_name for tool in tools if all(_allowed(tool, ps) for ps in allowlists)]
    # A pattern every list contains (or allows wholesale) matches only what all of them allow.
    common = [
        pattern
        for patterns in allowlists
        for pattern in patterns
        if all(pattern in other or "*" in other for other in allowlists)
    ]
    return _unique([*names, *common])


def _server_of(full_name: str, bare_name: str) -> str | None:
    """The ``<server>`` of ``mcp__<server>__<bare_name>``, or ``None`` for another shape."""
    prefix, suffix = "mcp__", f"__{bare_name}"
    shaped = full_name.startswith(prefix) and full_name.endswith(suffix)
    if not shaped or len(full_name) < len(prefix) + len(suffix):
        return None
    return full_name[len(prefix) : len(full_name) - len(suffix)]


def _matches(full_name: str, bare_name: str, server: str | None, patterns: Iterable[str]) -> bool:
    # The same patterns as catalog._allowed, for a tool known by its names alone.
    accepted = {"*", full_name, bare_name}
    if server is not None:
        accepted |= {f"mcp__{server}", f"mcp__{server}__*"}
    return any(pattern in accepted for pattern in patterns)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
