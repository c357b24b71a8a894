"""Session options (chucky.options, docs/protocol.md section 5)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.options import (
    McpServerConfig,
    OutputFormat,
    SessionOptions,
    SystemPromptPreset,
    ToolDefinition,
)

# --- aliases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sessionId", "session_id", "resume"])
def test_session_id_aliases(key: str) -> None:
    options = SessionOptions.model_validate({key: "s1"})
    assert options.session_id == "s1"
    assert options.to_wire() == {"sessionId": "s1"}


@pytest.mark.parametrize("key", ["continue", "continueSession", "continue_session"])
def test_continue_aliases(key: str) -> None:
    options = SessionOptions.model_validate({key: True})
    assert options.continue_session is True
    assert options.to_wire() == {"continue": True}


def test_session_id_wins_over_resume() -> None:
    assert SessionOptions.model_validate({"resume": "a", "sessionId": "b"}).session_id == "b"


def test_camel_case_and_snake_case_names() -> None:
    camel = SessionOptions.model_validate(
        {"maxTurns": 3, "systemPrompt": "S", "includePartialMessages": True}
    )
    snake = SessionOptions.model_validate(
        {"max_turns": 3, "system_prompt": "S", "include_partial_messages": True}
    )
    assert (
        camel
        == snake
        == SessionOptions(max_turns=3, system_prompt="S", include_partial_messages=True)
    )


# --- to_wire ----------------------------------------------------------------------------------


def test_to_wire_is_camel_case_without_unset_fields() -> None:
    options = SessionOptions(
        model="sonnet",
        fallback_model="haiku",
        system_prompt=SystemPromptPreset(append="Be brief."),
        max_turns=3,
        max_budget_usd=1.5,
        max_thinking_tokens=2048,
        tools=["Read", "Grep"],
        allowed_tools=["*"],
        disallowed_tools=["Bash"],
        mcp_servers=[
            McpServerConfig(
                name="calc",
                version="1.0.0",
                tools=[
                    ToolDefinition(name="add", input_schema={"type": "object"}, execute_in="client")
                ],
            )
        ],
        output_format=OutputFormat(schema={"type": "object"}),
        include_partial_messages=False,
        session_id="s",
        continue_session=False,
        fork_session=True,
        resume_session_at="u",
        permission_mode="plan",
        allow_dangerously_skip_permissions=False,
        env={"A": "1"},
        agents={"reviewer": {"description": "d"}},
        betas=["b"],
        setting_sources=["project"],
        job_id="j",
        chucky_extensions=["interrupt"],
    )
    assert options.to_wire() == {
        "model": "sonnet",
        "fallbackModel": "haiku",
        "systemPrompt": {"type": "preset", "preset": "claude_code", "append": "Be brief."},
        "maxTurns": 3,
        "maxBudgetUsd": 1.5,
        "maxThinkingTokens": 2048,
        "tools": ["Read", "Grep"],
        "allowedTools": ["*"],
        "disallowedTools": ["Bash"],
        "mcpServers": [
            {
                "name": "calc",
                "version": "1.0.0",
                "tools": [
                    {
                        "name": "add",
                        "description": "",
                        "inputSchema": {"type": "object"},
                        "executeIn": "client",
                    }
                ],
            }
        ],
        "outputFormat": {"type": "json_schema", "schema": {"type": "object"}},
        "includePartialMessages": False,
        "sessionId": "s",
        "continue": False,
        "forkSession": True,
        "resumeSessionAt": "u",
        "permissionMode": "plan",
        "allowDangerouslySkipPermissions": False,
        "env": {"A": "1"},
        "agents": {"reviewer": {"description": "d"}},
        "betas": ["b"],
        "settingSources": ["project"],
        "jobId": "j",
        "chuckyExtensions": ["interrupt"],
    }


def test_options_built_in_code_refuse_what_json_cannot_carry() -> None:
    with pytest.raises(pydantic.ValidationError, match="finite"):
        SessionOptions(max_budget_usd=float("inf"))


def test_to_wire_of_nothing() -> None:
    assert SessionOptions().to_wire() == {}
    assert SessionOptions(model=None).to_wire() == {}


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.text(),
            "maxTurns": st.integers(min_value=1),
            "maxBudgetUsd": st.floats(min_value=0, allow_infinity=False),
            "systemPrompt": st.text(),
            "allowedTools": st.lists(st.text()),
            "includePartialMessages": st.booleans(),
            "sessionId": st.text(),
            "continue": st.booleans(),
            "env": st.dictionaries(st.text(), st.text()),
        },
    )
)
def test_wire_round_trip(wire: dict[str, Any]) -> None:
    options = SessionOptions.model_validate(wire)
    assert options.to_wire() == wire
    assert SessionOptions.model_validate(options.to_wire()) == options


def test_null_means_absent_and_unknown_keys_are_ignored() -> None:
    options = SessionOptions.model_validate(
        {"model": None, "tools": None, "somethingNew": 1, "maxTurns": 2}
    )
    assert options.model is None
    assert options.to_wire() == {"maxTurns": 2}


@pytest.mark.parametrize(
    "wire",
    [
        {"maxTurns": "x"},
        {"maxTurns": 0},
        {"maxBudgetUsd": -0.01},
        {"maxThinkingTokens": -1},
        {"model": 5},
        {"systemPrompt": {"type": "other"}},
        {"mcpServers": [{"tools": [{"name": ""}]}]},
        {"mcpServers": {"a": None}},
        {"outputFormat": {"type": "xml", "schema": {}}},
        {"betas": "b"},
        {"maxBudgetUsd": "inf"},
        {"maxBudgetUsd": float("inf")},
        {"maxBudgetUsd": "nan"},
        {"maxBudgetUsd": "1e999"},
    ],
)
def test_wrong_types_are_rejected(wire: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SessionOptions.model_validate(wire)


@pytest.mark.parametrize(
    "tools",
    [
        ["Read", "Write"],
        "claude_code",
        {"type": "preset", "preset": "claude_code"},
    ],
)
def test_tools_forms(tools: Any) -> None:
    options = SessionOptions.model_validate({"tools": tools})
    assert options.to_wire() == {"tools": tools}


def test_legacy_tool_objects_in_tools() -> None:
    options = SessionOptions.model_validate(
        {
            "tools": [
                "Read",
                {
                    "name": "greet",
                    "description": "Greet",
                    "inputSchema": {"type": "object", "required": None},
                    "executeIn": "client",
                },
            ]
        }
    )
    assert isinstance(options.tools, list)
    read, greet = options.tools
    assert read == "Read"
    assert isinstance(greet, ToolDefinition)
    assert greet.input_schema == {"type": "object"}
    assert greet.runs_on_client


# --- merged -----------------------------------------------------------------------------------


def test_merged_overrides_only_explicitly_set_non_none_values() -> None:
    base = SessionOptions(model="a", max_turns=2, system_prompt="S")
    overrides = SessionOptions.model_validate({"model": "b", "maxTurns": None, "somethingNew": 1})
    merged = base.merged(overrides)
    assert merged.model == "b"
    assert merged.max_turns == 2
    assert merged.system_prompt == "S"
    assert base.model == "a"  # not mutated


def test_merged_ignores_defaults_of_the_overrides() -> None:
    base = SessionOptions(model="a", include_partial_messages=True)
    assert base.merged(SessionOptions()) is base
    assert base.merged(SessionOptions(model=None)) is base


def test_merged_keeps_false_and_zero_overrides() -> None:
    base = SessionOptions(include_partial_messages=True, max_budget_usd=5)
    merged = base.merged(SessionOptions(include_partial_messages=False, max_budget_usd=0))
    assert merged.include_partial_messages is False
    assert merged.max_budget_usd == 0


def test_merged_result_serialises() -> None:
    base = SessionOptions.model_validate({"model": "a", "maxTurns": 1})
    merged = base.merged(SessionOptions.model_validate({"systemPrompt": {"type": "preset"}}))
    assert merged.to_wire() == {
        "model": "a",
        "maxTurns": 1,
        "systemPrompt": {"type": "preset", "preset": "claude_code"},
    }


# --- mcp servers ------------------------------------------------------------------------------

CALC = {
    "name": "calc",
    "version": "1.0.0",
    "tools": [{"name": "add", "description": "Add", "inputSchema": {"type": "object"}}],
}


def test_mcp_server_list_from_a_list() -> None:
    stdio = {"name": "fs", "type": "stdio", "command": "mcp-fs", "args": ["/"], "env": {"X": "1"}}
    remote = {"name": "web", "type": "http", "url": "https://x", "headers": {"A": "b"}}
    options = SessionOptions.model_validate({"mcpServers": [CALC, stdio, remote]})
    calc, fs, web = options.mcp_server_list()
    assert (calc.name, fs.name, web.name) == ("calc", "fs", "web")
    assert calc.is_client_tools
    assert not fs.is_client_tools
    assert fs.command == "mcp-fs"
    assert fs.args == ["/"]
    assert not web.is_client_tools
    assert web.url == "https://x"
    assert web.headers == {"A": "b"}


def test_mcp_server_list_from_a_name_keyed_object() -> None:
    options = SessionOptions.model_validate({"mcpServers": {"math": CALC, "plain": {"tools": []}}})
    math, plain = options.mcp_server_list()
    assert math.name == "math"  # the key wins
    assert math.version == "1.0.0"
    assert plain.name == "plain"
    assert plain.is_client_tools
    # The options themselves are untouched.
    assert isinstance(options.mcp_servers, dict)
    assert options.mcp_servers["math"].name == "calc"


def test_mcp_server_list_without_servers() -> None:
    assert SessionOptions().mcp_server_list() == []
    assert SessionOptions(mcp_servers=[]).mcp_server_list() == []


def test_mcp_server_keeps_unknown_fields() -> None:
    server = McpServerConfig.model_validate({"name": "x", "tools": [], "timeoutMs": 5})
    assert server.model_extra == {"timeoutMs": 5}


# --- tool definitions -------------------------------------------------------------------------


def test_required_null_is_stripped_recursively() -> None:
    schema = {
        "type": "object",
        "required": None,
        "properties": {
            "point": {
                "type": "object",
                "required": None,
                "properties": {"x": {"type": "number"}},
            },
            "tags": {"type": "array", "items": {"type": "object", "required": None}},
            "either": {"anyOf": [{"type": "object", "required": None}, {"type": "null"}]},
            "kept": {"type": "object", "required": ["x"]},
        },
    }
    tool = ToolDefinition.model_validate({"name": "t", "inputSchema": schema})
    assert tool.input_schema == {
        "type": "object",
        "properties": {
            "point": {"type": "object", "properties": {"x": {"type": "number"}}},
            "tags": {"type": "array", "items": {"type": "object"}},
            "either": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "kept": {"type": "object", "required": ["x"]},
        },
    }
    assert schema["required"] is None  # the input is not mutated


def test_required_null_is_stripped_inside_mcp_servers() -> None:
    options = SessionOptions.model_validate(
        {"mcpServers": [{"name": "s", "tools": [{"name": "t", "inputSchema": {"required": None}}]}]}
    )
    (server,) = options.mcp_server_list()
    assert server.tools is not None
    assert server.tools[0].input_schema == {}


@pytest.mark.parametrize("wire", [{"name": "t"}, {"name": "t", "inputSchema": None}])
def test_missing_input_schema_is_an_empty_object_schema(wire: dict[str, Any]) -> None:
    assert ToolDefinition.model_validate(wire).input_schema == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("execute_in", "on_client"),
    [("client", True), ("browser", True), (None, True), ("server", False), ("other", False)],
)
def test_runs_on_client(execute_in: str | None, on_client: bool) -> None:
    wire: dict[str, Any] = {"name": "t"}
    if execute_in is not None:
        wire["executeIn"] = execute_in
    assert ToolDefinition.model_validate(wire).runs_on_client is on_client


def test_tool_definition_keeps_unknown_fields() -> None:
    tool = ToolDefinition.model_validate({"name": "t", "annotations": {"readOnly": True}})
    assert tool.model_extra == {"annotations": {"readOnly": True}}


def test_output_format_schema_alias() -> None:
    output = OutputFormat.model_validate({"type": "json_schema", "schema": {"type": "object"}})
    assert output.schema_ == {"type": "object"}
    assert output.model_dump(by_alias=True) == {"type": "json_schema", "schema": {"type": "object"}}


# --- system prompt ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("You are terse.", "You are terse."),
        ({"type": "preset", "preset": "claude_code", "append": "Use French."}, "Use French."),
        ({"type": "preset", "preset": "claude_code"}, None),
        ({"type": "preset"}, None),
        (None, None),
    ],
)
def test_system_prompt_text(prompt: Any, text: str | None) -> None:
    assert SessionOptions.model_validate({"systemPrompt": prompt}).system_prompt_text() == text


def test_system_prompt_preset_defaults() -> None:
    options = SessionOptions.model_validate({"systemPrompt": {"type": "preset"}})
    assert options.system_prompt == SystemPromptPreset(preset="claude_code")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("any", {"type": "any"}),
        ("none", {"type": "none"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
        ({"type": "any"}, {"type": "any"}),
        ({"type": "tool", "name": "x", "extra": 1}, {"type": "tool", "name": "x"}),
        (["get_weather", "none"], [{"type": "tool", "name": "get_weather"}, {"type": "none"}]),
    ],
)
def test_tool_choice_is_normalized_to_the_anthropic_form(choice: Any, expected: Any) -> None:
    options = SessionOptions.model_validate({"toolChoice": choice})
    assert options.tool_choice == expected
    assert options.to_wire()["toolChoice"] == expected


@pytest.mark.parametrize(
    "choice",
    [{"type": "required"}, {"type": "tool"}, {"type": "tool", "name": ""}, 3, "", [], ["any", 1]],
)
def test_invalid_tool_choices_are_refused(choice: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="toolChoice"):
        SessionOptions.model_validate({"toolChoice": choice})


def test_max_thinking_tokens_reaches_the_providers_parameters() -> None:
    # It was accepted and dropped before the provider (the Anthropic provider maps it to
    # ``thinking``); the other providers ignore the parameter.
    from chucky.options import SessionOptions

    params = SessionOptions(max_thinking_tokens=2048, temperature=0.5).inference_params()
    assert params == {"temperature": 0.5, "max_thinking_tokens": 2048}
