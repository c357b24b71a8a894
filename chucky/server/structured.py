"""Structured output (``outputFormat``, docs/protocol.md section 5): pure checks of an answer.

The agent loop asks :func:`validate_output` whether the final text of a turn is a JSON value
conforming to the session's schema. Models often wrap the JSON in a ```json fence or a sentence
of prose; one JSON object or array is extracted from such text. The error, when there is one, is
short and names the JSON path, so it can be handed back to the model in a repair request
(:func:`repair_request`).

``jsonschema`` (a server dependency) validates, with the schema's ``$schema`` draft or Draft
2020-12; compiled validators are cached per schema. Without ``jsonschema`` the lenient checker of
:mod:`chucky._schema` is used, as for tool arguments.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .._schema import fallback_error

__all__ = ["MAX_ERROR_CHARS", "repair_request", "schema_instruction", "validate_output"]

MAX_ERROR_CHARS: Final = 300
"""Longest error :func:`validate_output` returns (it goes back to the model, and to clients)."""

# Candidate starts of an embedded JSON value tried before giving up: bounds the work on a long
# prose answer full of braces.
_MAX_CANDIDATES: Final = 16
_FENCE: Final = re.compile(r"```[ \t]*(?:json[ \t]*)?\r?\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_DECODER: Final = json.JSONDecoder()


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _extract_json(text: str) -> Any:
    """The JSON value of ``text``: all of it, a fenced block, or one object/array inside prose.

    Raises:
        ValueError: no JSON value was found (the message says why, from the whole text).
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError as exc:
        whole_error = exc
    for match in _FENCE.finditer(text):
        try:
            return json.loads(match.group(1).strip())
        except ValueError:
            continue
    tried = 0
    for match in re.finditer(r"[\[{]", stripped):
        if tried >= _MAX_CANDIDATES:
            break
        tried += 1
        try:
            value, end = _DECODER.raw_decode(stripped, match.start())
        except ValueError:
            continue
        if isinstance(value, dict | list):
            if _no_more_json(stripped[end:]):
                return value
            break  # two JSON values in the prose: which one is the answer is anyone's guess
    raise whole_error


def _no_more_json(rest: str) -> bool:
    """The prose after an extracted value holds no second object/array (which would make the
    answer ambiguous)."""
    for match in re.finditer(r"[\[{]", rest):
        try:
            value, _ = _DECODER.raw_decode(rest, match.start())
        except ValueError:
            continue
        if isinstance(value, dict | list):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _validator(schema_key: str) -> Any:
    """A compiled ``jsonschema`` validator for the schema serialized as ``schema_key``;
    ``None`` when ``jsonschema`` is missing or the schema is not a valid JSON Schema."""
    try:
        from jsonschema import Draft202012Validator, validators
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - jsonschema comes with the server extra
        return None
    schema = json.loads(schema_key)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError:
        return None
    return cls(schema)


def _json_path(parts: Iterable[Any]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _schema_error(value: Any, schema: Mapping[str, Any]) -> str | None:
    try:
        key = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return None  # not a JSON schema at all: nothing to enforce
    validator = _validator(key)
    if validator is None:
        found = fallback_error(schema, value)
        if found is None:
            return None
        where, message = found
        return f"at $.{where}: {message}" if where else f"at $: {message}"
    from jsonschema.exceptions import best_match

    best = best_match(validator.iter_errors(value))
    if best is None:
        return None
    return f"at {_json_path(best.absolute_path)}: {best.message}"


def validate_output(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Parse the model's final ``text`` as JSON and validate it against ``schema``.

    A ```json fenced block, or one JSON object/array with prose around it, is extracted.

    Returns:
        ``(value, None)`` when valid; ``(None, error)`` otherwise, ``error`` a readable message
        (naming the JSON path of a schema violation) of at most :data:`MAX_ERROR_CHARS`.
    """
    try:
        value = _extract_json(text)
    except ValueError as exc:
        if not text.strip():
            return None, "the answer is empty"
        return None, _clip(f"the answer is not JSON ({exc})")
    error = _schema_error(value, schema)
    if error is not None:
        return None, _clip(error)
    return value, None


def _compact(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """The system-prompt addition that tells the model the shape of its answer."""
    return (
        "Respond with only a JSON value that conforms to this JSON Schema, with no other text: "
        + _compact(schema)
    )


def repair_request(error: str) -> str:
    """The user message asking the model to correct an answer that failed validation."""
    return (
        f"Your answer is not valid JSON for the required schema: {error}. "
        "Reply with only the corrected JSON."
    )
