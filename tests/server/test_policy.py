"""A token's ``sdkConfig`` and ``permissions`` applied to session options (no sockets)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.options import SessionOptions, ToolDefinition
from chucky.server.catalog import ClientTool, ToolCatalog, _allowed
from chucky.server.policy import Policy
from chucky.tokens import TokenClaims, create_budget, create_token, verify_claims

DEFAULT = "claude-sonnet-4-5-20250929"
SECRET = "hk_live_" + "0" * 32


def _claims(**extra: Any) -> TokenClaims:
    """Claims as a token minted by any client would carry them (wire spellings)."""
    payload = {
        "sub": "user",
        "iss": "project",
        "exp": 2_000_000_000,
        "budget": {"ai": 1_000_000, "compute": 3600, "window": "day"},
        **extra,
    }
    return TokenClaims.model_validate(payload)


def _policy(permissions: dict[str, Any] | None = None, **sdk_config: Any) -> Policy:
    extra: dict[str, Any] = {}
    if permissions is not None:
        extra["permissions"] = permissions
    if sdk_config:
        extra["sdkConfig"] = sdk_config
    return Policy.from_claims(_claims(**extra))


def _options(**wire: Any) -> SessionOptions:
    return SessionOptions.model_validate(wire)


def _servers(**tools: list[str]) -> list[dict[str, Any]]:
    """Client-tools servers, as ``mcpServers`` carries them: ``srv=["a", "b"]``."""
    return [
        {
            "name": server,
            "version": "1.0.0",
            "tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names],
        }
        for server, names in tools.items()
    ]


def _offered(policy: Policy, options: SessionOptions) -> list[str]:
    applied = policy.apply(options, default_model=DEFAULT)
    return policy.filter_catalog(ToolCatalog.from_options(applied)).names


# -- a token with neither claim ----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        _options(),
        _options(model="opus", maxTurns=3, maxBudgetUsd=1.5, fallbackModel="haiku"),
        _options(
            mcpServers=_servers(srv=["a", "b"]),
            allowedTools=["a", "a"],
            disallowedTools=["b", "b"],
            systemPrompt="be brief",
            env={"K": "v"},
        ),
    ],
    ids=["empty", "limits", "tools"],
)
@pytest.mark.parametrize(
    "extra",
    [{}, {"permissions": {}}, {"sdkConfig": {}}, {"permissions": {}, "sdkConfig": {}}],
    ids=["no-claims", "empty-permissions", "empty-sdk-config", "both-empty"],
)
def test_a_token_with_neither_claim_changes_nothing(
    options: SessionOptions, extra: dict[str, Any]
) -> None:
    policy = Policy.from_claims(_claims(**extra))
    assert policy == Policy()
    applied = policy.apply(options, default_model=DEFAULT)
    assert applied == options
    assert applied.to_wire() == options.to_wire()
    catalog = ToolCatalog.from_options(options)
    assert policy.filter_catalog(catalog) is catalog


def test_the_policy_of_a_signed_token() -> None:
    token = create_token(
        "user",
        "project",
        SECRET,
        create_budget(1, 1, now=0),
        permissions={"tools": ["a"], "blockedTools": ["b"], "maxTurnsPerSession": 4},
        sdk_config={"defaultModel": "haiku", "systemPrompt": "house rules"},
        now=0,
    )
    policy = Policy.from_claims(verify_claims(token, SECRET, now=1))
    assert policy.allowed_tools == ("a",)
    assert policy.blocked_tools == ("b",)
    assert policy.max_turns == 4
    assert policy.overrides.model == "haiku"
    assert policy.overrides.system_prompt == "house rules"


# -- permissions: every spelling ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["tools", "allowedTools", "allowed_tools"])
def test_permission_tool_allowlist_spellings(key: str) -> None:
    assert _policy({key: ["a", "mcp__srv"]}).allowed_tools == ("a", "mcp__srv")


def test_permission_blocked_tools() -> None:
    assert _policy({"blockedTools": ["x"]}).blocked_tools == ("x",)
    assert _policy({}).blocked_tools == ()


@pytest.mark.parametrize("key", ["maxTurns", "maxTurnsPerSession", "max_turns"])
def test_permission_max_turns_spellings(key: str) -> None:
    assert _policy({key: 3}).max_turns == 3


@pytest.mark.parametrize(
    ("permissions", "models"),
    [
        ({"model": "haiku"}, ("haiku",)),
        ({"model": ["haiku", "sonnet"]}, ("haiku", "sonnet")),
        ({"allowedModels": ["haiku"]}, ("haiku",)),
        ({"allowedModels": "haiku"}, ("haiku",)),
        ({"allowed_models": ["opus"]}, ("opus",)),
        ({"model": ["", "haiku"]}, ("haiku",)),
    ],
)
def test_permission_model_spellings(permissions: dict[str, Any], models: tuple[str, ...]) -> None:
    assert _policy(permissions).allowed_models == models


def test_a_model_list_naming_no_model_allows_every_model(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "chucky.server.policy"):
        policy = _policy({"model": []})
    assert policy.allowed_models is None
    assert policy.model_allowed("anything")
    assert "every model is allowed" in caplog.text


def test_a_max_turns_permission_of_zero_is_the_tightest_cap() -> None:
    policy = _policy({"maxTurns": 0})
    assert policy.max_turns == 1
    assert policy.apply(_options(maxTurns=5), default_model=DEFAULT).max_turns == 1


def test_a_policy_refuses_limits_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="allowed_models"):
        Policy(allowed_models=())
    with pytest.raises(ValueError, match="max_turns"):
        Policy(max_turns=0)


# -- sdkConfig parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sdk_config",
    [
        {"model": "haiku"},
        {"defaultModel": "haiku"},
        {"default_model": "haiku"},
        {"model": "haiku", "defaultModel": "opus"},
        {"defaultModel": "opus", "model": "haiku"},
    ],
)
def test_sdk_config_model_spellings(sdk_config: dict[str, Any]) -> None:
    assert _policy(**sdk_config).overrides.model == "haiku"


def test_sdk_config_options_replace_the_clients() -> None:
    sdk_config = {
        "systemPrompt": {"type": "preset", "preset": "claude_code", "append": "house rules"},
        "permissionMode": "plan",
        "maxThinkingTokens": 2048,
        "outputFormat": {"type": "json_schema", "schema": {"type": "object"}},
        "env": {"REGION": "eu"},
        "mcpServers": _servers(house=["lookup"]),
        "fallbackModel": "haiku",
        "includePartialMessages": True,
        "betas": ["b1"],
    }
    client = _options(
        systemPrompt="mine",
        permissionMode="default",
        maxThinkingTokens=99,
        outputFormat={"type": "json_schema", "schema": {"type": "string"}},
        env={"REGION": "us", "OTHER": "x"},
        mcpServers=_servers(srv=["a"]),
        fallbackModel="opus",
        includePartialMessages=False,
        maxTurns=2,
    )
    applied = _policy(**sdk_config).apply(client, default_model=DEFAULT)
    assert applied.system_prompt_text() == "house rules"
    assert applied.permission_mode == "plan"
    assert applied.max_thinking_tokens == 2048
    assert applied.output_format is not None
    assert applied.output_format.schema_ == {"type": "object"}
    assert applied.env == {"REGION": "eu"}
    assert applied.fallback_model == "haiku"
    assert applied.include_partial_messages is True
    assert applied.betas == ["b1"]
    assert applied.max_turns == 2  # not in sdkConfig: the client's stands
    assert ToolCatalog.from_options(applied).names == ["mcp__house__lookup"]


def test_sdk_config_tools_replace_the_clients_legacy_tools() -> None:
    client = _options(tools=[{"name": "inline", "inputSchema": {"type": "object"}}])
    assert ToolCatalog.from_options(client).names == ["mcp__inline-tools__inline"]
    applied = _policy(tools=["Read"]).apply(client, default_model=DEFAULT)
    assert applied.tools == ["Read"]
    assert ToolCatalog.from_options(applied).names == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("maxTurns", "lots"),
        ("maxTurns", 0),
        ("maxBudgetUsd", -1),
        ("maxThinkingTokens", 1.5),
        ("outputFormat", {"type": "xml"}),
        ("systemPrompt", 42),
        ("mcpServers", "srv"),
        ("allowedTools", "a"),
        ("env", {"TOKEN": ["hk_live_do_not_log"]}),
        ("model", ["a", "b"]),
        ("defaultModel", 7),
    ],
)
def test_an_invalid_sdk_config_value_drops_that_key_only(
    key: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "chucky.server.policy"):
        policy = _policy(**{key: value, "permissionMode": "plan"})
    assert policy.overrides.to_wire() == {"permissionMode": "plan"}
    assert f"sdkConfig key {key!r} ignored" in caplog.text
    assert "hk_live_do_not_log" not in caplog.text
    client = _options(model="opus", maxTurns=2, env={"A": "b"})
    applied = policy.apply(client, default_model=DEFAULT)
    assert applied == client.model_copy(update={"permission_mode": "plan"})


def test_unknown_sdk_config_keys_are_ignored_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "chucky.server.policy"):
        policy = _policy(flavour="vanilla", maxTurns=4, nothing=None)
    assert policy.overrides.to_wire() == {"maxTurns": 4}
    (record,) = [r for r in caplog.records if "flavour" in r.getMessage()]
    assert record.levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sessionId", "s-1"),
        ("resume", "s-1"),
        ("continue", True),
        ("forkSession", True),
        ("resumeSessionAt", "m-1"),
        ("jobId", "j"),
        ("chuckyExtensions", ["x"]),
    ],
)
def test_sdk_config_cannot_pick_the_session(
    key: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "chucky.server.policy"):
        policy = _policy(**{key: value})
    assert policy.overrides == SessionOptions()
    assert "does not configure a session" in caplog.text


# -- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sdk", "allowed", "client", "default", "expected"),
    [
        (None, None, None, DEFAULT, None),  # the server default, left to the server
        (None, None, "opus", DEFAULT, "opus"),
        (None, ["haiku", DEFAULT], None, DEFAULT, None),  # default allowed
        (None, ["haiku", "opus"], None, DEFAULT, "haiku"),  # default forbidden
        (None, ["haiku", "opus"], "opus", DEFAULT, "opus"),
        (None, ["haiku", "opus"], "sonnet", DEFAULT, "haiku"),  # forbidden -> first allowed
        (None, ["*"], "sonnet", DEFAULT, "sonnet"),
        (None, ["HAIKU"], "haiku", DEFAULT, "haiku"),  # case-insensitive, client's spelling
        ("opus", None, None, DEFAULT, "opus"),
        ("opus", None, "haiku", DEFAULT, "opus"),
        ("opus", ["haiku"], None, DEFAULT, "opus"),  # sdkConfig ranks above permissions
        ("opus", ["haiku"], "haiku", DEFAULT, "opus"),
    ],
)
def test_model_precedence(
    sdk: str | None,
    allowed: list[str] | None,
    client: str | None,
    default: str,
    expected: str | None,
) -> None:
    policy = _policy(None if allowed is None else {"model": allowed}, model=sdk)
    applied = policy.apply(_options(model=client), default_model=default)
    assert applied.model == expected


def test_a_forbidden_per_turn_model_is_replaced_too() -> None:
    policy = _policy({"model": ["haiku", "sonnet"]})
    init = policy.apply(_options(model="sonnet"), default_model=DEFAULT)
    turn = policy.apply(init.merged(_options(model="opus")), default_model=DEFAULT)
    assert turn.model == "haiku"
    assert policy.apply(init.merged(_options()), default_model=DEFAULT).model == "sonnet"


def test_a_forbidden_fallback_model_is_dropped() -> None:
    policy = _policy({"model": ["haiku"]})
    applied = policy.apply(_options(model="haiku", fallbackModel="opus"), default_model=DEFAULT)
    assert applied.fallback_model is None
    allowed = policy.apply(_options(fallbackModel="Haiku"), default_model=DEFAULT)
    assert allowed.fallback_model == "Haiku"
    sdk = _policy({"model": ["haiku"]}, fallbackModel="opus")
    assert sdk.apply(_options(), default_model=DEFAULT).fallback_model == "opus"


def test_model_allowed() -> None:
    assert Policy().model_allowed("anything")
    policy = _policy({"model": ["Claude-Haiku", "opus"]})
    assert policy.model_allowed("claude-haiku")
    assert policy.model_allowed("OPUS")
    assert not policy.model_allowed("sonnet")
    assert not policy.model_allowed("claude-haiku-4-5")  # exact names, no alias resolution
    assert _policy({"model": ["haiku", "*"]}).model_allowed("sonnet")


# -- caps --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sdk", "permission", "client", "expected"),
    [
        (None, None, None, None),
        (None, None, 7, 7),
        (None, 3, None, 3),  # the permission applies when the client sets none
        (None, 3, 10, 3),
        (None, 3, 2, 2),  # a lower cap is the client's to choose
        (20, 3, 2, 20),  # sdkConfig wins outright
        (20, None, None, 20),
        (1, 3, 10, 1),
    ],
)
def test_max_turns_precedence(
    sdk: int | None, permission: int | None, client: int | None, expected: int | None
) -> None:
    policy = _policy(None if permission is None else {"maxTurns": permission}, maxTurns=sdk)
    assert policy.apply(_options(maxTurns=client), default_model=DEFAULT).max_turns == expected


@pytest.mark.parametrize(
    ("sdk", "client", "expected"),
    [
        (None, None, None),
        (None, 7.0, 7.0),
        (5.0, None, 5.0),
        (5.0, 7.0, 5.0),
        (5.0, 3.0, 3.0),  # a client may lower its own session budget
        (5.0, 0.0, 0.0),
    ],
)
def test_max_budget_is_the_lower_of_client_and_sdk_config(
    sdk: float | None, client: float | None, expected: float | None
) -> None:
    policy = _policy(maxBudgetUsd=sdk)
    applied = policy.apply(_options(maxBudgetUsd=client), default_model=DEFAULT)
    assert applied.max_budget_usd == expected


def test_a_per_turn_budget_cannot_exceed_sdk_config() -> None:
    policy = _policy(maxBudgetUsd=5)
    init = policy.apply(_options(maxBudgetUsd=3), default_model=DEFAULT)
    assert init.max_budget_usd == 3
    turn = policy.apply(init.merged(_options(maxBudgetUsd=10)), default_model=DEFAULT)
    assert turn.max_budget_usd == 5


# -- tools -------------------------------------------------------------------------------------

TOOLS = _servers(srv=["a", "b"], other=["c"])
ALL = ["mcp__srv__a", "mcp__srv__b", "mcp__other__c"]


@pytest.mark.parametrize(
    ("blocked", "offered"),
    [
        ("*", []),
        ("mcp__srv__a", ["mcp__srv__b", "mcp__other__c"]),
        ("a", ["mcp__srv__b", "mcp__other__c"]),
        ("mcp__srv", ["mcp__other__c"]),
        ("mcp__srv__*", ["mcp__other__c"]),
        ("Bash", ALL),
    ],
)
def test_a_blocked_tool_is_not_offered(blocked: str, offered: list[str]) -> None:
    policy = _policy({"blockedTools": [blocked]})
    options = _options(mcpServers=TOOLS, disallowedTools=["nothing"])
    applied = policy.apply(options, default_model=DEFAULT)
    assert applied.disallowed_tools == ["nothing", blocked]
    assert ToolCatalog.from_options(applied).names == offered
    # The catalog of the client's own options, filtered, is the same.
    assert policy.filter_catalog(ToolCatalog.from_options(options)).names == offered
    # A client cannot allow back what the token blocks.
    assert _offered(policy, _options(mcpServers=TOOLS, allowedTools=["*"])) == offered


def test_deny_lists_add_up() -> None:
    policy = _policy({"blockedTools": ["a"]}, disallowedTools=["c"])
    applied = policy.apply(
        _options(mcpServers=TOOLS, disallowedTools=["b", "a"]), default_model=DEFAULT
    )
    assert applied.disallowed_tools == ["b", "a", "c"]
    assert ToolCatalog.from_options(applied).names == []


def test_an_empty_sdk_config_denylist_keeps_the_clients() -> None:
    # Found by hypothesis: merged() let sdkConfig's [] replace the client's ["*"].
    applied = _policy(disallowedTools=[]).apply(
        _options(mcpServers=TOOLS, disallowedTools=["*"]), default_model=DEFAULT
    )
    assert applied.disallowed_tools == ["*"]
    assert ToolCatalog.from_options(applied).names == []


@pytest.mark.parametrize(
    ("client", "sdk", "permission", "offered"),
    [
        (None, None, ["a"], ["mcp__srv__a"]),
        (["mcp__srv"], None, None, ["mcp__srv__a", "mcp__srv__b"]),
        (["mcp__srv"], None, ["b", "c"], ["mcp__srv__b"]),
        (["*"], None, ["mcp__other"], ["mcp__other__c"]),
        (["a", "c"], ["mcp__srv__*"], None, ["mcp__srv__a"]),
        (["a", "b", "c"], ["mcp__srv"], ["b", "c"], ["mcp__srv__b"]),
        (["a"], None, ["b"], []),
        (None, ["mcp__other"], ["*"], ["mcp__other__c"]),
        ([], None, ["*"], []),
        (["*"], ["*"], ["*"], ALL),
    ],
)
def test_a_tool_must_match_every_allowlist(
    client: list[str] | None,
    sdk: list[str] | None,
    permission: list[str] | None,
    offered: list[str],
) -> None:
    policy = _policy(None if permission is None else {"allowedTools": permission}, allowedTools=sdk)
    options = _options(mcpServers=TOOLS, allowedTools=client)
    applied = policy.apply(options, default_model=DEFAULT)
    assert ToolCatalog.from_options(applied).names == offered
    assert _offered(policy, options) == offered


def test_names_the_server_does_not_list_survive_an_intersection() -> None:
    policy = _policy({"tools": ["Read", "a", "Grep"]})
    options = _options(mcpServers=TOOLS, allowedTools=["Read", "mcp__srv", "WebSearch"])
    applied = policy.apply(options, default_model=DEFAULT)
    assert applied.allowed_tools == ["mcp__srv__a", "Read"]


def test_an_allowlist_applies_to_legacy_tools() -> None:
    legacy = [{"name": "x", "inputSchema": {"type": "object"}}, {"name": "y"}]
    options = _options(tools=legacy, allowedTools=["x", "y"])
    policy = _policy({"allowedTools": ["mcp__inline-tools__y"]})
    assert ToolCatalog.from_options(policy.apply(options, default_model=DEFAULT)).names == [
        "mcp__inline-tools__y"
    ]


def test_filter_catalog_holds_where_one_list_cannot() -> None:
    # A tool whose bare name looks like another tool's full name: the one list apply composes
    # (["mcp__srv__a"]) also matches it, so only the filter keeps the token's allowlist.
    options = _options(
        mcpServers=_servers(srv=["a"], x=["mcp__srv__a"]), allowedTools=["mcp__srv", "x"]
    )
    policy = _policy({"allowedTools": ["a"]})
    applied = policy.apply(options, default_model=DEFAULT)
    assert ToolCatalog.from_options(applied).names == ["mcp__srv__a", "mcp__x__mcp__srv__a"]
    assert _offered(policy, options) == ["mcp__srv__a"]


def test_filter_catalog_keeps_the_servers() -> None:
    catalog = ToolCatalog.from_options(_options(mcpServers=TOOLS))
    filtered = _policy({"blockedTools": ["mcp__srv"]}).filter_catalog(catalog)
    assert filtered.servers == catalog.servers
    assert filtered.names == ["mcp__other__c"]
    assert filtered.resolve("c") is not None
    assert filtered.resolve("a") is None
    assert _policy({"blockedTools": ["zzz"]}).filter_catalog(catalog) is catalog


def test_tool_allowed() -> None:
    policy = _policy(
        {"allowedTools": ["mcp__srv", "Read"], "blockedTools": ["b"]}, disallowedTools=["Read"]
    )
    assert policy.tool_allowed("mcp__srv__a", "a")
    assert not policy.tool_allowed("mcp__srv__b", "b")  # blocked
    assert not policy.tool_allowed("mcp__other__c", "c")  # not in the allowlist
    assert not policy.tool_allowed("Read", "Read")  # sdkConfig's denylist
    assert Policy().tool_allowed("anything", "anything")


# -- properties --------------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "c", "Read"])
_servers_names = st.sampled_from(["s", "t", "inline-tools"])
_patterns = st.lists(
    st.sampled_from(
        ["*", "a", "b", "c", "Read", "mcp__s", "mcp__t__*", "mcp__s__a", "mcp__t__b", "x"]
    ),
    max_size=4,
)
_maybe_patterns = st.none() | _patterns
_models = st.sampled_from(["haiku", "sonnet", "opus", "HAIKU", DEFAULT])


@st.composite
def _client_options(draw: st.DrawFn) -> SessionOptions:
    servers: dict[str, list[str]] = {}
    for name in draw(st.lists(_names, unique=True, max_size=4)):
        servers.setdefault(draw(st.sampled_from(["s", "t"])), []).append(name)
    return _options(
        model=draw(st.none() | _models),
        fallbackModel=draw(st.none() | _models),
        maxTurns=draw(st.none() | st.integers(1, 20)),
        maxBudgetUsd=draw(st.none() | st.sampled_from([0.0, 1.0, 5.0, 10.0])),
        mcpServers=_servers(**servers),
        allowedTools=draw(_maybe_patterns),
        disallowedTools=draw(_maybe_patterns),
    )


@st.composite
def _policies(draw: st.DrawFn) -> Policy:
    permissions: dict[str, Any] = {}
    if draw(st.booleans()):
        permissions["model"] = draw(st.lists(_models | st.just("*"), min_size=1, max_size=3))
    if (allowed := draw(_maybe_patterns)) is not None:
        permissions["tools"] = allowed
    if draw(st.booleans()):
        permissions["blockedTools"] = draw(_patterns)
    if draw(st.booleans()):
        permissions["maxTurnsPerSession"] = draw(st.integers(0, 20))
    sdk_config: dict[str, Any] = {
        "defaultModel": draw(st.none() | _models),
        "maxTurns": draw(st.none() | st.integers(1, 20)),
        "maxBudgetUsd": draw(st.none() | st.sampled_from([1.0, 5.0])),
        "allowedTools": draw(_maybe_patterns),
        "disallowedTools": draw(_maybe_patterns),
    }
    return _policy(permissions if permissions else None, **sdk_config)


@given(_policies(), _client_options(), _models)
def test_the_model_in_force_is_sdk_configs_or_an_allowed_one(
    policy: Policy, options: SessionOptions, default: str
) -> None:
    applied = policy.apply(options, default_model=default)
    if policy.overrides.model is not None:
        assert applied.model == policy.overrides.model
    else:
        assert policy.model_allowed(applied.model or default)
        if options.model is not None and policy.model_allowed(options.model):
            assert applied.model == options.model
    if policy.overrides.fallback_model is None and applied.fallback_model is not None:
        assert policy.model_allowed(applied.fallback_model)


@given(_policies(), _client_options())
def test_caps_in_force(policy: Policy, options: SessionOptions) -> None:
    applied = policy.apply(options, default_model=DEFAULT)
    sdk = policy.overrides
    if sdk.max_turns is not None:
        assert applied.max_turns == sdk.max_turns
    elif policy.max_turns is not None:
        assert applied.max_turns is not None
        assert applied.max_turns <= policy.max_turns
        assert applied.max_turns == min(options.max_turns or policy.max_turns, policy.max_turns)
    else:
        assert applied.max_turns == options.max_turns
    budgets = [b for b in (options.max_budget_usd, sdk.max_budget_usd) if b is not None]
    assert applied.max_budget_usd == (min(budgets) if budgets else None)


@given(_policies(), _client_options())
def test_apply_is_idempotent(policy: Policy, options: SessionOptions) -> None:
    once = policy.apply(options, default_model=DEFAULT)
    assert policy.apply(once, default_model=DEFAULT) == once


@given(_policies(), _client_options())
def test_the_catalog_offers_what_the_client_and_the_token_both_allow(
    policy: Policy, options: SessionOptions
) -> None:
    everything = ToolCatalog.from_options(
        options.model_copy(update={"allowed_tools": None, "disallowed_tools": None})
    )
    client_allowed, client_denied = options.allowed_tools, options.disallowed_tools or []
    expected = [
        tool.full_name
        for tool in everything.tools
        if (client_allowed is None or _allowed(tool, client_allowed))
        and not _allowed(tool, client_denied)
        and policy.tool_allowed(tool.full_name, tool.name)
    ]
    applied = policy.apply(options, default_model=DEFAULT)
    # These names look like no pattern, so the composed lists alone are exact.
    assert ToolCatalog.from_options(applied).names == expected
    assert _offered(policy, options) == expected


@given(
    server=st.text(min_size=0, max_size=8),
    name=st.text(min_size=1, max_size=8),
    patterns=st.lists(st.text(max_size=12) | st.sampled_from(["*", "mcp__", "__*"]), max_size=4),
    same=st.booleans(),
)
def test_tool_allowed_matches_like_the_catalog(
    server: str, name: str, patterns: list[str], same: bool
) -> None:
    tool = ClientTool(server, ToolDefinition(name=name))
    if same:  # patterns built from the tool's own names
        patterns = [*patterns, tool.full_name, f"mcp__{server}", f"mcp__{server}__*", name][::2]
    allow = Policy(allowed_tools=tuple(patterns))
    block = Policy(blocked_tools=tuple(patterns))
    assert allow.tool_allowed(tool.full_name, tool.name) == _allowed(tool, patterns)
    assert block.tool_allowed(tool.full_name, tool.name) == (not _allowed(tool, patterns))
