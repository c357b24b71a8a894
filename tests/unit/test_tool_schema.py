"""Schema inference, schema clean-up and argument validation of client-side tools."""

from __future__ import annotations

import enum
import sys
from typing import Annotated, Any, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

from chucky._schema import clean_schema, fallback_error, parse_docstring_args
from chucky.errors import ValidationError
from chucky.tools import Tool, tool


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = "Paris"


class Person(BaseModel):
    name: str = Field(description="Full name")
    address: Address
    tags: list[str] = []


class TreeNode(BaseModel):
    value: int
    children: list[TreeNode] = []


def _assert_portable(schema: dict[str, Any]) -> None:
    """Valid Draft 2020-12, object-typed, no pydantic titles anywhere."""
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert "properties" in schema

    def walk(node: Any, parent_key: str | None = None) -> None:
        if isinstance(node, dict):
            if parent_key != "properties":
                assert "title" not in node, node
            for key, value in node.items():
                if key not in ("default", "enum", "examples", "const"):
                    walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)


# ------------------------------------------------------------------ signature inference


def test_primitive_types_and_required() -> None:
    @tool("prims", "d")
    def prims(s: str, i: int, f: float, b: bool, opt: str = "x") -> None: ...

    schema = prims.input_schema
    _assert_portable(schema)
    assert schema["properties"] == {
        "s": {"type": "string"},
        "i": {"type": "integer"},
        "f": {"type": "number"},
        "b": {"type": "boolean"},
        "opt": {"type": "string", "default": "x"},
    }
    assert schema["required"] == ["s", "i", "f", "b"]


def test_optional_is_rendered_as_its_type_and_not_required() -> None:
    @tool("opt", "d")
    def opt(a: Optional[int] = None, b: str | None = None, c: float | None = 2.5) -> None: ...  # noqa: UP045

    props = opt.input_schema["properties"]
    assert props["a"] == {"type": "integer"}
    assert props["b"] == {"type": "string"}
    assert props["c"] == {"type": "number", "default": 2.5}
    assert "required" not in opt.input_schema
    _assert_portable(opt.input_schema)


def test_optional_without_default_stays_required_but_accepts_null() -> None:
    @tool("o", "d")
    def o(a: int | None) -> Any:
        return a

    assert o.input_schema["properties"]["a"] == {"type": "integer"}
    assert o.input_schema["required"] == ["a"]


async def test_optional_accepts_explicit_null() -> None:
    @tool("o", "d")
    def o(a: int | None = 3) -> Any:
        return {"a": a}

    assert (await o.call({"a": None})).text == '{"a": null}'


def test_union_without_null_keeps_any_of() -> None:
    @tool("u", "d")
    def u(v: int | str | None = None) -> None: ...

    assert u.input_schema["properties"]["v"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def test_literal_becomes_typed_enum() -> None:
    @tool("lit", "d")
    def lit(
        mode: Literal["fast", "slow"],
        one: Literal["only"],
        n: Literal[1, 2, 3] = 1,
        mixed: Literal[1, "a"] = 1,
    ) -> None: ...

    props = lit.input_schema["properties"]
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert props["one"] == {"type": "string", "enum": ["only"]}
    assert props["n"] == {"type": "integer", "enum": [1, 2, 3], "default": 1}
    assert props["mixed"]["enum"] == [1, "a"]
    assert props["mixed"]["type"] == ["integer", "string"]
    _assert_portable(lit.input_schema)


def test_enum_classes_become_inline_enums() -> None:
    @tool("en", "d")
    def en(color: Color, prio: Priority = Priority.LOW) -> None: ...

    props = en.input_schema["properties"]
    assert props["color"] == {"type": "string", "enum": ["red", "green"]}
    assert props["prio"]["enum"] == [1, 2]
    assert props["prio"]["type"] == "integer"
    assert props["prio"]["default"] == 1
    assert "$defs" not in en.input_schema
    _assert_portable(en.input_schema)


async def test_enum_argument_is_coerced_to_member() -> None:
    seen: list[Any] = []

    @tool("en", "d")
    def en(color: Color) -> None:
        seen.append(color)

    await en.call({"color": "green"})
    assert seen == [Color.GREEN]


def test_lists_of_primitives_and_models() -> None:
    @tool("ls", "d")
    def ls(names: list[str], points: list[Address], anything: list = []) -> None: ...  # type: ignore[type-arg]  # noqa: B006

    props = ls.input_schema["properties"]
    assert props["names"] == {"type": "array", "items": {"type": "string"}}
    assert props["points"]["type"] == "array"
    assert props["points"]["items"]["type"] == "object"
    assert props["points"]["items"]["properties"]["street"] == {"type": "string"}
    assert props["points"]["items"]["required"] == ["street"]
    assert props["anything"]["type"] == "array"
    assert "$defs" not in ls.input_schema
    _assert_portable(ls.input_schema)


def test_nested_models_are_inlined() -> None:
    @tool("nest", "d")
    def nest(person: Person, note: Optional[Address] = None) -> None:  # noqa: UP045
        """Args:
        person: Who.
        """

    schema = nest.input_schema
    _assert_portable(schema)
    assert "$defs" not in schema
    assert "$ref" not in str(schema)
    person = schema["properties"]["person"]
    assert person["type"] == "object"
    assert person["description"] == "Who."  # the parameter's description wins over the model's
    address = person["properties"]["address"]
    assert address["properties"]["city"] == {"type": "string", "default": "Paris"}
    assert address["description"] == "A postal address."
    assert person["properties"]["name"]["description"] == "Full name"
    assert schema["properties"]["note"]["type"] == "object"


def test_recursive_models_keep_defs() -> None:
    @tool("tree", "d")
    def tree(root: TreeNode, label: str) -> None: ...

    schema = tree.input_schema
    _assert_portable(schema)
    assert schema["properties"]["root"] == {"$ref": "#/$defs/TreeNode"}
    assert set(schema["$defs"]) == {"TreeNode"}
    node = schema["$defs"]["TreeNode"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/TreeNode"}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"root": {"value": 1, "children": [{"value": 2}]}, "label": "x"})
    assert not validator.is_valid(
        {"root": {"value": 1, "children": [{"value": "x"}]}, "label": "x"}
    )


def test_dict_parameters_and_defaults() -> None:
    @tool("dicts", "d")
    def dicts(
        meta: dict[str, Any], counts: dict[str, int] | None = None, limit: int = 10
    ) -> None: ...

    props = dicts.input_schema["properties"]
    assert props["meta"]["type"] == "object"
    assert props["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["limit"] == {"type": "integer", "default": 10}
    assert dicts.input_schema["required"] == ["meta"]


def test_parameter_names_that_shadow_basemodel_attributes() -> None:
    @tool("shadow", "d")
    def shadow(json: str, schema: int, model_id: str, copy: bool = False) -> None: ...

    assert list(shadow.input_schema["properties"]) == ["json", "schema", "model_id", "copy"]


def test_annotated_field_constraints_and_description() -> None:
    @tool("ann", "d")
    def ann(n: Annotated[int, Field(ge=1, le=5, description="From Field")]) -> None:
        """Args:
        n: From the docstring.
        """

    assert ann.input_schema["properties"]["n"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 5,
        "description": "From Field",
    }


def test_unannotated_parameter_accepts_anything() -> None:
    @tool("free", "d")
    def free(value, count: int = 1):  # type: ignore[no-untyped-def]
        return value

    assert free.input_schema["properties"]["value"] == {}


def test_non_serialisable_default_is_left_out() -> None:
    marker = object()

    @tool("odd", "d")
    def odd(x: Any = marker) -> None: ...

    assert "default" not in odd.input_schema["properties"]["x"]


def test_zero_parameter_handler() -> None:
    @tool("now", "d")
    async def now() -> dict[str, Any]:
        return {}

    assert now.input_schema == {"type": "object", "properties": {}}


def test_local_types_resolve_under_future_annotations() -> None:
    class Local(BaseModel):
        q: int

    @tool("local", "d")
    def local(item: Local) -> None: ...

    assert local.input_schema["properties"]["item"]["properties"] == {"q": {"type": "integer"}}


def test_unresolvable_annotation_is_a_validation_error() -> None:
    def broken(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ValidationError, match="NoSuchType"):
        Tool("broken", "d", handler=broken)


def test_type_not_expressible_in_json_schema_is_a_validation_error() -> None:
    class Opaque:
        pass

    @tool("fine", "d")  # arbitrary types are allowed for validation ...
    def fine(x: int) -> None: ...

    with pytest.raises(ValidationError, match="input schema"):

        @tool("opaque", "d")  # ... but cannot be described to the model
        def opaque(x: Opaque) -> None: ...


# ------------------------------------------------------------------ docstrings


def test_docstring_args_become_descriptions_but_summary_does_not() -> None:
    @tool("add", "Add two numbers")
    def add(a: float, b: float, c: int = 0, d: int = 0) -> float:
        """Add numbers (this summary is not the description).

        Longer text that mentions a: not an entry.

        Args:
            a: The first number,
                which may span
                several lines.
            b (float): The second number.
            c:
                Described on the next line.
            d (int, optional): Fourth.

        Returns:
            The sum.
        """
        return a + b

    assert add.description == "Add two numbers"
    props = add.input_schema["properties"]
    assert props["a"]["description"] == "The first number, which may span several lines."
    assert props["b"]["description"] == "The second number."
    assert props["c"]["description"] == "Described on the next line."
    assert props["d"]["description"] == "Fourth."


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (None, {}),
        ("Summary only.", {}),
        ("Args:\n    x: one\n\nRaises:\n    y: not a param", {"x": "one"}),
        ("S.\n\nParameters:\n    *args: extra\n    **kw: more", {"args": "extra", "kw": "more"}),
        ("S.\n\nArgs:\n    x: a\n\n        b\nTail text.", {"x": "a b"}),
    ],
)
def test_parse_docstring_args(doc: str | None, expected: dict[str, str]) -> None:
    assert parse_docstring_args(doc) == expected


# ------------------------------------------------------------------ pydantic and raw schemas


class GreetInput(BaseModel):
    name: str
    style: Literal["formal", "casual"] = "casual"


def test_pydantic_schema_is_complete() -> None:
    @tool("greet", "Greet", schema=Person)
    async def greet(args: dict[str, Any]) -> str:
        return ""

    schema = greet.input_schema
    _assert_portable(schema)
    assert schema["required"] == ["name", "address"]
    assert schema["properties"]["name"] == {"type": "string", "description": "Full name"}
    assert schema["properties"]["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "default": [],
    }
    assert schema["properties"]["address"]["properties"]["street"] == {"type": "string"}


def test_raw_schema_is_used_as_is_with_quirks_tolerated() -> None:
    raw = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "title": "kept as given"},
            "items": {"type": "array"},
            "inner": {"type": "object", "properties": {"x": {"type": "string"}}, "required": None},
        },
        "required": None,
    }

    @tool("raw", "d", schema=raw)
    async def raw_tool(args: dict[str, Any]) -> str:
        return ""

    assert raw_tool.input_schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "title": "kept as given"},
            "items": {"type": "array"},
            "inner": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    assert raw["required"] is None  # the caller's dict is not modified
    assert (
        tool("t", "d", schema={"properties": {}})(raw_tool.function).input_schema["type"]
        == "object"
    )


def test_type_map_schema_like_the_claude_agent_sdk() -> None:
    @tool("greet", "Greet", {"name": str, "times": int})
    async def greet(args: dict[str, Any]) -> str:
        return args["name"] * args["times"]

    assert greet.input_schema == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "times": {"type": "integer"}},
        "required": ["name", "times"],
    }


def test_invalid_schema_kind_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be a pydantic model class"):
        tool("bad", "d", schema=42)(lambda: None)  # type: ignore[arg-type]


def test_clean_schema_handles_old_style_all_of_refs() -> None:
    old = {
        "$defs": {"A": {"title": "A", "type": "object", "properties": {"x": {"type": "integer"}}}},
        "type": "object",
        "title": "M",
        "properties": {
            "a": {"allOf": [{"$ref": "#/$defs/A"}], "description": "an A"},
            "title": {"type": "string", "title": "Title"},  # a property *named* title survives
        },
    }
    assert clean_schema(old) == {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "description": "an A",
            },
            "title": {"type": "string"},
        },
    }


# ------------------------------------------------------------------ validation errors


async def test_signature_validation_names_the_field() -> None:
    @tool("add", "Add")
    def add(a: float, b: float) -> float:
        return a + b

    with pytest.raises(
        ValidationError,
        match=r"Invalid arguments for tool 'add': b: Input should be a valid number",
    ):
        await add.call({"a": 1, "b": "x"})
    with pytest.raises(ValidationError, match=r"missing required argument 'b'") as info:
        await add.call({"a": 1})
    assert info.value.code == "VALIDATION_ERROR"
    assert info.value.details["errors"][0]["loc"] == ["b"]
    assert (await add.call({"a": "1", "b": 2})).text == "3.0"  # lax mode coerces


async def test_nested_validation_error_path() -> None:
    @tool("nest", "d")
    def nest(people: list[Person]) -> None: ...

    with pytest.raises(ValidationError, match=r"missing required argument 'people\[1\]\.address'"):
        await nest.call({"people": [{"name": "a", "address": {"street": "s"}}, {"name": "b"}]})


async def test_non_object_arguments_are_rejected() -> None:
    @tool("t", "d")
    def t(a: int) -> None: ...

    with pytest.raises(ValidationError, match="expected an object, got array"):
        await t.call([1, 2])  # type: ignore[arg-type]


async def test_pydantic_schema_validation_names_the_field() -> None:
    @tool("greet", "Greet", schema=GreetInput)
    async def greet(args: dict[str, Any]) -> str:
        return args["name"]

    with pytest.raises(ValidationError, match=r"style: Input should be 'formal' or 'casual'"):
        await greet.call({"name": "x", "style": "rude"})


RAW = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": ["integer", "null"]},
        "mode": {"enum": ["a", "b"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "integer"}},
                "required": ["id"],
            },
        },
        "loose": {"type": "array"},
    },
    "required": ["name"],
}

INVALID_RAW_CASES = [
    ({}, r"missing required argument 'name'"),
    ({"name": 3}, r"name: "),
    ({"name": "x", "count": "many"}, r"count: "),
    ({"name": "x", "mode": "c"}, r"mode: "),
    ({"name": "x", "items": [{"id": 1}, {"id": "two"}]}, r"items\[1\]\.id: "),
    ({"name": "x", "items": [{}]}, r"missing required argument 'items\[0\]\.id'"),
]


@pytest.fixture(params=["jsonschema", "fallback"])
def validator_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        # ``import jsonschema`` raises ImportError while the entry is None.
        monkeypatch.setitem(sys.modules, "jsonschema", None)
    return str(request.param)


def _raw_tool() -> Tool:
    @tool("raw", "d", schema=RAW)
    async def raw(args: dict[str, Any]) -> Any:
        return args

    return raw


@pytest.mark.parametrize(("arguments", "message"), INVALID_RAW_CASES)
async def test_raw_schema_validation(
    validator_path: str, arguments: dict[str, Any], message: str
) -> None:
    raw = _raw_tool()
    with pytest.raises(ValidationError, match=r"Invalid arguments for tool 'raw': " + message):
        await raw.call(arguments)


async def test_raw_schema_accepts_valid_arguments(validator_path: str) -> None:
    raw = _raw_tool()
    arguments = {"name": "x", "count": None, "mode": "a", "items": [{"id": 1}], "loose": [1, "a"]}
    assert (await raw.call(arguments)).text.startswith('{"name": "x"')


async def test_fallback_is_really_used_without_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    raw = _raw_tool()
    with pytest.raises(ValidationError, match=r"name: expected string, got integer"):
        await raw.call({"name": 3})


async def test_invalid_raw_schema_falls_back_to_lenient_checks() -> None:
    @tool(
        "odd",
        "d",
        schema={"type": "object", "properties": {"x": {"type": "strnig"}}, "required": ["x"]},
    )
    async def odd(args: dict[str, Any]) -> Any:
        return args

    assert (await odd.call({"x": 1})).text == '{"x": 1}'
    with pytest.raises(ValidationError, match="missing required argument 'x'"):
        await odd.call({})


@pytest.mark.parametrize(
    ("schema", "instance", "error"),
    [
        ({"type": "integer"}, True, ("", "expected integer, got boolean")),
        ({"type": "integer"}, 2.0, None),
        ({"type": "number"}, 2, None),
        ({"type": ["string", "null"]}, None, None),
        ({"type": "boolean"}, 0, ("", "expected boolean, got integer")),
        ({"enum": [1, 2]}, 3, ("", "3 is not one of [1, 2]")),
        ({"type": "array"}, [1, "x"], None),
        ({"type": "unknown-type"}, 1, None),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"a": None},
            ("a", "expected string, got null"),
        ),
    ],
)
def test_fallback_error(
    schema: dict[str, Any], instance: Any, error: tuple[str, str] | None
) -> None:
    assert fallback_error(schema, instance) == error
