"""The scripted provider: a deterministic model whose replies follow the prompt.

:class:`ScriptedProvider` (name ``"scripted"``) is the model of chucky's tests and of the public
test kit. It reads the **last user message** of ``request.messages`` as a small script and
answers exactly as documented here. It keeps no state between calls (the caller keeps the
transcript), so one instance serves any number of concurrent sessions.

Script grammar
--------------

The script is the last user message's string content, or the concatenation (no separator) of
the ``text`` of its ``text`` blocks; image, document and other blocks only count toward input
tokens. Commands are separated by ``;`` -- always: there is no escaping (inside JSON strings
write ``\\u003b``), and newlines do not separate. Each command is stripped, empty ones are
ignored. A command is a word (lowercase, exact) and an argument (the rest, stripped):

``echo <text>``
    Reply with ``<text>``.
``call <tool> [<json>]``
    A ``tool_use`` block calling ``<tool>`` with the JSON object as input (``{}`` if omitted).
    ``<tool>`` is used as written if it contains ``__`` (a full ``mcp__<server>__<tool>`` name)
    or is exactly an offered tool's name; else, if exactly one tool of ``request.tools`` has it
    as the part after its last ``__``, that tool's full name is used; else it is used as
    written. Ids are ``toolu_`` + 32 hex digits (uuid4). Several ``call`` commands are ONE
    response with several ``tool_use`` blocks (parallel calls). No tool name replies ``invalid
    call: missing tool name``; JSON that does not parse or is not an object replies ``invalid
    json for call: <tool>: <reason>``.
``json <json>``
    Reply with the argument verbatim (not validated: broken structured output can be scripted).
``sleep <seconds>``
    ``await asyncio.sleep(seconds)`` (cancellable) before the reply; negative means 0. Not a
    finite number: replies ``invalid sleep: <argument>``.
``fail [<code>]``
    Raise :class:`~chucky.errors.ProviderError` (from
    :func:`~chucky.server.providers.base.provider_error`), message ``scripted provider failure:
    <kind>``, details ``kind``, ``retryable``, ``reason`` and ``status``: ``overloaded``
    (retryable, 529), ``rate_limited`` (retryable, 429), ``server_error`` (retryable, 500),
    ``bad_request`` (not retryable, 400); a missing or unknown code means ``server_error``.
``stream <n>``
    Reply with ``n`` text deltas, delta ``i`` being ``f"{i % 100:02d} "`` (``"00 "`` ...
    ``"99 "``, ``"00 "`` ...); the text is their concatenation. Three characters a delta keep
    ``stream 5000`` (3,750 tokens) under the default ``max_tokens`` of 4096. Negative means 0;
    not an integer: replies ``invalid stream: <argument>``.
``recall``
    Reply with the text of the FIRST user message of the transcript (argument ignored).
any other word
    Contributes ``echo: <command>``.

If the first command (the text before the first ``;``) does not start with a command word, the
message is no script and the reply is ``echo: <whole message, stripped>`` (``Hi; how are you``
replies ``echo: Hi; how are you``).

Sleeps and failures run first, in script order, before any event: ``sleep 1; fail overloaded``
fails after a second, ``fail overloaded; sleep 1`` at once. A failure is raised by the first
``__anext__``, never mid-stream. The texts of the other commands are joined with one space
(empty texts skipped) into ONE text block (``echo a; echo b`` replies ``a b``), which comes
before the ``tool_use`` blocks. There is a text block unless the text is empty and there are
calls.

Tool results
------------

A last user message holding ``tool_result`` blocks (the agent loop is back from the client's
tools) is no script. The reply is ``tool <name> returned: <text>`` per result, joined with
``"; "`` in block order. ``<name>`` is the bare name (after the last ``__``) of the ``tool_use``
with that id in the assistant messages before it, nearest first (``unknown`` if none); ``<text>``
is the string content or the concatenated ``text`` items; ``is_error`` changes nothing.

Events
------

The shape of :mod:`chucky.server.providers.base`: ``message_start`` (id ``msg_`` + 32 hex
digits, ``model`` = ``request.model``, usage: the input tokens, ``output_tokens: 1``, cache
fields 0); the text block: ``content_block_start``, a ``text_delta`` per piece of the text
split after each run of whitespace (per delta for ``stream``), ``content_block_stop``; each
``tool_use`` block: ``content_block_start`` with ``input: {}``, ``input_json_delta`` fragments
of at most 16 characters joining to the compact JSON of the input, ``content_block_stop``;
``message_delta`` (``stop_reason``: ``tool_use`` if there are calls, else ``end_turn``, or
``max_tokens``; ``usage: {"output_tokens": n}``); ``message_stop``.

The events arrive in chunks of :data:`EVENTS_PER_CHUNK`, as from a network: the stream gives
the event loop a turn between chunks, so an interrupt or a lost socket can stop a reply
mid-stream, as it stops a real provider's.

Tokens
------

4 characters make a token, rounded up (:func:`count_tokens`).

* Input (:func:`count_input_tokens`): ``max(1, ceil(chars / 4) + 256 * attachments)``. ``chars``
  counts the system prompt, string contents, text of ``text`` blocks, ``thinking`` of thinking
  blocks, the compact JSON of each ``tool_use`` input, the string content or ``text`` items of
  each ``tool_result``, and per offered tool the compact JSON of ``{"name", "description",
  "input_schema"}``. Any other block or result item (image, document ...) is an attachment.
* Output: ``ceil((len(text) + len(compact JSON of each tool input)) / 4)``.
* ``max_tokens``: when output tokens exceed ``request.max_tokens``, the text is cut to
  ``max_tokens * 4`` characters, calls are dropped, ``stop_reason`` is ``max_tokens`` and output
  tokens are ``max_tokens``.

Compact JSON is ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``.
``request.params`` are ignored.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from chucky.errors import ProviderError

from ..ids import prefixed_id
from .base import MessageMemo, ModelRequest, Provider, ToolSpec, provider_error

__all__ = [
    "ATTACHMENT_TOKENS",
    "CHARS_PER_TOKEN",
    "COMMANDS",
    "EVENTS_PER_CHUNK",
    "ScriptedProvider",
    "count_input_tokens",
    "count_tokens",
]

EVENTS_PER_CHUNK: Final = 8
"""Stream events between two turns of the event loop (see "Events")."""

COMMANDS: Final = frozenset({"echo", "call", "json", "sleep", "fail", "stream", "recall"})
"""The command words of the script grammar."""

CHARS_PER_TOKEN: Final = 4
"""Characters per token in the scripted provider's token rule."""

ATTACHMENT_TOKENS: Final = 256
"""Input tokens counted for each image, document or other non-text block."""

_JSON_FRAGMENT_CHARS: Final = 16

# code -> (retryable, HTTP status the real API would use)
_FAILURES: Final[Mapping[str, tuple[bool, int]]] = {
    "overloaded": (True, 529),
    "rate_limited": (True, 429),
    "server_error": (True, 500),
    "bad_request": (False, 400),
}

# Split points: after whitespace, before the next word. Keeps each word's trailing whitespace.
_WORD_BOUNDARY: Final = re.compile(r"(?<=\s)(?=\S)")


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the scripted rule: ``ceil(len(text) / 4)`` (0 for ``""``)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _compact_json(value: Any) -> str:
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        default=lambda o: dict(o) if isinstance(o, Mapping) else str(o),
    )


def _is(block: Any, kind: str) -> bool:
    return isinstance(block, Mapping) and block.get("type") == kind


def _blocks(content: Any) -> Sequence[Any]:
    return content if isinstance(content, Sequence) and not isinstance(content, str) else ()


def _text_of(content: Any) -> str:
    """The text of a message content: the string, or its text blocks concatenated."""
    if isinstance(content, str):
        return content
    texts = (block.get("text") for block in _blocks(content) if _is(block, "text"))
    return "".join(text for text in texts if isinstance(text, str))


def _measure(content: Any) -> tuple[int, int]:
    """(characters, attachments) of a message or ``tool_result`` content."""
    if isinstance(content, str):
        return len(content), 0
    chars = attachments = 0
    for block in _blocks(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind in ("text", "thinking") and isinstance(block.get(kind), str):
            chars += len(block[kind])
        elif kind == "tool_use":
            chars += len(_compact_json(block.get("input", {})))
        elif kind == "tool_result":
            more_chars, more_attachments = _measure(block.get("content"))
            chars, attachments = chars + more_chars, attachments + more_attachments
        else:
            attachments += 1
    return chars, attachments


_MEASURES: MessageMemo[tuple[int, int]] = MessageMemo(lambda m: _measure(m.get("content")))


def _add_pairs(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


def count_input_tokens(request: ModelRequest) -> int:
    """Input tokens of a request under the scripted rule (see the module docstring).

    Args:
        request: The model call.

    Returns:
        ``max(1, ceil(chars / 4) + ATTACHMENT_TOKENS * attachments)``.
    """
    chars, attachments = _MEASURES.total(request.messages, _add_pairs, (0, 0))
    chars += len(request.system or "")
    for tool in request.tools:
        spec = {"name": tool.name, "description": tool.description}
        chars += len(_compact_json({**spec, "input_schema": tool.input_schema}))
    return max(1, -(-chars // CHARS_PER_TOKEN) + ATTACHMENT_TOKENS * attachments)


def _words(text: str) -> list[str]:
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


def _bare(name: str) -> str:
    return name.rsplit("__", 1)[-1]


def _resolve_tool(name: str, tools: Sequence[ToolSpec]) -> str:
    if "__" in name or any(tool.name == name for tool in tools):
        return name
    matches = [tool.name for tool in tools if _bare(tool.name) == name]
    return matches[0] if len(matches) == 1 else name


@dataclass(frozen=True, slots=True)
class _ToolCall:
    id: str
    name: str
    input_json: str


@dataclass(slots=True)
class _Reply:
    """What one call will do: waits/failures first, then text deltas and tool calls."""

    pieces: list[str] = field(default_factory=list)
    calls: list[_ToolCall] = field(default_factory=list)
    # Seconds to sleep, or the error to raise, in script order.
    actions: list[float | ProviderError] = field(default_factory=list)

    def add_text(self, text: str | list[str]) -> None:
        pieces = _words(text) if isinstance(text, str) else text
        if pieces and self.pieces:
            pieces[0] = " " + pieces[0]
        self.pieces.extend(pieces)


def _failure(code: str) -> ProviderError:
    kind = code if code in _FAILURES else "server_error"
    retryable, status = _FAILURES[kind]
    message = f"scripted provider failure: {kind}"
    return provider_error(message, kind=kind, retryable=retryable, status=status)


def _call(argument: str, tools: Sequence[ToolSpec]) -> _ToolCall | str:
    """The tool call, or the text saying why the command is invalid."""
    tool, *rest = argument.split(None, 1) or [""]
    if not tool:
        return "invalid call: missing tool name"
    try:
        value = json.loads(rest[0]) if rest else {}
    except (ValueError, RecursionError) as exc:
        return f"invalid json for call: {tool}: {exc}"
    if not isinstance(value, dict):
        return f"invalid json for call: {tool}: input must be a JSON object"
    return _ToolCall(prefixed_id("toolu"), _resolve_tool(tool, tools), _compact_json(value))


def _number(text: str, parse: Callable[[str], float]) -> float | None:
    try:
        value = parse(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _run_command(command: str, request: ModelRequest, reply: _Reply) -> None:
    word, *rest = command.split(None, 1)
    argument = rest[0].strip() if rest else ""
    if word in ("echo", "json"):
        reply.add_text(argument)
    elif word == "call":
        call = _call(argument, request.tools)
        if isinstance(call, str):
            reply.add_text(call)
        else:
            reply.calls.append(call)
    elif word == "recall":
        first = next((m for m in request.messages if m.get("role") == "user"), {})
        reply.add_text(_text_of(first.get("content")))
    elif word in ("sleep", "stream"):
        number = _number(argument, float if word == "sleep" else int)
        if number is None:
            reply.add_text(f"invalid {word}: {argument}")
        elif word == "sleep":
            reply.actions.append(max(0.0, number))
        else:
            # Deltas past max_tokens would be cut anyway; don't build millions of them.
            count = min(int(number), request.max_tokens * CHARS_PER_TOKEN // 3 + 1)
            reply.add_text([f"{i % 100:02d} " for i in range(max(0, count))])
    elif word == "fail":
        reply.actions.append(_failure(argument))
    else:
        reply.add_text(f"echo: {command}")


def _tool_results_text(messages: Sequence[Mapping[str, Any]], results: Sequence[Any]) -> str:
    names: dict[str, str] = {}  # tool_use id -> bare name, nearest assistant message first
    for message in reversed(messages):
        if message.get("role") == "assistant":
            for block in _blocks(message.get("content")):
                if _is(block, "tool_use"):
                    names.setdefault(str(block.get("id")), _bare(str(block.get("name", ""))))
    return "; ".join(
        f"tool {names.get(str(block.get('tool_use_id')), 'unknown')} returned: "
        + _text_of(block.get("content"))
        for block in results
        if _is(block, "tool_result")
    )


def _plan(request: ModelRequest) -> _Reply:
    """Read the last user message and decide the reply (pure apart from new ids)."""
    messages, reply = request.messages, _Reply()
    users = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    content = messages[users[-1]].get("content") if users else ""
    if any(_is(block, "tool_result") for block in _blocks(content)):
        reply.add_text(_tool_results_text(messages[: users[-1]], _blocks(content)))
        return reply

    script = _text_of(content).strip()
    first = script.split(";", 1)[0].split(None, 1)
    if not first or first[0] not in COMMANDS:
        reply.add_text(f"echo: {script}")
        return reply
    for command in script.split(";"):
        command = command.strip()
        if command:
            _run_command(command, request, reply)
    return reply


def _truncate(pieces: list[str], chars: int) -> list[str]:
    """The first ``chars`` characters of the concatenated pieces, still as pieces."""
    kept: list[str] = []
    for piece in pieces:
        if chars <= 0:
            break
        kept.append(piece[:chars])
        chars -= len(piece)
    return kept


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _events(request: ModelRequest, reply: _Reply) -> Iterator[dict[str, Any]]:
    """The raw stream events of a planned reply (pure apart from the message id)."""
    pieces, calls = reply.pieces, reply.calls
    chars = sum(map(len, pieces)) + sum(len(call.input_json) for call in calls)
    output_tokens = -(-chars // CHARS_PER_TOKEN)
    stop_reason = "tool_use" if calls else "end_turn"
    limit = max(0, request.max_tokens)
    if output_tokens > limit:
        pieces, calls = _truncate(pieces, limit * CHARS_PER_TOKEN), []
        stop_reason, output_tokens = "max_tokens", limit
    usage = {"input_tokens": count_input_tokens(request), "output_tokens": 1}
    usage |= {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message: dict[str, Any] = {"id": prefixed_id("msg"), "type": "message", "role": "assistant"}
    message |= {"model": request.model, "content": [], "stop_reason": None, "stop_sequence": None}
    yield {"type": "message_start", "message": message | {"usage": usage}}
    index = 0
    if pieces or not calls:
        yield _start(0, {"type": "text", "text": ""})
        for piece in pieces:
            yield _delta(0, {"type": "text_delta", "text": piece})
        yield {"type": "content_block_stop", "index": 0}
        index = 1
    for call in calls:
        yield _start(index, {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
        raw, step = call.input_json, _JSON_FRAGMENT_CHARS
        for at in range(0, len(raw), step):
            yield _delta(index, {"type": "input_json_delta", "partial_json": raw[at : at + step]})
        yield {"type": "content_block_stop", "index": index}
        index += 1
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    yield {"type": "message_stop"}


class ScriptedProvider(Provider):
    """A deterministic provider whose replies follow a script in the prompt.

    The grammar, the event shape and the token rule are in this module's docstring. The
    provider holds no state, so one instance serves any number of concurrent sessions.

    Example::

        provider = ScriptedProvider()
        request = ModelRequest(model="scripted", system=None,
                               messages=[{"role": "user", "content": "echo hi; call get_time"}])
        async for event in provider.stream(request):
            ...
    """

    name: ClassVar[str] = "scripted"

    def estimate_input_tokens(self, request: ModelRequest) -> int:
        """The exact input tokens the reply will report (:func:`count_input_tokens`)."""
        return count_input_tokens(request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Run the script of the last user message, yielding raw stream events.

        Args:
            request: The model call; only ``model``, ``system``, ``messages``, ``tools`` and
                ``max_tokens`` are used.

        Yields:
            Anthropic raw-stream events (see the module docstring).

        Raises:
            ProviderError: the script has a ``fail`` command; raised before any event.
        """
        reply = _plan(request)
        for action in reply.actions:
            if isinstance(action, ProviderError):
                raise action
            await asyncio.sleep(action)
        for count, event in enumerate(_events(request, reply), 1):
            yield event
            if count % EVENTS_PER_CHUNK == 0:
                await asyncio.sleep(0)  # the next chunk "arrives"
