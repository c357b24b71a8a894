"""The public tool API: results, tools, handler calling conventions, servers and the registry."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from chucky.errors import ValidationError
from chucky.tools import (
    McpSdkServerConfig,
    McpServer,
    Tool,
    ToolRegistry,
    ToolResult,
    create_mcp_server,
    create_sdk_mcp_server,
    error_result,
    image_result,
    text_result,
    tool,
)

# ------------------------------------------------------------------ ToolResult


def test_result_helpers() -> None:
    assert text_result("hi").to_wire() == {
        "content": [{"type": "text", "text": "hi"}],
        "isError": False,
    }
    assert error_result("bad").to_wire() == {
        "content": [{"type": "text", "text": "bad"}],
        "isError": True,
    }
    image = image_result(b"\x89PNG", "image/png")
    assert image.content == [
        {"type": "image", "data": base64.b64encode(b"\x89PNG").decode(), "mimeType": "image/png"}
    ]
    assert image_result("QUJD", "image/jpeg").content[0] == {
        "type": "image",
        "data": "QUJD",
        "mimeType": "image/jpeg",
    }
    assert image.text == ""


def test_result_text_joins_text_items() -> None:
    result = ToolResult(
        content=[
            {"type": "text", "text": "a"},
            {"type": "image", "data": "x", "mimeType": "image/png"},
            {"type": "text", "text": "b"},
        ]
    )
    assert result.text == "a\nb"


def test_result_positional_form_of_the_official_dataclass() -> None:
    assert ToolResult([ITEM], True).to_wire() == {"content": [ITEM], "isError": True}
    assert ToolResult([ITEM]).is_error is False
    assert ToolResult().content == []
    assert ToolResult(content=[ITEM], isError=True).is_error


def test_result_accepts_the_wire_spelling() -> None:
    wire = {"content": [{"type": "text", "text": "x"}], "isError": True}
    result = ToolResult.model_validate(wire)
    assert result.is_error is True
    assert result.to_wire() == wire
    assert ToolResult(content=[], is_error=True).is_error


@dataclasses.dataclass
class OfficialToolResult:
    """Shaped like chucky-sdk 0.2.0's ``ToolResult`` dataclass."""

    content: list[dict[str, Any]]
    is_error: bool = False


class Point(BaseModel):
    x: int
    y: int


class Unserialisable:
    def __str__(self) -> str:
        return "<unserialisable>"


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _circular() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


ITEM = {"type": "text", "text": "t"}


@pytest.mark.parametrize(
    ("value", "content", "is_error"),
    [
        (text_result("same"), [{"type": "text", "text": "same"}], False),
        ({"content": [ITEM]}, [ITEM], False),
        ({"content": [ITEM], "isError": True}, [ITEM], True),
        ({"content": [ITEM], "is_error": True}, [ITEM], True),
        ({"content": "plain"}, [{"type": "text", "text": "plain"}], False),
        (OfficialToolResult([ITEM], is_error=True), [ITEM], True),
        ("hello", [{"type": "text", "text": "hello"}], False),
        (None, [{"type": "text", "text": ""}], False),
        (
            [ITEM, {"type": "image", "data": "QQ==", "mimeType": "image/png"}],
            [ITEM, {"type": "image", "data": "QQ==", "mimeType": "image/png"}],
            False,
        ),
        ({"sum": 3}, [{"type": "text", "text": '{"sum": 3}'}], False),
        (
            {"content": "x", "author": "y"},
            [{"type": "text", "text": '{"content": "x", "author": "y"}'}],
            False,
        ),
        ([1, 2], [{"type": "text", "text": "[1, 2]"}], False),
        ([], [{"type": "text", "text": "[]"}], False),
        (42, [{"type": "text", "text": "42"}], False),
        (True, [{"type": "text", "text": "true"}], False),
        ("é", [{"type": "text", "text": "é"}], False),
        (b"bytes", [{"type": "text", "text": "bytes"}], False),
        (Point(x=1, y=2), [{"type": "text", "text": '{"x":1,"y":2}'}], False),
        (Unserialisable(), [{"type": "text", "text": "<unserialisable>"}], False),
        ({1, 2}, [{"type": "text", "text": "{1, 2}"}], False),
        (_circular(), [{"type": "text", "text": "[[...]]"}], False),
    ],
)
def test_from_value(value: Any, content: list[dict[str, Any]], is_error: bool) -> None:
    result = ToolResult.from_value(value)
    assert result.content == content
    assert result.is_error is is_error


def test_from_value_survives_a_hostile_str() -> None:
    result = ToolResult.from_value(Hostile())
    assert result.content[0]["type"] == "text"
    assert "Hostile" in result.content[0]["text"]


class ExplodingFlag:
    content: ClassVar[list[dict[str, str]]] = [ITEM]

    @property
    def is_error(self) -> Any:
        class Bad:
            def __bool__(self) -> bool:
                raise RuntimeError("no truth")

        return Bad()

    def __str__(self) -> str:
        return "exploding"


def test_from_value_survives_an_object_that_fails_midway() -> None:
    assert ToolResult.from_value(ExplodingFlag()).content == [{"type": "text", "text": "exploding"}]


def test_reprs() -> None:
    assert repr(_tool("a")) == "Tool(name='a', execute_in='client')"
    assert repr(ToolRegistry.build([_tool("a")], None)) == "ToolRegistry(names=['a'])"


def test_from_value_copies_mcp_items() -> None:
    item = {"type": "text", "text": "x"}
    result = ToolResult.from_value({"content": [item]})
    result.content[0]["text"] = "changed"
    assert item["text"] == "x"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)
content_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "resource"])}, optional={"text": st.text()}
)
handler_returns = (
    json_values
    | st.lists(content_items, max_size=3)
    | st.fixed_dictionaries(
        {"content": st.lists(content_items, max_size=3) | st.text() | json_values},
        optional={"isError": st.booleans() | json_values, "is_error": st.booleans()},
    )
    | st.builds(
        OfficialToolResult, st.lists(content_items, max_size=3) | json_values, st.booleans()
    )  # type: ignore[arg-type]
    | st.builds(object)
    | st.binary()
    | st.sets(st.integers(), max_size=3)
)


@given(handler_returns)
def test_from_value_never_raises_and_yields_dict_items(value: Any) -> None:
    result = ToolResult.from_value(value)
    assert isinstance(result, ToolResult)
    assert isinstance(result.content, list)
    assert all(
        isinstance(item, dict) and isinstance(item.get("type"), str) for item in result.content
    )
    json.dumps(result.to_wire())  # always sendable


# ------------------------------------------------------------------ Tool


def test_decorated_function_stays_callable() -> None:
    @tool("add", "Add two numbers")
    def add(a: float, b: float) -> float:
        """Adds."""
        return a + b

    assert isinstance(add, Tool)
    assert add(1, 2) == 3
    assert add.function(a=2, b=3) == 5
    assert add.handler is add.function
    assert add.name == "add"
    assert add.description == "Add two numbers"
    assert add.execute_in == "client"
    assert add.__doc__ == "Adds."
    assert add.__wrapped__ is add.function


async def test_decorated_async_function_stays_callable() -> None:
    @tool("greet", "Greet")
    async def greet(name: str) -> str:
        return f"Hello, {name}!"

    assert await greet("Ada") == "Hello, Ada!"


def test_to_definition_is_the_wire_form() -> None:
    @tool("add", "Add two numbers")
    async def add(a: float, b: float) -> str:
        return str(a + b)

    definition = add.to_definition()
    assert definition == {
        "name": "add",
        "description": "Add two numbers",
        "inputSchema": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
        "executeIn": "client",
    }
    definition["inputSchema"]["properties"].clear()
    assert add.input_schema["properties"]  # a copy


def test_tool_constructor_in_the_official_positional_order() -> None:
    def handler(args: dict[str, Any]) -> str:
        return str(args)

    made = Tool(
        "echo",
        "Echo",
        {"type": "object", "properties": {"x": {"type": "string"}}},
        handler,
        "client",
    )
    assert made.input_schema["properties"] == {"x": {"type": "string"}}
    with pytest.raises(ValidationError, match="callable handler"):
        Tool("x", "d")
    with pytest.raises(ValidationError, match="non-empty string"):
        Tool("", "d", handler=handler)


async def test_keyword_handler_gets_coerced_values() -> None:
    seen: dict[str, Any] = {}

    @tool("kw", "d")
    async def kw(a: int, b: list[int], c: str = "dflt") -> str:
        seen.update(a=a, b=b, c=c)
        return "ok"

    result = await kw.call({"a": "1", "b": ["2", 3], "extra": "ignored"})
    assert result.text == "ok"
    assert seen == {"a": 1, "b": [2, 3], "c": "dflt"}


@pytest.mark.parametrize("annotation", ["dict", "dict[str, Any]", "Mapping[str, Any]", "none"])
async def test_dict_taking_handler_gets_the_whole_dict(annotation: str) -> None:
    namespace: dict[str, Any] = {"Any": Any, "Mapping": Mapping}
    if annotation == "none":
        exec("async def handler(args):\n    return args", namespace)
    else:
        exec(f"async def handler(payload: {annotation}):\n    return payload", namespace)
    made = tool("t", "d")(namespace["handler"])
    assert made.input_schema == {"type": "object", "properties": {}}
    assert (await made.call({"x": 1, "y": [2]})).text == '{"x": 1, "y": [2]}'


@pytest.mark.parametrize("name", ["args", "input", "arguments", "data", "params", "kwargs"])
async def test_unannotated_conventional_names_get_the_dict(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def handler({name}):\n    return {name}", namespace)
    made = tool("t", "d", schema={"type": "object", "properties": {"q": {"type": "string"}}})(
        namespace["handler"]
    )
    assert (await made.call({"q": "v"})).text == '{"q": "v"}'


class GreetInput(BaseModel):
    name: str
    times: int = 1


async def test_pydantic_schema_with_model_instance_handler() -> None:
    @tool("greet", "Greet", schema=GreetInput)
    async def greet(data: GreetInput) -> str:
        assert isinstance(data, GreetInput)
        return data.name * data.times

    assert (await greet.call({"name": "ab", "times": "2"})).text == "abab"


async def test_pydantic_schema_with_dict_handler_gets_validated_dict() -> None:
    @tool("greet", "Greet", schema=GreetInput)
    async def greet(args: dict[str, Any]) -> Any:
        return args

    assert (await greet.call({"name": "x", "times": "3"})).text == '{"name": "x", "times": 3}'


async def test_pydantic_schema_with_keyword_handler_gets_fields() -> None:
    @tool("greet", "Greet", schema=GreetInput)
    def greet(name: str, times: int) -> str:
        return f"{name}:{times}"

    assert (await greet.call({"name": "x"})).text == "x:1"


async def test_official_style_handler_with_any_param_name_gets_the_dict() -> None:
    # chucky-sdk 0.2.0 always passed the dict to a directly constructed Tool's handler.
    made = Tool(
        "echo",
        "Echo",
        {"type": "object", "properties": {"text": {"type": "string"}}},
        lambda req: req["text"],
    )
    assert (await made.call({"text": "hi"})).text == "hi"


async def test_zero_parameter_handler_is_called_without_arguments() -> None:
    @tool("get_time", "Current time")
    async def get_time() -> dict[str, Any]:
        return {"content": [{"type": "text", "text": "noon"}]}

    assert (await get_time.call({})).text == "noon"
    assert (await get_time.call({"unexpected": 1})).text == "noon"


async def test_var_keyword_handler_receives_extras() -> None:
    @tool("kw", "d")
    def kw(a: int, **rest: Any) -> Any:
        return {"a": a, **rest}

    assert kw.input_schema["additionalProperties"] is True
    assert (await kw.call({"a": "1", "b": 2})).text == '{"a": 1, "b": 2}'


async def test_positional_only_parameters() -> None:
    @tool("pos", "d")
    def pos(a: int, b: int = 5, /, *, c: int = 0) -> str:
        return f"{a} {b} {c}"

    assert (await pos.call({"a": 1, "c": 3})).text == "1 5 3"
    assert (await pos.call({"a": 1, "b": 2})).text == "1 2 0"


async def test_sync_handler_runs_in_another_thread() -> None:
    loop_thread = threading.get_ident()

    @tool("where", "d")
    def where() -> str:
        return "worker" if threading.get_ident() != loop_thread else "loop"

    assert (await where.call({})).text == "worker"


async def test_async_handler_runs_on_the_loop() -> None:
    loop_thread = threading.get_ident()

    @tool("where", "d")
    async def where() -> bool:
        return threading.get_ident() == loop_thread

    assert (await where.call({})).text == "true"


async def test_sync_callable_returning_a_coroutine_is_awaited() -> None:
    async def inner(args: dict[str, Any]) -> str:
        return "awaited"

    made = Tool("wrapped", "d", None, lambda args: inner(args))
    assert (await made.call({})).text == "awaited"


async def test_callable_object_with_async_call() -> None:
    class Handler:
        async def __call__(self, city: str) -> str:
            return f"sunny in {city}"

    made = Tool("weather", "d", None, Handler())
    assert made.input_schema["required"] == ["city"]
    assert (await made.call({"city": "Oslo"})).text == "sunny in Oslo"


async def test_handler_exception_propagates_from_call() -> None:
    @tool("boom", "d")
    async def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await boom.call({})


# ------------------------------------------------------------------ servers


def _tool(name: str) -> Tool:
    async def handler(args: dict[str, Any]) -> str:
        return name

    return Tool(name, f"the {name} tool", None, handler)


def test_create_mcp_server_to_wire() -> None:
    server = create_mcp_server("calc", [_tool("add")], version="2.0.0")
    assert isinstance(server, McpServer)
    assert server.to_wire() == {
        "name": "calc",
        "version": "2.0.0",
        "tools": [_tool("add").to_definition()],
    }


def test_create_sdk_mcp_server_is_usable_like_a_server() -> None:
    config = create_sdk_mcp_server("calc", "2.0.0", [_tool("add"), _tool("mul")])
    assert isinstance(config, McpSdkServerConfig)
    assert config.type == "sdk"
    assert config.name == "calc"
    assert config.version == "2.0.0"
    assert [t.name for t in config.tools] == ["add", "mul"]
    assert config.to_wire()["tools"][1]["name"] == "mul"
    assert McpSdkServerConfig().tools == []


# ------------------------------------------------------------------ registry


def test_registry_inline_tools_and_name_allowlist_strings() -> None:
    registry = ToolRegistry.build([_tool("a"), "Read", _tool("b"), "mcp__x__y"], None)
    assert registry.names == ["a", "b"]
    assert len(registry) == 2
    assert bool(registry)
    assert registry.wire_servers() == [
        {
            "name": "inline-tools",
            "version": "1.0.0",
            "tools": [_tool("a").to_definition(), _tool("b").to_definition()],
        }
    ]
    assert registry.get("mcp__inline-tools__a") is registry.get("a")


def test_empty_registry() -> None:
    registry = ToolRegistry.build(None, None)
    assert not registry
    assert len(registry) == 0
    assert registry.wire_servers() == []
    assert registry.get("x") is None


def test_registry_dict_key_wins_over_server_name() -> None:
    calc = create_sdk_mcp_server("calculator", tools=[_tool("add")])
    registry = ToolRegistry.build(None, {"calc": calc})
    assert registry.wire_servers()[0]["name"] == "calc"
    assert registry.get("mcp__calc__add") is registry.get("add")
    assert registry.get("mcp__calculator__add") is None
    assert "add" in registry
    assert "mcp__calc__nope" not in registry


def test_registry_list_of_servers_and_passthrough_configs() -> None:
    stdio = {"name": "files", "command": "mcp-files", "args": ["--root", "/"]}
    http = {"type": "http", "url": "https://example.invalid/mcp"}
    registry = ToolRegistry.build(
        [_tool("inline")],
        [
            create_mcp_server("one", [_tool("a")]),
            create_sdk_mcp_server("two", tools=[_tool("b")]),
            stdio,
        ],
    )
    wire = registry.wire_servers()
    assert [s["name"] for s in wire] == ["one", "two", "files", "inline-tools"]
    assert wire[2] == stdio
    assert registry.names == ["a", "b", "inline"]
    keyed = ToolRegistry.build(None, {"remote": http})
    assert keyed.wire_servers() == [{**http, "name": "remote"}]
    assert not keyed  # pass-through servers contribute no handlers
    assert "name" not in http


def test_registry_server_names_with_double_underscores() -> None:
    registry = ToolRegistry.build(None, {"my__srv": create_mcp_server("x", [_tool("do__it")])})
    assert registry.get("mcp__my__srv__do__it") is registry.get("do__it")


def test_duplicate_between_inline_and_server_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"'add'.*'calc'.*'inline-tools'"):
        ToolRegistry.build([_tool("add")], {"calc": create_mcp_server("calc", [_tool("add")])})


def test_duplicate_between_two_servers_is_an_error() -> None:
    with pytest.raises(
        ValidationError, match=r"Duplicate client tool name 'x' in servers 'one' and 'two'"
    ):
        ToolRegistry.build(
            None, [create_mcp_server("one", [_tool("x")]), create_mcp_server("two", [_tool("x")])]
        )


def test_duplicate_inside_one_server_is_an_error() -> None:
    with pytest.raises(ValidationError, match="Duplicate client tool name 'x'"):
        ToolRegistry.build([_tool("x"), _tool("x")], None)


def test_duplicate_server_names_are_an_error() -> None:
    with pytest.raises(ValidationError, match="Duplicate MCP server name 'one'"):
        ToolRegistry.build(
            None, [create_mcp_server("one", [_tool("a")]), {"name": "one", "command": "x"}]
        )


def test_registry_rejects_what_is_not_a_tool_or_server() -> None:
    with pytest.raises(ValidationError, match="not a Tool"):
        ToolRegistry.build(None, [McpServer("s", [lambda: None])])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="An MCP server must be"):
        ToolRegistry.build(None, [42])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="not a Tool"):
        ToolRegistry.build([42], None)  # type: ignore[list-item]


def test_registry_accepts_a_dict_server_holding_tool_objects() -> None:
    registry = ToolRegistry.build(None, {"mine": {"tools": [_tool("a")]}})
    assert registry.wire_servers() == [
        {"name": "mine", "version": "1.0.0", "tools": [_tool("a").to_definition()]}
    ]
