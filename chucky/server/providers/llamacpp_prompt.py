"""The local model's prompt and reply: transcript to chat messages, tool grammar, reply parsing.

Pure: no model, no threads. :mod:`.llamacpp` renders :func:`prompt_messages` with the model's
chat template, constrains generation with the JSON schema of :func:`reply_schema` when tools are
offered, and reads a finished constrained reply with :func:`parse_reply`.

Prefix stability
----------------

The provider evaluates only the tokens that are new since a session's last call
(:mod:`.llamacpp_prefix`), which pays off only if the prompt of one call is a prefix of the
next one's. So everything that changes from call to call goes at the END of the prompt:

* the system message is the session's system prompt plus, when tools are offered, ONE
  description of the reply format and of every offered tool -- the same whatever the call's
  ``tool_choice``;
* what this call must do (``tool_choice``: call a tool, call this tool, do not call a tool) is
  a short directive appended to the LAST user message, where the next call's transcript
  continues anyway (the model's reply follows it);
* tool calls in the transcript are rendered as the JSON the grammar makes the model write, and
  tool results as user text, so a tool round's next prompt extends the previous one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..._redact import redacting_logger
from .base import ModelRequest, ToolSpec, tool_choice_for
from .openai_translate import ToolNameMap, chat_messages

__all__ = [
    "CHATML",
    "TEXT_REPLY",
    "call_directive",
    "parse_reply",
    "prompt_messages",
    "reply_grammar",
    "reply_json",
    "reply_schema",
    "tools_instruction",
]

logger = redacting_logger("chucky.server.providers.llamacpp")

CHATML: Final = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, for models whose GGUF metadata carries no chat template."""

TEXT_REPLY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}
"""The text alternative of a constrained reply: ``{"text": ...}``."""


def _arguments_schema(tool: ToolSpec) -> dict[str, Any]:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = dict(tool.input_schema) or {"type": "object"}
    try:
        json_schema_to_gbnf(json.dumps(schema))
    except Exception:  # any converter failure means "unsupported schema"
        logger.info("tool %s: schema not convertible to a grammar; any object allowed", tool.name)
        return {"type": "object"}
    return schema


def _forced_tools(tools: Sequence[ToolSpec], tool_choice: Any) -> tuple[Sequence[ToolSpec], bool]:
    """The tools the reply may call and whether a call is forced."""
    choice = tool_choice_for(tool_choice, tools)
    if choice is not None and choice["type"] == "any":
        return tools, True
    if choice is not None and choice["type"] == "tool":
        return [t for t in tools if t.name == choice["name"]], True
    return tools, False


def reply_schema(tools: Sequence[ToolSpec], tool_choice: Any = None) -> dict[str, Any]:
    """The JSON schema a reply must match when ``tools`` are offered.

    Args:
        tools: The offered tools (non-empty).
        tool_choice: ``request.params["tool_choice"]``: ``"any"``, ``{"type": "any"}`` or
            ``{"type": "tool", "name": ...}`` force a call (of that tool); ``"none"`` /
            ``{"type": "none"}`` forbids one; anything else allows a text reply too.

    Returns:
        ``{"anyOf": [...]}``: one ``{"tool": <name>, "arguments": <input schema>}`` object per
        callable tool (schemas the grammar converter cannot handle become ``{"type":
        "object"}``), plus ``{"text": <string>}`` unless a call is forced; only the text
        alternative when calls are forbidden.
    """
    choice = tool_choice_for(tool_choice, tools)
    if choice is not None and choice["type"] == "none":
        return {"anyOf": [TEXT_REPLY]}
    callable_tools, forced = _forced_tools(tools, tool_choice)
    alternatives: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": tool.name}, "arguments": _arguments_schema(tool)},
            "required": ["tool", "arguments"],
        }
        for tool in callable_tools
    ]
    if not forced:
        alternatives.append(TEXT_REPLY)
    return {"anyOf": alternatives}


def tools_instruction(tools: Sequence[ToolSpec]) -> str:
    """The system prompt's part about tools: the reply format and every offered tool.

    The same for every call with the same tools, whatever its ``tool_choice`` (that is
    :func:`call_directive`'s business), so it stays in the reused prefix.
    """
    lines = [
        "You can call tools. Answer with ONE JSON object and nothing else:",
        '{"tool": "<tool name>", "arguments": {<the tool\'s arguments>}} to call a tool,',
        'or {"text": "<your reply>"} to reply to the user.',
        "Tools:",
    ]
    for tool in tools:
        schema = json.dumps(dict(tool.input_schema), ensure_ascii=False, default=str)
        lines.append(f"- {tool.name}: {tool.description} Arguments schema: {schema}")
    return "\n".join(lines)


def call_directive(tools: Sequence[ToolSpec], tool_choice: Any) -> str | None:
    """What this call must do, appended to the last user message (``None``: the model picks)."""
    choice = tool_choice_for(tool_choice, tools)
    if choice is None:
        return None
    if choice["type"] == "none":
        return 'Reply to the user now, without calling a tool: {"text": "<your reply>"}'
    if choice["type"] == "any":
        return "Call one of the tools now."
    if choice["type"] == "tool":
        return f"Call the tool {choice['name']} now."
    return None


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append("[image omitted; this model cannot see images]")
        return "\n".join(parts)
    return ""


def prompt_messages(request: ModelRequest) -> list[dict[str, str]]:
    """Plain ``{"role", "content": str}`` messages every chat template renders.

    The system message (the request's system prompt and, with tools, :func:`tools_instruction`)
    comes first; with tools, an assistant's text and tool calls are the JSON objects the grammar
    made the model write (:func:`reply_json`);
    tool results and consecutive user texts join into one user message; this call's
    :func:`call_directive` ends the last user message.
    """
    names = ToolNameMap()
    out: list[dict[str, str]] = []
    call_names: dict[str, str] = {}
    instruction = tools_instruction(request.tools) if request.tools else None
    system = "\n\n".join(s for s in (request.system, instruction) if s)
    for message in chat_messages(request, names):
        role = message["role"]
        if role == "system":
            continue
        if role == "assistant":
            text = _plain(message.get("content"))
            if text and request.tools:
                text = reply_json({"text": text})  # as the grammar made the model write it
            for call in message.get("tool_calls") or []:
                function = call["function"]
                name = names.original(function["name"])
                call_names[call["id"]] = name
                arguments = json.loads(function["arguments"] or "{}")
                call_json = reply_json({"tool": name, "arguments": arguments})
                text = f"{text}\n{call_json}" if text else call_json
            out.append({"role": "assistant", "content": text})
            continue
        if role == "tool":
            name = call_names.get(str(message.get("tool_call_id")), "tool")
            content = f"Result of {name}: {_plain(message.get('content'))}"
        else:
            content = _plain(message.get("content"))
        if out and out[-1]["role"] == "user":
            out[-1]["content"] += "\n" + content
        else:
            out.append({"role": "user", "content": content})
    directive = (
        call_directive(request.tools, request.params.get("tool_choice")) if request.tools else None
    )
    if directive is not None:
        if out and out[-1]["role"] == "user":
            out[-1]["content"] += "\n\n" + directive
        else:
            out.append({"role": "user", "content": directive})
    if system:
        out.insert(0, {"role": "system", "content": system})
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def parse_reply(
    reply: str, finish: str | None, tools: Sequence[ToolSpec]
) -> tuple[tuple[str, dict[str, Any]] | None, str]:
    """How a constrained reply that did not start as the text alternative ends.

    Args:
        reply: The whole generated reply (the grammar of :func:`reply_schema` shaped it).
        finish: llama.cpp's finish reason: ``"length"`` when ``max_tokens`` cut the reply.
        tools: The offered tools.

    Returns:
        ``((name, arguments), "tool_use")`` for a complete call of an offered tool; otherwise
        ``(None, stop_reason)``: a reply cut before its end (``"max_tokens"`` when the token
        budget cut it) is dropped whole, never shown as text -- half a tool call is JSON, not
        an answer, and it cannot be run.
    """
    value = _loads(reply)
    if isinstance(value, dict):
        name = value.get("tool")
        arguments = value.get("arguments")
        if any(tool.name == name for tool in tools) and isinstance(arguments, dict):
            return (str(name), arguments), "tool_use"
    return None, "max_tokens" if finish == "length" else "end_turn"


def reply_grammar(schema: dict[str, Any]) -> str:
    """The GBNF grammar of ``schema`` (:func:`reply_schema`), for compact JSON.

    ``llama-cpp-python``'s converter lets the model put a space after ``{``, ``:`` and ``,``;
    here it may put none, so a reply reads as ``json.dumps(..., separators=(",", ":"))`` writes
    it, and the transcript (:func:`prompt_messages`) shows the model's reply as it generated it:
    the next call's prompt extends this one's token for token.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    rules = json_schema_to_gbnf(json.dumps(schema)).splitlines()
    return "\n".join('space ::= ""' if rule.startswith("space ::=") else rule for rule in rules)


def reply_json(value: Mapping[str, Any]) -> str:
    """A constrained reply as the grammar of :func:`reply_grammar` makes the model write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
