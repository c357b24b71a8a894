"""Client option resolution: defaults, per-call overrides, tools, and the wire payload."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from chucky import ValidationError, create_mcp_server, tool
from chucky.client.settings import check_args, resolve


@tool("t1", "First")
def t1() -> str:
    return "1"


@tool("t2", "Second")
def t2() -> str:
    return "2"


def test_per_call_values_override_defaults_and_none_means_unset() -> None:
    spec = resolve(
        {"model": "sonnet", "max_turns": 3, "system_prompt": "a"},
        {"model": "opus", "system_prompt": None},
    )
    wire = spec.options.to_wire()
    assert wire["model"] == "opus"
    assert wire["maxTurns"] == 3
    assert wire["systemPrompt"] == "a"
    assert wire["chuckyExtensions"] == ["interrupt", "tool_cancel"]


def test_tools_and_servers_become_client_tool_servers() -> None:
    spec = resolve(
        {"tools": [t1]},
        {"mcp_servers": {"extra": create_mcp_server("ignored-name", [t2])}},
    )
    servers = spec.options.to_wire()["mcpServers"]
    assert {s["name"] for s in servers} == {"inline-tools", "extra"}
    assert spec.registry.get("t2") is t2
    assert spec.registry.get("mcp__inline-tools__t1") is t1


def test_per_call_tools_replace_default_tools() -> None:
    spec = resolve({"tools": [t1]}, {"tools": [t2]})
    assert spec.registry.names == ["t2"]


def test_resume_alias_and_output_format_forms() -> None:
    class Answer(BaseModel):
        value: int

    spec = resolve({}, {"resume": "s-1", "output_format": Answer})
    wire = spec.options.to_wire()
    assert wire["sessionId"] == "s-1"
    assert wire["outputFormat"]["type"] == "json_schema"
    assert wire["outputFormat"]["schema"]["properties"]["value"]["type"] == "integer"


def test_bad_option_types_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="max_turns"):
        resolve({}, {"max_turns": "many"})
    with pytest.raises(ValidationError):
        resolve({}, {"tools": [t1, t1]})


def test_unknown_keywords_are_type_errors() -> None:
    with pytest.raises(TypeError, match="colour"):
        check_args({"colour": "red"}, "prompt")
    check_args({"model": "x", "continue_session": True}, "prompt")
