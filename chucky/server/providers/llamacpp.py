"""The embedded local provider: a GGUF model run in-process by ``llama-cpp-python``.

Theory of operation
-------------------

A model file is loaded once per process per settings and shared by every
:class:`LlamaCppProvider` asking for the same (:mod:`.llamacpp_model`); loading runs in a worker
thread. Each loaded model owns ONE generation thread (a single-worker executor), so requests
queue first in, first out and the event loop never runs model code. Chunks travel from the
worker to the async generator through an :class:`asyncio.Queue` fed with
``loop.call_soon_threadsafe``. A consumer that stops early (interrupt, cancelled turn) sets its
request's stop flag, which the worker checks after every sampled token, so the next request is
not kept waiting.

The prompt is formatted here (the model's chat template from the GGUF metadata, ChatML when it
has none; the messages from :func:`~.llamacpp_prompt.prompt_messages`) and tokenized once, so
the input token count is exact; the output count is the number of tokens sampled (the
end-of-turn token included when the model ends its turn).

Each call evaluates only the prompt tokens its model's context does not hold yet: the worker
first asks :class:`~.llamacpp_prefix.PromptContext` for the longest prefix of the prompt it
holds, in the live context or in a saved state of another session (a bounded cache,
``prompt_cache_mb``). A session's next turn, and a tool round's next call, evaluate only what
was added since (:attr:`LlamaCppProvider.prefix_stats` counts it).

Tools: when tools are offered, generation is constrained by a grammar built from the JSON schema
returned by :func:`reply_schema`: the reply is a compact JSON object that is either ``{"text":
...}`` or ``{"tool": <offered name>, "arguments": <that tool's input>}``; a forced
``tool_choice`` drops the text alternative (and keeps only the named tool), ``"none"`` keeps
only it. The grammar fixes the key order, so the first key tells the alternatives apart while
the reply is generated: the text alternative streams, its string value decoded piece by piece
(escapes and surrogate pairs split across tokens included) by
:class:`~chucky.server.providers.json_stream.ReplyTextDecoder`, one ``text_delta`` per decoded
piece; a tool call becomes a ``tool_use`` block once generation is complete
(:func:`parse_reply`). A reply that is neither -- a tool call cut by ``max_tokens``, or a reply
cut before its first key was complete -- is dropped: the message has no content block and
``stop_reason: "max_tokens"``. Half a tool call is never shown as text.

Batched prompt evaluation (``n_batch=512``) is used where it works. ``llama-cpp-python`` 0.3.36
compiled with ``-march=native`` (pip's default) by a GCC whose ``_tile_loadconfig`` is an asm
statement (Debian 12's GCC 12.2) crashes the process in batched decode on a CPU with AMX (Intel
Xeon, 4th generation and later): the asm tells the compiler it reads 8 bytes of the 64-byte
tile configuration, so the stores of its rows and columns are dropped as dead, and
``ldtilecfg`` in ggml's AMX matrix kernel raises a general protection fault on what is left
(one token at a time is a matrix-vector product and never reaches that kernel). The README's
install compiles llama.cpp without ggml's AMX kernels (``-U__AMX_INT8__``); for builds made
otherwise, unless ``n_batch`` is given, the first load asks a child process whether batched
evaluation survives (:mod:`.llamacpp_probe`, cached per build, CPU and model) and falls back to
one token at a time (~5-20 ms per prompt token with the default 135M model) only where it does
not, with a warning saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from chucky.errors import ProviderError

from ..._redact import redacting_logger
from ..ids import prefixed_id
from .base import ModelRequest, Provider, provider_error
from .json_stream import ReplyTextDecoder
from .llamacpp_model import (
    DEFAULT_MODEL_FILE,
    LlamaSettings,
    LoadedModel,
    default_model_path,
    default_threads,
    load_model,
)
from .llamacpp_prefix import DEFAULT_PROMPT_CACHE_MB, PrefixStats
from .llamacpp_probe import BATCHED_N_BATCH, batched_decode_works
from .llamacpp_prompt import parse_reply, prompt_messages, reply_grammar, reply_schema
from .openai_translate import chat_params

__all__ = [
    "DEFAULT_MODEL_FILE",
    "LlamaCppProvider",
    "default_model_path",
    "parse_reply",
    "reply_schema",
]

logger = redacting_logger("chucky.server.providers.llamacpp")


@dataclass(frozen=True, slots=True)
class _Prepared:
    tokens: list[int]
    stop: list[str]
    kwargs: dict[str, Any]
    grammar_schema: dict[str, Any] | None


def _prepare(model: LoadedModel, request: ModelRequest) -> _Prepared:
    schema = (
        reply_schema(request.tools, request.params.get("tool_choice")) if request.tools else None
    )
    formatted = model.formatter(messages=prompt_messages(request))
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


def _generate(model: LoadedModel, prepared: _Prepared, halt: threading.Event, emit: _Emit) -> None:
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
            grammar = LlamaGrammar.from_string(
                reply_grammar(prepared.grammar_schema), verbose=False
            )
        # The context keeps the longest prefix of the prompt it holds; generation evaluates
        # the rest (llama-cpp-python sees its context hold a prefix and keeps it).
        model.context.prepare(prepared.tokens)
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

    Every setting is also a key of the provider's table in a routing file
    (``[providers.local] n_threads = 4``).

    Args:
        model_path: The GGUF file; ``None`` means :func:`default_model_path`.
        n_ctx: The context window in tokens.
        n_threads: CPU threads sampling tokens (``None``: half the CPUs this process may run
            on, at least one, as llama.cpp chooses).
        n_threads_batch: CPU threads evaluating prompts (``None``: every CPU this process may
            run on).
        n_batch: Prompt tokens evaluated per batch. ``None`` (the default): 512 where a probe
            in a child process shows batched evaluation works with this build on this machine
            (:mod:`.llamacpp_probe`, its verdict cached), else 1, with a warning saying why.
        n_ubatch: Prompt tokens per compute step, at most ``n_batch`` (``None``: ``n_batch``).
        prompt_cache_mb: MiB of saved prompt states kept per loaded model, so that sessions
            taking turns each find their transcript's prefix (least recently used dropped
            first); ``0`` turns prefix reuse off (every call evaluates its whole prompt).
        chat_format: ``None`` (the model's own chat template), ``"chatml"`` or the name of a
            template in the GGUF metadata (``"chat_template.<name>"``).
        seed: The sampling seed used when a request gives none (``None``: random).
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
        n_threads_batch: int | None = None,
        n_batch: int | None = None,
        n_ubatch: int | None = None,
        prompt_cache_mb: int = DEFAULT_PROMPT_CACHE_MB,
        chat_format: str | None = None,
        seed: int | None = None,
        repeat_penalty: float | None = None,
    ) -> None:
        self._model_path = model_path
        self._repeat_penalty = repeat_penalty
        self._n_ctx = n_ctx
        self._n_threads = None if n_threads is None else max(1, n_threads)
        self._n_threads_batch = None if n_threads_batch is None else max(1, n_threads_batch)
        self._chat_format = chat_format
        self._seed = seed
        self._n_batch = None if n_batch is None else max(1, n_batch)
        self._n_ubatch = None if n_ubatch is None else max(1, n_ubatch)
        self._prompt_cache_mb = max(0, prompt_cache_mb)
        self._loaded: LoadedModel | None = None
        self._settings: LlamaSettings | None = None
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

    @property
    def settings(self) -> LlamaSettings | None:
        """The loaded model's settings (threads, batch, context, cache); ``None`` before the
        first load."""
        return self._settings

    @property
    def prefix_stats(self) -> PrefixStats | None:
        """Prompt tokens evaluated and reused by the loaded model, counted since it was loaded
        (shared by the providers using that model); ``None`` before the first load."""
        return None if self._loaded is None else self._loaded.context.stats

    async def _model(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(self._load_now)
        return self._loaded

    def _load_now(self) -> LoadedModel:
        path = self._path()
        if self._n_batch is None and Path(path).is_file():
            verdict = batched_decode_works(path)
            self._n_batch = BATCHED_N_BATCH if verdict.ok else 1
            if not verdict.ok:
                # A warning when found out, then (the verdict cached) a line at INFO.
                logger.log(
                    logging.WARNING if verdict.probed else logging.INFO,
                    "batched prompt evaluation does not work with this llama.cpp build on this "
                    "machine (%s): prompts are evaluated one token at a time (n_batch=1); "
                    "the README's install of the local extra builds one that works",
                    verdict.why,
                )
        n_batch = self._n_batch or 1
        sampling, evaluating = default_threads()
        settings = LlamaSettings(
            path=path,
            n_ctx=self._n_ctx,
            n_threads=self._n_threads or sampling,
            n_threads_batch=self._n_threads_batch or evaluating,
            n_batch=n_batch,
            n_ubatch=min(self._n_ubatch or n_batch, n_batch),
            prompt_cache_mb=self._prompt_cache_mb,
            chat_format=self._chat_format,
        )
        model = load_model(settings)
        self._settings = settings
        logger.info(
            "local model %s: %d threads sampling, %d evaluating prompts in batches of %d "
            "(compute steps of %d), context of %d tokens, %d MiB of saved prompt states",
            Path(path).name,
            settings.n_threads,
            settings.n_threads_batch,
            settings.n_batch,
            settings.n_ubatch,
            settings.n_ctx,
            settings.prompt_cache_mb,
        )
        return model

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


def _map_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    message = str(exc)
    kind = "context_overflow" if "context window" in message else "local_model_error"
    error = provider_error(f"local model failed: {message}", kind=kind, retryable=False)
    error.__cause__ = exc
    return error
