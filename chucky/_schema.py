"""Input schemas of client-side tools: inference, clean-up and argument validation.

Private helpers behind :mod:`chucky.tools`. A schema comes from the handler's signature
(annotations, defaults, the Google-style ``Args:`` docstring section, via
:func:`pydantic.create_model`), a pydantic model class, a ``{"name": type}`` map (the Claude Agent
SDK's form) or a raw JSON Schema dict. The first three validate with pydantic; raw dicts with
``jsonschema`` when it is installed (a server dependency only), else with :func:`fallback_error`.

Pydantic's schemas are rewritten by :func:`clean_schema` into the portable subset model providers
handle well. :class:`ArgumentBinder` decides once, at definition time, how the handler takes its
arguments (:class:`CallStyle`) and does the validate-then-shape work on every call.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from pydantic.json_schema import PydanticJsonSchemaWarning

from chucky.errors import ValidationError

__all__ = ["ArgumentBinder", "CallStyle", "clean_schema", "fallback_error", "parse_docstring_args"]

# A lone un-annotated parameter with one of these names receives the whole argument dict (the
# official client's examples write ``async def greet(args: dict)``).
MAPPING_PARAM_NAMES: Final = frozenset({"args", "input", "arguments", "data", "params", "kwargs"})
_EMPTY: Final = inspect.Parameter.empty
_POSITIONAL_ONLY: Final = inspect.Parameter.POSITIONAL_ONLY


class CallStyle(enum.Enum):
    """How validated arguments are handed to a tool handler."""

    NONE = "none"  # handler()
    MAPPING = "mapping"  # handler(arguments_dict)
    MODEL = "model"  # handler(model_instance)
    KEYWORDS = "keywords"  # handler(**arguments)


@dataclass(frozen=True, slots=True)
class Param:
    """One handler parameter (neither ``*args`` nor ``**kwargs``), annotation resolved."""

    name: str
    annotation: Any = Any
    default: Any = _EMPTY
    kind: inspect._ParameterKind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    description: str | None = None


# ------------------------------------------------------------------ signatures and docstrings

_ARGS_SECTION: Final = re.compile(
    r"(args|arguments|parameters|params|keyword args|keyword arguments|other parameters)\s*:",
    re.IGNORECASE,
)
_SECTION: Final = re.compile(r"[A-Z][A-Za-z ]*:")
_ENTRY: Final = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)")


def parse_docstring_args(doc: str | None) -> dict[str, str]:
    """Parameter descriptions from the Google-style ``Args:`` section of ``doc``.

    Entries are ``name: text`` or ``name (type): text``; lines indented deeper than the entry
    continue it and are joined with single spaces.
    """
    result: dict[str, str] = {}
    in_section, entry_indent, current = False, -1, ""
    for line in inspect.cleandoc(doc or "").splitlines():
        text, indent = line.strip(), len(line) - len(line.lstrip())
        if _ARGS_SECTION.fullmatch(text):
            in_section, entry_indent, current = True, -1, ""
        elif not in_section or not text:
            continue
        elif indent == 0 and (_SECTION.fullmatch(text) or entry_indent > 0):
            in_section = False  # the next section, or back at the summary's level
        elif entry_indent < 0 or indent <= entry_indent:
            match = _ENTRY.fullmatch(text)
            entry_indent, current = indent, match.group(1) if match else ""
            if match:
                result[current] = match.group(2).strip()
        elif current:
            result[current] = f"{result[current]} {text}".strip()
    return {name: text for name, text in result.items() if text}


def handler_params(
    func: Callable[..., Any], namespace: Mapping[str, Any] | None
) -> tuple[list[Param], bool]:
    """The parameters of ``func`` and whether it takes ``**kwargs``.

    Raises:
        ValidationError: a string annotation names something that cannot be found.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some C callables have no signature: pass them the dict
        return [Param("args")], False
    target = inspect.unwrap(func)
    if not inspect.isfunction(target) and not inspect.ismethod(target):
        target = getattr(target, "__call__", target)  # noqa: B004 - callable objects
    try:
        hints = typing.get_type_hints(target, localns=dict(namespace or {}), include_extras=True)
    except NameError as exc:
        raise ValidationError(
            f"Cannot resolve the annotations of tool handler "
            f"{getattr(func, '__qualname__', func)!r}: {exc}"
        ) from exc
    except Exception:  # partials and other exotic callables: use the raw annotations
        hints = {}
    docs = parse_docstring_args(inspect.getdoc(func))
    fixed: list[Param] = []
    var_keyword = False
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            annotation = hints.get(p.name, p.annotation)
            annotation = Any if annotation is _EMPTY else annotation
            fixed.append(Param(p.name, annotation, p.default, p.kind, docs.get(p.name)))
    return fixed, var_keyword


def _strip_annotated(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def call_style(
    fixed: list[Param],
    var_keyword: bool,
    *,
    model: type[BaseModel] | None = None,
    properties: Iterable[str] | None = None,
) -> CallStyle:
    """How a handler with these parameters takes its arguments.

    A lone parameter receives the model instance when annotated with (a base of) the ``schema=``
    model, and the dict when annotated ``dict``/``Mapping``, or un-annotated and named like
    ``args``, or (with an explicit schema) named after none of the schema's ``properties`` —
    the official client always passed the dict.
    """
    if not fixed:
        return CallStyle.KEYWORDS if var_keyword else CallStyle.NONE
    if len(fixed) > 1 or var_keyword:
        return CallStyle.KEYWORDS
    only, annotation = fixed[0], _strip_annotated(fixed[0].annotation)
    origin = typing.get_origin(annotation) or annotation
    is_model = inspect.isclass(annotation) and issubclass(annotation, BaseModel)
    if model is not None and is_model and issubclass(model, annotation):
        return CallStyle.MODEL
    if inspect.isclass(origin) and issubclass(origin, Mapping):
        return CallStyle.MAPPING
    if annotation is Any and only.name in MAPPING_PARAM_NAMES:
        return CallStyle.MAPPING
    if annotation is Any and properties is not None and only.name not in set(properties):
        return CallStyle.MAPPING
    return CallStyle.KEYWORDS


def is_type_map(schema: Mapping[str, Any]) -> bool:
    """Whether ``schema`` is a ``{"name": python_type}`` map rather than a JSON Schema."""
    return bool(schema) and all(
        isinstance(v, type) or typing.get_origin(v) is not None or v is Any for v in schema.values()
    )


# ------------------------------------------------------------------ pydantic models and schemas


def model_from_params(
    tool_name: str, params: list[Param], *, extra: bool = False
) -> tuple[type[BaseModel], dict[str, str]]:
    """A pydantic model validating ``params``, and the map ``{param_name: field_name}``.

    Fields get neutral names (``p0``, ``p1`` ...) aliased to the parameter names, so parameters
    called ``json``, ``schema`` or ``model_id`` neither shadow ``BaseModel`` attributes nor trip
    pydantic's protected namespaces.
    """
    fields: dict[str, Any] = {}
    for index, param in enumerate(params):
        extra_info: dict[str, Any] = {}
        if param.description and not (
            _strip_annotated(param.annotation) is not param.annotation
            and any(
                isinstance(m, FieldInfo) and m.description for m in param.annotation.__metadata__
            )
        ):  # an explicit Annotated[..., Field(description=...)] wins over the docstring
            extra_info["description"] = param.description
        default = ... if param.default is _EMPTY else param.default
        info = Field(default, alias=param.name, **extra_info)
        fields[f"p{index}"] = (param.annotation, info)
    config = ConfigDict(arbitrary_types_allowed=True, extra="allow" if extra else "ignore")
    try:
        model = pydantic.create_model(f"{tool_name}_arguments", __config__=config, **fields)
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ValidationError(
            f"Cannot build the input schema of tool {tool_name!r}: {exc}"
        ) from exc
    return model, {param.name: f"p{index}" for index, param in enumerate(params)}


def model_schema(model: type[BaseModel], tool_name: str) -> dict[str, Any]:
    """The cleaned object schema of ``model`` (see :func:`clean_schema`)."""
    try:
        with warnings.catch_warnings():  # a non-serialisable default is just left out
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            raw = model.model_json_schema(by_alias=True)
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError) as exc:
        raise ValidationError(
            f"Cannot build the input schema of tool {tool_name!r}: {exc}"
        ) from exc
    schema = {"type": "object", **clean_schema(raw)}
    schema.setdefault("properties", {})
    return schema


_SUBSCHEMA_MAPS: Final = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SUBSCHEMA_LISTS: Final = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUBSCHEMAS: Final = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"}
)
_DROPPED: Final = frozenset({"title", "discriminator", "$defs"})
_NULL: Final = {"type": "null"}


def clean_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite a pydantic-generated JSON Schema into a portable one.

    * ``title`` (and OpenAPI's ``discriminator``) removed everywhere;
    * every ``$ref`` into ``$defs`` inlined, except references that recurse (a model containing
      itself): those stay ``$ref`` and only their models are kept in ``$defs``;
    * ``anyOf: [X, {"type": "null"}]`` (``Optional[X]``, ``X | None``) rendered as ``X``, a
      ``null`` default dropped with it. Optionality is expressed by absence from ``required``,
      which every provider understands, while ``anyOf`` with ``null`` is handled poorly by
      several; validation (pydantic) still accepts an explicit ``null``;
    * ``const`` (``Literal["x"]``) becomes a one-value ``enum``; an ``enum`` without ``type``
      gets one inferred from its values.
    """
    defs: Mapping[str, Any] = schema.get("$defs") or {}
    graph = {name: _refs(body) for name, body in defs.items()}
    recursive = frozenset(name for name in defs if name in _reachable(graph, name))
    result: dict[str, Any] = _clean(schema, defs, recursive)
    if recursive:
        result["$defs"] = {name: _clean(defs[name], defs, recursive) for name in sorted(recursive)}
    return result


def _refs(node: Any) -> set[str]:
    """The ``$defs`` names that ``node`` references directly."""
    if isinstance(node, Mapping):
        found = {r.removeprefix("#/$defs/") for r in [node.get("$ref")] if isinstance(r, str)}
        return found.union(*(_refs(v) for v in node.values()))
    return set().union(*(_refs(v) for v in node)) if isinstance(node, list) else set()


def _reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def _clean(node: Any, defs: Mapping[str, Any], recursive: frozenset[str]) -> Any:
    if not isinstance(node, Mapping):
        return node  # ``true``/``false`` are schemas too
    node = dict(node)
    all_of = node.get("allOf")
    if "$ref" not in node and isinstance(all_of, list) and len(all_of) == 1:
        del node["allOf"]  # older pydantic wraps a described $ref in a one-item allOf
        node = {**all_of[0], **node}
    out: dict[str, Any] = {}
    ref = node.pop("$ref", None)
    if isinstance(ref, str):
        name = ref.removeprefix("#/$defs/")
        inline = name in defs and name not in recursive  # non-recursive refs cannot loop
        out = _clean(defs[name], defs, recursive) if inline else {"$ref": ref}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            value = {k: _clean(v, defs, recursive) for k, v in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [_clean(v, defs, recursive) for v in value]
        elif key in _SUBSCHEMAS:
            value = _clean(value, defs, recursive)
        out[key] = value  # siblings of a $ref (description, default) win over the target's
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and _NULL in any_of:
        others = [s for s in out.pop("anyOf") if s != _NULL]
        if "default" in out and out["default"] is None:
            del out["default"]
        if len(others) == 1 and isinstance(others[0], dict):
            out = {**others[0], **out}
        elif others:
            out["anyOf"] = others
    if "const" in out and "enum" not in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("enum"), list) and "type" not in out:
        types = sorted({_json_type(v) for v in out["enum"]})
        out["type"] = types[0] if len(types) == 1 else types
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def normalize_raw_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a user's JSON Schema with ``"required": null`` removed at every level and a
    missing top-level ``"type"`` set to ``"object"`` (docs/protocol.md section 5 quirks)."""

    def strip(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: strip(v) for k, v in node.items() if not (k == "required" and v is None)}
        return [strip(v) for v in node] if isinstance(node, list) else node

    result: dict[str, Any] = strip(schema)
    result.setdefault("type", "object")
    return result


# ------------------------------------------------------------------ validation


def _format_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _invalid(tool_name: str, texts: list[str], errors: list[dict[str, Any]]) -> ValidationError:
    summary = "; ".join(texts[:5]) + (f" (and {len(texts) - 5} more)" if len(texts) > 5 else "")
    return ValidationError(
        f"Invalid arguments for tool {tool_name!r}: {summary}",
        details={"tool": tool_name, "errors": errors},
    )


def _error_text(path: str, message: str) -> str:
    if message == "missing":
        return f"missing required argument {path!r}"
    return f"{path}: {message}" if path else message


class JsonSchemaValidator:
    """Checks arguments against a raw JSON Schema.

    Uses ``jsonschema``'s Draft 2020-12 validator when that package is importable, otherwise
    :func:`fallback_error`. The choice is made on first use.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self._validator: Any = None
        self._resolved = False

    def first_error(self, instance: Any) -> tuple[str, str] | None:
        """``(path, message)`` of the best error (message ``"missing"`` for a missing required
        property, which ``path`` names), or ``None`` when ``instance`` is valid."""
        if not self._resolved:
            self._resolved = True
            try:
                jsonschema = importlib.import_module("jsonschema")
                jsonschema.Draft202012Validator.check_schema(self.schema)
                self._validator = jsonschema.Draft202012Validator(self.schema)
            except Exception:  # not installed, or an invalid schema: the lenient checker decides
                self._validator = None
        if self._validator is None:
            return fallback_error(self.schema, instance)
        best = importlib.import_module("jsonschema.exceptions").best_match(
            self._validator.iter_errors(instance)
        )
        if best is None:
            return None
        path = list(best.absolute_path)
        if best.validator == "required" and isinstance(best.instance, Mapping):
            missing = [r for r in best.validator_value if r not in best.instance]
            if missing:
                return _format_path([*path, missing[0]]), "missing"
        return _format_path(path), str(best.message)


_TYPE_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "object": lambda v: isinstance(v, Mapping),
    "array": lambda v: isinstance(v, list | tuple),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def fallback_error(
    schema: Any, instance: Any, path: tuple[Any, ...] = ()
) -> tuple[str, str] | None:
    """The first violation of ``type``, ``enum``, ``required``, ``properties`` or ``items``.

    The built-in stand-in for ``jsonschema`` on clients without it; same return as
    :meth:`JsonSchemaValidator.first_error`.
    """
    if not isinstance(schema, Mapping):
        return None
    expected = schema.get("type")
    names = [expected] if isinstance(expected, str) else list(expected or ())
    checks = [_TYPE_CHECKS[n] for n in names if n in _TYPE_CHECKS]
    if checks and len(checks) == len(names) and not any(check(instance) for check in checks):
        return _format_path(path), f"expected {' or '.join(names)}, got {_json_type(instance)}"
    enum_values = schema.get("enum")
    if isinstance(enum_values, list) and instance not in enum_values:
        return _format_path(path), f"{instance!r} is not one of {enum_values!r}"
    children: list[tuple[Any, Any, Any]] = []
    if isinstance(instance, Mapping):
        for name in schema.get("required") or ():
            if name not in instance:
                return _format_path([*path, name]), "missing"
        properties = schema.get("properties") or {}
        children = [
            (name, properties[name], instance[name]) for name in properties if name in instance
        ]
    elif isinstance(instance, list | tuple) and isinstance(schema.get("items"), Mapping):
        children = [(index, schema["items"], item) for index, item in enumerate(instance)]
    for key, sub, value in children:
        error = fallback_error(sub, value, (*path, key))
        if error is not None:
            return error
    return None


# ------------------------------------------------------------------ binding


class ArgumentBinder:
    """Builds a tool's input schema, then validates and shapes arguments for its handler.

    Args:
        tool_name: For error messages.
        handler: The tool's function.
        schema: A pydantic model class, a ``{"name": type}`` map, a JSON Schema dict, or
            ``None`` to infer from the handler's signature.
        namespace: Extra names for resolving string annotations.

    Raises:
        ValidationError: The schema cannot be built or is of an unsupported kind.
    """

    def __init__(
        self,
        tool_name: str,
        handler: Callable[..., Any],
        schema: type[BaseModel] | Mapping[str, Any] | None,
        namespace: Mapping[str, Any] | None = None,
    ) -> None:
        self.tool_name = tool_name
        self.params, self.var_keyword = handler_params(handler, namespace)
        self._model: type[BaseModel] | None = None
        self._fields: dict[str, str] | None = None  # wire name -> field name, inferred models
        self._json: JsonSchemaValidator | None = None
        if schema is None:
            self.style = call_style(self.params, self.var_keyword)
            if self.style in (CallStyle.MAPPING, CallStyle.NONE):
                self.input_schema: dict[str, Any] = {"type": "object", "properties": {}}
                return
            self._model, self._fields = model_from_params(
                tool_name, self.params, extra=self.var_keyword
            )
        elif inspect.isclass(schema) and issubclass(schema, BaseModel):
            self._model = schema
        elif isinstance(schema, Mapping) and is_type_map(schema):
            typed = [Param(str(name), annotation) for name, annotation in schema.items()]
            self._model, self._fields = model_from_params(tool_name, typed)
        elif isinstance(schema, Mapping):
            self.input_schema = normalize_raw_schema(schema)
            self._json = JsonSchemaValidator(self.input_schema)
            properties = self.input_schema.get("properties")
            names = list(properties) if isinstance(properties, Mapping) else []
            self.style = call_style(self.params, self.var_keyword, properties=names)
            return
        else:
            raise ValidationError(
                f"The schema of tool {tool_name!r} must be a pydantic model class, a JSON Schema "
                f"dict or None, not {type(schema).__name__}"
            )
        self.input_schema = model_schema(self._model, tool_name)
        if schema is not None:
            self.style = call_style(
                self.params,
                self.var_keyword,
                model=schema if isinstance(schema, type) else None,
                properties=self.input_schema["properties"],
            )

    def bind(self, arguments: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate ``arguments`` and return the handler's ``(args, kwargs)``.

        Raises:
            ValidationError: The arguments do not match the schema; the message names the field.
        """
        values: Any
        if not isinstance(arguments, Mapping):
            got = _json_type(arguments)
            raise _invalid(self.tool_name, [f"expected an object, got {got}"], [])
        if self._model is None:
            error = self._json.first_error(arguments) if self._json is not None else None
            if error is not None:
                loc, message = error
                raise _invalid(
                    self.tool_name, [_error_text(*error)], [{"loc": loc, "msg": message}]
                )
            values = dict(arguments)
        else:
            try:
                instance = self._model.model_validate(dict(arguments))
            except pydantic.ValidationError as exc:
                errors = exc.errors(include_url=False, include_input=False, include_context=False)
                texts = [
                    _error_text(
                        _format_path(e["loc"]), "missing" if e["type"] == "missing" else e["msg"]
                    )
                    for e in errors
                ]
                safe = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
                raise _invalid(self.tool_name, texts, safe) from None
            if self.style is CallStyle.MODEL:
                return (instance,), {}
            if self._fields is not None:
                values = {name: getattr(instance, f) for name, f in self._fields.items()}
                values.update(instance.model_extra or {})
            elif self.style is CallStyle.MAPPING:
                values = instance.model_dump(by_alias=True)
            else:
                values = {name: getattr(instance, name) for name in type(instance).model_fields}
        if self.style is CallStyle.NONE:
            return (), {}
        if self.style is CallStyle.MAPPING:
            return (values,), {}
        return self._split(values)

    def _split(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        positional = True
        for param in self.params:
            if param.kind is _POSITIONAL_ONLY:
                positional = positional and param.name in values  # no gaps in positional args
                if positional:
                    args.append(values[param.name])
            elif param.name in values:
                kwargs[param.name] = values[param.name]
        if self.var_keyword:
            known = {param.name for param in self.params}
            kwargs.update({k: v for k, v in values.items() if k not in known})
        return tuple(args), kwargs
