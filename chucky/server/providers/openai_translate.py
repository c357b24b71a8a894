"""Pure translation between the Anthropic shapes chucky speaks and OpenAI chat completions.

Theory of operation
-------------------

Requests go one way: :func:`chat_messages`, :func:`chat_tools`, :func:`chat_tool_choice` and
:func:`chat_params` turn a :class:`~chucky.server.providers.base.ModelRequest` (an Anthropic
Messages transcript) into the arguments of ``POST /chat/completions``. Tool names that OpenAI
would refuse (longer than 64 characters or outside ``[a-zA-Z0-9_-]``) go through a per-request
:class:`ToolNameMap`, which maps them back in the reply.

Replies go the other way: :class:`ChunkTranslator` is fed the streamed ``chat.completion.chunk``
objects (as dicts) one at a time and returns the Anthropic raw-stream events each one implies;
:meth:`ChunkTranslator.finish` returns the closing events. It owns the only state machine here:
at most one content block is open at a time (``text``, ``thinking`` or ``tool_use``); a delta of
another kind closes it and opens the next block, so blocks are sequential as in Anthropic
streams.

OpenAI-compatible servers differ from OpenAI; the translator normalises what local servers
(llama.cpp, vLLM, Ollama, LM Studio) are known to send:

* tool calls with ``finish_reason`` ``"stop"`` (or none): the stop reason is ``tool_use`` when
  any call was produced;
* arguments split across many chunks (streamed as ``input_json_delta`` fragments), or given as a
  JSON object instead of a string (serialised);
* several calls on ONE ``index``: a new ``id`` on that index, or a new ``name`` once the current
  call has a name and arguments, starts a new call;
* the id and the full name repeated in every chunk of one call (llama-cpp-python's server): a
  repeated id continues the call;
* a call with no ``id`` gets a generated ``toolu_`` id;
* no usage chunk: tokens are estimated as one per four characters -- input from the request
  (:func:`estimate_prompt_tokens`), output from the streamed text, thinking and arguments -- so
  a priced model is still charged (approximately) and a result never reports 0 input tokens;
* text after tool calls (a new text block);
* ``reasoning_content`` (llama.cpp, vLLM) or ``reasoning`` (Ollama) deltas: a ``thinking``
  block;
* ``refusal`` deltas: text, with stop reason ``refusal``.

Argument fragments of an earlier call arriving after a later call started (no known server
interleaves calls) are dropped with a warning: the earlier block is already closed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._redact import redacting_logger
from ..ids import prefixed_id
from .base import ModelRequest, ToolSpec, tool_choice_for

__all__ = [
    "CHARS_PER_TOKEN",
    "ChunkTranslator",
    "ToolNameMap",
    "chat_messages",
    "chat_params",
    "chat_tool_choice",
    "chat_tools",
    "estimate_prompt_tokens",
    "map_finish_reason",
]

logger = redacting_logger("chucky.server.providers.openai")

CHARS_PER_TOKEN = 4
"""Characters per output token in the estimate used when a server sends no usage."""

_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


class ToolNameMap:
    """A reversible mapping of tool names to names OpenAI accepts (one per request).

    Valid names map to themselves. Others become their sanitised first 55 characters, ``_`` and
    8 hex digits of their SHA-256, so the mapping is deterministic and collision-resistant.
    """

    __slots__ = ("_to_original", "_to_wire")

    def __init__(self) -> None:
        self._to_wire: dict[str, str] = {}
        self._to_original: dict[str, str] = {}

    def wire(self, name: str) -> str:
        """The name sent to the server for ``name`` (registering it)."""
        known = self._to_wire.get(name)
        if known is not None:
            return known
        if _VALID_NAME.match(name) and name not in self._to_original:
            wire = name
        else:
            digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
            wire = f"{_INVALID_CHARS.sub('_', name)[:55]}_{digest[:8]}"
            salt = 0
            while wire in self._to_original:  # astronomically rare; stay reversible anyway
                salt += 1
                wire = f"{_INVALID_CHARS.sub('_', name)[:52]}_{digest[:8]}{salt:03d}"[-64:]
        self._to_wire[name] = wire
        self._to_original[wire] = name
        return wire

    def original(self, wire: str) -> str:
        """The chucky name for a name the server sent (unknown names are returned as given)."""
        return self._to_original.get(wire, wire)


# -- requests ------------------------------------------------------------------------------------


def _blocks(content: Any) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Sequence):
        return [block for block in content if isinstance(block, Mapping)]
    return []


def _image_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        return None
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        url = f"data:{media};base64,{source['data']}"
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document_note(block: Mapping[str, Any]) -> str:
    source = block.get("source")
    media = source.get("media_type") if isinstance(source, Mapping) else None
    title = block.get("title")
    label = title if isinstance(title, str) and title else (media or "document")
    return f"[document omitted: {label}; this model cannot read documents]"


def _tool_result_text(block: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for item in _blocks(block.get("content")):
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind == "image":
            parts.append("[image omitted]")
        elif kind == "document":
            parts.append(_document_note(item))
    text = "\n".join(parts)
    return f"Error: {text}" if block.get("is_error") else text


def _user_messages(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "tool_result":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id", "")),
                    "content": _tool_result_text(block),
                }
            )
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            part = _image_part(block)
            parts.append(part or {"type": "text", "text": "[image omitted]"})
        elif kind == "document":
            parts.append({"type": "text", "text": _document_note(block)})
    if parts:
        if all(part["type"] == "text" for part in parts):
            # Plain strings are what every local server understands.
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: Any, names: ToolNameMap) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False, default=str)
            function = {"name": names.wire(str(block.get("name", ""))), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
    if not texts and not calls:
        return None
    # Content is a string even beside tool calls: llama-cpp-python's server rejects ``null``
    # (and its function-calling template needs the key), OpenAI accepts ``""``.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def chat_messages(request: ModelRequest, names: ToolNameMap) -> list[dict[str, Any]]:
    """The chat-completions ``messages`` for ``request``'s system prompt and transcript.

    Args:
        request: The model call (Anthropic Messages transcript).
        names: The request's tool name map (names in ``tool_use`` blocks are registered).

    Returns:
        ``system``, ``user``, ``assistant`` (with ``tool_calls``) and ``tool`` messages.
    """
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        role = message.get("role")
        if role == "user":
            out.extend(_user_messages(message.get("content")))
        elif role == "assistant":
            assistant = _assistant_message(message.get("content"), names)
            if assistant is not None:
                out.append(assistant)
    return out


def chat_tools(tools: Sequence[ToolSpec], names: ToolNameMap) -> list[dict[str, Any]]:
    """The chat-completions ``tools`` (``function`` tools) for ``tools``."""
    return [
        {
            "type": "function",
            "function": {
                "name": names.wire(tool.name),
                "description": tool.description,
                "parameters": dict(tool.input_schema) or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def chat_tool_choice(
    tool_choice: Any, tools: Sequence[ToolSpec], names: ToolNameMap
) -> str | dict[str, Any] | None:
    """The chat-completions ``tool_choice`` for ``request.params["tool_choice"]`` (pure).

    Accepts the Anthropic forms (``"auto"``, ``"any"``, ``"none"``, ``{"type": "auto" | "any" |
    "none"}``, ``{"type": "tool", "name": ...}``) and the OpenAI ones (``"required"``,
    ``{"type": "function", "function": {"name": ...}}``), as the llamacpp provider does. A named
    tool is matched exactly, else by its bare name (``get_weather`` for
    ``mcp__weather__get_weather``) when that is unambiguous
    (:func:`~chucky.server.providers.base.tool_choice_for`). "Any tool" among a single tool names
    it: the same choice, and the only forced form llama-cpp-python's server accepts.

    Args:
        tool_choice: The requested choice (``None`` when none was requested).
        tools: The tools offered.
        names: The request's tool name map (the wire names of ``tools``).

    Returns:
        ``"auto"``, ``"none"``, ``"required"``, ``{"type": "function", "function": {"name":
        <wire name>}}``, or ``None`` (send nothing: no tools, no choice, an unknown form or
        an unknown tool).
    """
    choice = tool_choice_for(tool_choice, tools)
    if choice is None:
        return None
    if choice["type"] in ("auto", "none"):
        return str(choice["type"])
    if choice["type"] == "any":
        if len(tools) > 1:
            return "required"
        choice = {"type": "tool", "name": tools[0].name}
    return {"type": "function", "function": {"name": names.wire(choice["name"])}}


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def chat_params(request: ModelRequest) -> dict[str, Any]:
    """The inference parameters of ``request`` that chat completions know (others ignored).

    ``max_tokens`` comes from ``request.max_tokens`` (local servers read ``max_tokens``, not
    ``max_completion_tokens``); ``stop`` also accepts Anthropic's ``stop_sequences``.
    """
    params = request.params
    out: dict[str, Any] = {"max_tokens": max(1, request.max_tokens)}
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = _number(params.get(key))
        if value is not None:
            out[key] = value
    seed = params.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        out["seed"] = seed
    stop = params.get("stop", params.get("stop_sequences"))
    if isinstance(stop, str) and stop:
        out["stop"] = stop
    elif isinstance(stop, Sequence) and not isinstance(stop, str):
        stops = [s for s in stop if isinstance(s, str) and s]
        if stops:
            out["stop"] = stops
    return out


# -- replies -------------------------------------------------------------------------------------


def map_finish_reason(reason: str | None, *, has_tool_calls: bool) -> str:
    """The Anthropic ``stop_reason`` for an OpenAI ``finish_reason``."""
    if reason == "length":
        return "max_tokens"
    if reason == "content_filter":
        return "refusal"
    # Local servers often say "stop" after tool calls; only the calls themselves count.
    return "tool_use" if has_tool_calls else "end_turn"


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str = ""
    block: int | None = None  # the content block index once started
    closed: bool = False
    pending: list[str] = field(default_factory=list)  # arguments before the block started
    has_arguments: bool = False


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Some servers send the arguments as a JSON object instead of a string.
    return json.dumps(value, ensure_ascii=False, default=str)


def estimate_prompt_tokens(request: ModelRequest) -> int:
    """The input tokens of ``request`` at one token per four characters (pure; a server that
    reports no usage is billed by this)."""
    parts: list[Any] = [request.system or "", list(request.messages)]
    parts += [(tool.name, tool.description, dict(tool.input_schema)) for tool in request.tools]
    chars = len(json.dumps(parts, ensure_ascii=False, default=str))
    return -(-chars // CHARS_PER_TOKEN)


class ChunkTranslator:
    """Turns streamed chat-completion chunks into Anthropic raw-stream events (pure, no I/O).

    Feed each chunk (a dict) to :meth:`feed` and yield the events it returns; at the end of the
    stream yield those of :meth:`finish`. The module docstring lists the quirks normalised.

    Args:
        model: The model id reported when the chunks carry none.
        names: The request's tool name map; tool names are mapped back through it.
        input_estimate: The input tokens reported when the server sends no usage.
    """

    def __init__(
        self, *, model: str, names: ToolNameMap | None = None, input_estimate: int = 0
    ) -> None:
        self._model = model
        self._input_estimate = input_estimate
        self._names = names or ToolNameMap()
        self._started = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # (kind, block index) of the open block
        self._calls: dict[int, _Call] = {}  # OpenAI tool call index -> its current call
        self._current_call: _Call | None = None
        self._tool_calls = 0
        self._finish_reason: str | None = None
        self._refused = False
        self._usage: Mapping[str, Any] | None = None
        self._chars = 0
        self._finished = False

    @property
    def started(self) -> bool:
        """Whether any event has been produced (the caller may no longer retry)."""
        return self._started

    def _start_message(self, model: Any, out: list[dict[str, Any]]) -> None:
        if self._started:
            return
        self._started = True
        usage = {"input_tokens": 0, "output_tokens": 0}
        usage |= {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message: dict[str, Any] = {"id": prefixed_id("msg"), "type": "message", "role": "assistant"}
        message |= {"model": model if isinstance(model, str) and model else self._model}
        message |= {"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        out.append({"type": "message_start", "message": message})

    def _close(self, out: list[dict[str, Any]]) -> None:
        if self._open is not None:
            out.append({"type": "content_block_stop", "index": self._open[1]})
            if self._open[0] == "tool_use" and self._current_call is not None:
                self._current_call.closed = True
                self._current_call = None
            self._open = None

    def _open_block(self, kind: str, block: dict[str, Any], out: list[dict[str, Any]]) -> int:
        self._close(out)
        index = self._next_index
        self._next_index += 1
        self._open = (kind, index)
        out.append({"type": "content_block_start", "index": index, "content_block": block})
        return index

    def _text(self, kind: str, text: str, out: list[dict[str, Any]]) -> None:
        if not text:
            return
        self._chars += len(text)
        if self._open is None or self._open[0] != kind:
            empty = {"type": "text", "text": ""} if kind == "text" else None
            block = empty or {"type": "thinking", "thinking": "", "signature": ""}
            self._open_block(kind, block, out)
        assert self._open is not None
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        out.append({"type": "content_block_delta", "index": self._open[1], "delta": delta})

    def _emit_arguments(self, call: _Call, fragment: str, out: list[dict[str, Any]]) -> None:
        if not fragment:
            return
        self._chars += len(fragment)
        delta = {"type": "input_json_delta", "partial_json": fragment}
        out.append({"type": "content_block_delta", "index": call.block, "delta": delta})

    def _start_call(self, call: _Call, out: list[dict[str, Any]]) -> None:
        call.id = call.id or prefixed_id("toolu")
        block = {"type": "tool_use", "id": call.id, "name": self._names.original(call.name)}
        call.block = self._open_block("tool_use", block | {"input": {}}, out)
        self._current_call = call
        self._tool_calls += 1
        for fragment in call.pending:
            self._emit_arguments(call, fragment, out)
        call.pending.clear()

    def _tool_delta(
        self, delta: Mapping[str, Any], position: int, out: list[dict[str, Any]]
    ) -> None:
        raw_index = delta.get("index")
        index = raw_index if isinstance(raw_index, int) else position
        function = delta.get("function")
        function = function if isinstance(function, Mapping) else {}
        call_id = delta.get("id") if isinstance(delta.get("id"), str) and delta.get("id") else None
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        fragment = _arguments(function.get("arguments"))

        call = self._calls.get(index)
        new_id = call_id is not None and call is not None and call.id not in (None, call_id)
        # llama-cpp-python's server repeats the id and the whole name in every chunk of a
        # call: a repeated id is the same call, whatever the name says.
        same_id = call_id is not None and call is not None and call.id == call_id
        new_name = (
            bool(name) and call is not None and bool(call.name) and call.has_arguments
        ) and not same_id
        if call is None or new_id or new_name:
            call = _Call(id=call_id)
            self._calls[index] = call
        elif call_id is not None and call.id is None and call.block is None:
            call.id = call_id
        if name and call.block is None:
            call.name += name
        if fragment:
            call.has_arguments = True
        if call.closed:
            logger.warning("dropping arguments of an already closed tool call (interleaved calls)")
            return
        if call.block is None:
            if fragment:
                call.pending.append(fragment)
            if call.name:
                self._start_call(call, out)
            return
        if self._current_call is not call:  # pragma: no cover - closed calls return above
            return
        self._emit_arguments(call, fragment, out)

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events implied by one streamed chunk (``chat.completion.chunk`` as a dict)."""
        out: list[dict[str, Any]] = []
        if self._finished:
            return out
        self._start_message(chunk.get("model"), out)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, str):
            return out
        for choice in choices:
            if not isinstance(choice, Mapping) or choice.get("index", 0) not in (0, None):
                continue  # n > 1 is never requested
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                for key in ("reasoning_content", "reasoning"):
                    value = delta.get(key)
                    if isinstance(value, str):
                        self._text("thinking", value, out)
                        break
                if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                    self._refused = True
                    self._text("text", delta["refusal"], out)
                if isinstance(delta.get("content"), str):
                    self._text("text", delta["content"], out)
                tool_calls = delta.get("tool_calls")
                if isinstance(tool_calls, Sequence) and not isinstance(tool_calls, str):
                    for position, call in enumerate(tool_calls):
                        if isinstance(call, Mapping):
                            self._tool_delta(call, position, out)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The closing events: open blocks, ``message_delta`` and ``message_stop``."""
        out: list[dict[str, Any]] = []
        if self._finished:
            return out
        self._start_message(None, out)
        for call in self._calls.values():  # a call that never got a name still is a call
            if call.block is None and (call.id or call.pending):
                self._start_call(call, out)
        if self._next_index == 0:
            self._open_block("text", {"type": "text", "text": ""}, out)
        self._close(out)
        self._finished = True
        stop_reason = map_finish_reason(self._finish_reason, has_tool_calls=self._tool_calls > 0)
        if self._refused and stop_reason == "end_turn":
            stop_reason = "refusal"
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": self._final_usage(),
            }
        )
        out.append({"type": "message_stop"})
        return out

    def _final_usage(self) -> dict[str, int]:
        usage = self._usage
        estimate = -(-self._chars // CHARS_PER_TOKEN)
        if usage is None:
            return {"input_tokens": self._input_estimate, "output_tokens": estimate}
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        cached = min(cached, prompt)
        return {
            "input_tokens": prompt - cached,
            "output_tokens": completion,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        }


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))
