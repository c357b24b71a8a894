"""The provider seam: what the agent loop asks of a model.

A provider turns a :class:`ModelRequest` (system prompt, transcript, tools, parameters) into an
async stream of events in the Anthropic raw-stream shape::

    {"type": "message_start", "message": {"id", "model", "role": "assistant", "content": [],
                                          "usage": {"input_tokens", "output_tokens", ...}}}
    {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}
    {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": "..."}}
    {"type": "content_block_start", "index": j,
     "content_block": {"type": "tool_use", "id", "name", "input": {}}}
    {"type": "content_block_delta", "index": j,
     "delta": {"type": "input_json_delta", "partial_json": "..."}}
    {"type": "content_block_stop", "index": i}
    {"type": "message_delta", "delta": {"stop_reason": "end_turn" | "tool_use" | "max_tokens"
                                        | "stop_sequence"}, "usage": {"output_tokens": n}}
    {"type": "message_stop"}

(``thinking`` blocks use ``thinking_delta``.) The agent loop only knows this shape; it forwards
the events as ``stream_event`` frames and folds them into the final message with
:class:`MessageAccumulator`.

A provider failure is a :class:`chucky.errors.ProviderError` whose typed
:attr:`~chucky.errors.ProviderError.retryable` says whether another attempt may succeed (also in
``details["retryable"]`` for the wire) and whose ``details`` give its kind (``kind``:
``overloaded``, ``rate_limited``, ``server_error``, ``bad_request`` ...) and the protocol
``reason`` (``provider_unavailable`` for retryable failures, ``provider_rejected`` otherwise).
Retries are :mod:`chucky.server.providers.retry`'s, the same for every provider.
"""

from __future__ import annotations

import json
import math
import operator
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from chucky.errors import ProviderError

_V = TypeVar("_V")

__all__ = [
    "ATTACHMENT_TOKENS_BOUND",
    "MessageAccumulator",
    "MessageMemo",
    "ModelRequest",
    "Provider",
    "ToolSpec",
    "provider_error",
    "redact_secret",
    "tool_choice_for",
]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it (``name`` is the full ``mcp__<server>__<tool>`` name)."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call.

    Attributes:
        model: The provider's model id (aliases already resolved).
        system: The system prompt, if any.
        messages: The transcript in the Anthropic Messages API shape: ``{"role": "user" |
            "assistant", "content": str | [blocks]}``; tool results are ``tool_result`` blocks
            in a user message.
        tools: The tools offered to the model.
        max_tokens: Upper bound on output tokens for this call; providers must honour it.
        params: Inference parameters (``temperature``, ``top_p``, ``stop``, ...), provider-specific
            keys ignored by providers that do not know them.
    """

    model: str
    system: str | None
    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 4096
    params: Mapping[str, Any] = field(default_factory=dict)


class Provider(ABC):
    """A model backend. One instance may serve many concurrent requests."""

    name: ClassVar[str]

    @abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Run one model call, yielding raw stream events (see the module docstring).

        Raises:
            ProviderError: the call failed (its ``retryable`` tells whether a retry may help).
        """

    def estimate_input_tokens(self, request: ModelRequest) -> int:
        """An upper bound of the input tokens ``request`` will be billed for.

        The budget reserves ``input + max_tokens x output price`` before each call from this
        number, so it must not be below the real count. This default needs no tokenizer: a
        token covers at least one UTF-8 byte of text, so the byte length of the JSON of the
        system prompt, messages and tools (plus a per-message allowance for the chat template)
        bounds every byte-level BPE tokenizer. Images and documents count
        :data:`ATTACHMENT_TOKENS_BOUND` each instead of their base64 bytes. Providers that can
        count exactly (a local tokenizer, a count endpoint) override it.
        """
        total = len((request.system or "").encode()) + 16
        total += _MESSAGE_BYTES.total(request.messages, operator.add, 0)
        for tool in request.tools:
            spec = {"name": tool.name, "description": tool.description, "input": tool.input_schema}
            total += 16 + len(json.dumps(spec, ensure_ascii=False, default=str).encode())
        return total

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients, models and threads held by the provider."""


ATTACHMENT_TOKENS_BOUND = 4_800
"""Tokens counted for one image or document block by the default estimate (Claude bills an
image at most about 1,600 tokens; three times that leaves room for other tokenizers)."""


class MessageMemo(Generic[_V]):
    """Remembers a pure function of a message for as long as the message lives.

    A session's history is the same message objects call after call (its provider view, whose
    messages are :class:`~chucky.server.store.ModelMessage`, never changed once appended): an
    estimate over the whole history then costs a lookup per message instead of a walk of its
    content. Messages that cannot be weakly referenced (a plain ``dict``) are computed each
    time; nothing is kept alive by the memo.
    """

    def __init__(self, compute: Callable[[Mapping[str, Any]], _V]) -> None:
        self._compute = compute
        self._known: dict[int, tuple[weakref.ref[Any], _V]] = {}

    def __call__(self, message: Mapping[str, Any]) -> _V:
        known = self._known.get(id(message))
        if known is not None and known[0]() is message:
            return known[1]
        value = self._compute(message)
        try:
            ref = weakref.ref(message, self._forget(id(message)))
        except TypeError:  # a plain dict
            return value
        self._known[id(message)] = (ref, value)
        return value

    def total(
        self, messages: Sequence[Mapping[str, Any]], add: Callable[[_V, _V], _V], zero: _V
    ) -> _V:
        """The measure summed over ``messages`` with ``add``, from ``zero``.

        Over a session's provider view (:class:`~chucky.server.store.ModelView`, which keeps
        the running totals in its ``sums``) this costs the messages appended since the last
        call; over any other sequence, a lookup per message.
        """
        sums: dict[object, Any] | None = getattr(messages, "sums", None)
        if sums is None:
            total = zero
            for message in messages:
                total = add(total, self(message))
            return total
        entry: tuple[list[Any], list[_V]] | None = sums.get(self)
        if entry is None:
            entry = sums[self] = ([], [])
        seen, running = entry
        # The view changes only at its end and appends new objects: the totals hold up to the
        # last position that still has the message they were computed with.
        valid = min(len(seen), len(messages))
        while valid and seen[valid - 1] is not messages[valid - 1]:
            valid -= 1
        del seen[valid:], running[valid:]
        total = running[-1] if running else zero
        for message in messages[valid:]:
            total = add(total, self(message))
            seen.append(message)
            running.append(total)
        return total

    def _forget(self, key: int) -> Callable[[weakref.ref[Any]], None]:
        known = self._known

        def forget(ref: weakref.ref[Any]) -> None:
            entry = known.get(key)
            if entry is not None and entry[0] is ref:
                del known[key]

        return forget


def _message_bytes(message: Mapping[str, Any]) -> int:
    return 16 + _content_bytes(message.get("content"))


_MESSAGE_BYTES: MessageMemo[int] = MessageMemo(_message_bytes)


def _content_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    if not isinstance(content, Sequence):
        return len(json.dumps(content, default=str).encode())
    total = 0
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind in ("image", "document"):
            total += ATTACHMENT_TOKENS_BOUND
        elif kind == "tool_result":
            total += 16 + _content_bytes(block.get("content"))
        else:
            total += len(
                json.dumps(block, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
            )
    return total


def tool_choice_for(choice: Any, tools: Sequence[ToolSpec]) -> dict[str, Any] | None:
    """``request.params["tool_choice"]`` in the Anthropic form, for the tools offered (pure).

    The one reading of a tool choice every provider shares. Accepts the Anthropic forms
    (``"auto"``, ``"any"``, ``"none"``, ``{"type": "auto" | "any" | "none"}``, ``{"type":
    "tool", "name": n}``) and the OpenAI ones (``"required"``, ``{"type": "function",
    "function": {"name": n}}``). A named tool is matched exactly, or by its bare name
    (``get_weather`` for ``mcp__client__get_weather``) when that is unambiguous, and is returned
    with its full name. ``None``: no tools offered, no choice, an unknown form or a tool not
    offered (the model chooses freely).
    """
    if not tools:
        return None
    kind: Any = choice
    name: Any = None
    if isinstance(choice, Mapping):
        kind, name = choice.get("type"), choice.get("name")
        function = choice.get("function")
        if kind == "function" and isinstance(function, Mapping):
            kind, name = "tool", function.get("name")
    if kind == "required":
        kind = "any"
    if kind in ("auto", "any", "none"):
        return {"type": kind}
    if kind != "tool" or not isinstance(name, str):
        return None
    exact = [tool for tool in tools if tool.name == name]
    bare = [tool for tool in tools if tool.name.rsplit("__", 1)[-1] == name]
    chosen = exact or (bare if len(bare) == 1 else [])
    return {"type": "tool", "name": chosen[0].name} if chosen else None


def redact_secret(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (an API key) replaced by ``[redacted]``; short or empty secrets
    (placeholders) are left alone."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[redacted]")
    return text


def provider_error(
    message: str,
    *,
    kind: str,
    retryable: bool,
    retry_after: float | None = None,
    **extra: Any,
) -> ProviderError:
    """A :class:`ProviderError` of ``kind``; its protocol ``reason`` follows ``retryable``.

    Args:
        message: What the client reads (no credentials, no paths).
        kind: The failure's kind (``details["kind"]``).
        retryable: Whether another attempt may succeed.
        retry_after: Seconds the provider asked to wait, if it said.
        **extra: More ``details`` (``status``, ``request_id`` ...).
    """
    details: dict[str, Any] = {"kind": kind, **extra}
    return ProviderError(message, details=details, retryable=retryable, retry_after=retry_after)


class MessageAccumulator:
    """Folds raw stream events into the final assistant message (pure, no I/O).

    Feed every event to :meth:`feed`; then read :attr:`content` (Anthropic content blocks as
    dicts, ``tool_use`` inputs parsed from their ``input_json_delta`` fragments),
    :attr:`stop_reason`, :attr:`usage`, :attr:`model` and :attr:`message_id`.
    """

    __slots__ = ("_json_parts", "content", "message_id", "model", "stop_reason", "usage")

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self.usage: dict[str, int] = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        self.stop_reason: str | None = None
        self.model: str | None = None
        self.message_id: str | None = None
        self._json_parts: dict[int, list[str]] = {}

    def _merge_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        for key in self.usage:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.usage[key] = value
            elif isinstance(value, float) and math.isfinite(value):
                self.usage[key] = int(value)

    def _block(self, index: Any) -> dict[str, Any] | None:
        if isinstance(index, int) and 0 <= index < len(self.content):
            return self.content[index]
        return None

    def feed(self, event: Mapping[str, Any]) -> None:
        """Apply one raw stream event. Unknown events are ignored."""
        kind = event.get("type")
        if kind == "content_block_delta":
            block = self._block(event.get("index"))
            delta = event.get("delta")
            if block is None or not isinstance(delta, Mapping):
                return
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                block["text"] = _str(block.get("text")) + str(delta.get("text", ""))
            elif delta_kind == "input_json_delta":
                self._json_parts.setdefault(event["index"], []).append(
                    str(delta.get("partial_json", ""))
                )
            elif delta_kind == "thinking_delta":
                block["thinking"] = _str(block.get("thinking")) + str(delta.get("thinking", ""))
            elif delta_kind == "signature_delta":
                block["signature"] = str(delta.get("signature", ""))
        elif kind == "content_block_start":
            start = event.get("content_block")
            index = event.get("index")
            if isinstance(start, Mapping) and isinstance(index, int) and index >= 0:
                # Indexes are dense and increasing in well-formed streams; pad defensively.
                while len(self.content) <= index:
                    self.content.append({"type": "text", "text": ""})
                self.content[index] = dict(start)
        elif kind == "content_block_stop":
            index = event.get("index")
            block = self._block(index)
            parts = self._json_parts.pop(index, None) if isinstance(index, int) else None
            if block is not None and parts is not None and block.get("type") == "tool_use":
                block["input"] = _parse_tool_input("".join(parts))
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, Mapping):
                self.message_id = message.get("id") or self.message_id
                self.model = message.get("model") or self.model
                self._merge_usage(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, Mapping) and delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
            self._merge_usage(event.get("usage"))

    @property
    def text(self) -> str:
        """The concatenated text blocks."""
        return "".join(_str(b.get("text")) for b in self.content if b.get("type") == "text")

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        """The ``tool_use`` blocks, in order."""
        return [b for b in self.content if b.get("type") == "tool_use"]


def _str(value: Any) -> str:
    # A malformed start event may carry a non-string text; treat it as empty.
    return value if isinstance(value, str) else ""


def _parse_tool_input(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        # A model that streams broken JSON still gets a call; the client validates and answers
        # with an error result naming the problem.
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"value": value}
