"""Prompt prefix reuse for the local model: a call evaluates only the tokens that are new.

Theory of operation
-------------------

Evaluating a prompt fills the model's KV cache, one entry per token; a call whose prompt
starts with tokens already in the cache need not evaluate them again. Every turn of a session
re-sends the whole transcript, and the transcript of turn N+1 starts with turn N's prompt and
reply (:mod:`.llamacpp_prompt` keeps it so), so a session's next call has only its new message
to evaluate -- if the cache still holds the session's tokens.

Each loaded model has ONE context (one KV cache), used by one generation thread, so it holds
whichever prompt ran last. :class:`PromptContext` knows which tokens that is (``input_ids[:
n_tokens]``, public attributes of ``llama_cpp.Llama``) and keeps the states of other prompts in
a :class:`PrefixCache`: saved contexts keyed by their tokens, least recently used evicted when
their total size passes a cap (in bytes). Before each call, :meth:`PromptContext.prepare`

1. finds the longest common prefix of the new prompt with the live context and with every saved
   state;
2. if a saved state shares more, saves the live context first (when part of it would be lost:
   another session's prefix) and loads that state;
3. if the live context shares more (the same session going on), keeps it -- saving it first
   when the part about to be dropped is long enough to be someone else's (more than
   :data:`KEEP_TAIL` tokens);
4. marks the context as holding exactly that common prefix (at most the prompt's length - 1:
   the last token is always evaluated, so the logits are fresh), and returns its length.

``Llama.generate`` then sees its context hold a prefix of the prompt, removes the KV entries
after it and evaluates only the rest. Its own prefix check (llama-cpp-python >= 0.3) would do
the same for the live context; doing it here makes the count exact and lets saved states in.

States are saved and loaded through llama.cpp's state API (``llama_cpp.llama_state_get_data``
/ ``llama_state_set_data`` on ``Llama.ctx``), not ``Llama.save_state()``: that also copies the
model's logits buffer, ``n_batch x n_vocab`` floats -- 96 MiB per state with ``n_batch=512``
and SmolLM2's 49,152-token vocabulary -- which the next call never reads (it always evaluates
at least one token). The llama.cpp state of a context holds its used KV cells only: about 23 KB
a token for SmolLM2-135M.

Counters (:class:`PrefixStats`) say how many prompt tokens were evaluated and how many reused,
so tests assert reuse without timing.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_PROMPT_CACHE_MB",
    "KEEP_TAIL",
    "PrefixCache",
    "PrefixStats",
    "PromptContext",
    "SavedPrefix",
    "common_prefix",
]

DEFAULT_PROMPT_CACHE_MB: Final = 256
"""The saved states' total size cap of one loaded model (``prompt_cache_mb``)."""

KEEP_TAIL: Final = 16
"""Tokens of the live context that may be dropped without saving it first: the few tokens
where a reply's tokens and its re-rendering in the next prompt differ are not worth a state."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    # Binary search on slice equality: C-speed comparisons, O(n log n) at worst.
    low, high = 0, n  # a[:low] == b[:low]; a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if list(a[low:middle]) == list(b[low:middle]):
            low = middle
        else:
            high = middle
    return low


@dataclass(slots=True)
class PrefixStats:
    """What prefix reuse did, counted since the model was loaded.

    Attributes:
        calls: Prompts prepared.
        evaluated: Prompt tokens evaluated.
        reused: Prompt tokens taken from the KV cache (live or restored) instead.
        restored: Saved states loaded.
        saved: States saved.
        evicted: Saved states dropped to stay under the size cap.
    """

    calls: int = 0
    evaluated: int = 0
    reused: int = 0
    restored: int = 0
    saved: int = 0
    evicted: int = 0


@dataclass(frozen=True, slots=True)
class SavedPrefix:
    """One saved context: the tokens it holds and llama.cpp's state bytes."""

    tokens: tuple[int, ...]
    state: Any
    size: int


class PrefixCache:
    """Saved contexts keyed by their tokens, least recently used first out (pure).

    Args:
        capacity_bytes: The cap of the states' total size; a state larger than the cap is not
            kept.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, capacity_bytes)
        self._entries: OrderedDict[tuple[int, ...], SavedPrefix] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The saved states' total size in bytes."""
        return self._size

    @property
    def entries(self) -> list[SavedPrefix]:
        """The saved states, least recently used first."""
        return list(self._entries.values())

    def best(self, tokens: Sequence[int]) -> tuple[SavedPrefix | None, int]:
        """The saved state sharing the longest prefix with ``tokens``, and that length (0:
        none shares any). Marks it used."""
        best: SavedPrefix | None = None
        length = 0
        for entry in self._entries.values():
            shared = common_prefix(entry.tokens, tokens)
            if shared > length:
                best, length = entry, shared
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best, length

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a saved state starts with all of ``tokens`` (saving them would add nothing)."""
        key = tuple(tokens)
        return any(entry.tokens[: len(key)] == key for entry in self._entries.values())

    def put(self, entry: SavedPrefix) -> int:
        """Keep ``entry`` as the most recently used; returns how many states were evicted.

        States whose tokens are a prefix of ``entry``'s go (it serves them at least as well);
        then the least recently used go until the total fits the cap. An entry larger than the
        cap is not kept.
        """
        if entry.size > self.capacity_bytes or self.covers(entry.tokens):
            return 0
        for key in [k for k in self._entries if entry.tokens[: len(k)] == k]:
            self._size -= self._entries.pop(key).size
        self._entries[entry.tokens] = entry
        self._size += entry.size
        evicted = 0
        while self._size > self.capacity_bytes:
            _, old = self._entries.popitem(last=False)
            self._size -= old.size
            evicted += 1
        return evicted

    def clear(self) -> None:
        """Drop every saved state."""
        self._entries.clear()
        self._size = 0


class PromptContext:
    """One loaded model's context and its saved prefixes (used by its generation thread only).

    Args:
        llama: The ``llama_cpp.Llama``.
        capacity_bytes: The saved states' size cap; ``0`` turns prefix reuse off altogether
            (every call evaluates its whole prompt).
    """

    def __init__(self, llama: Any, capacity_bytes: int) -> None:
        self.llama = llama
        self.enabled = capacity_bytes > 0
        self.cache = PrefixCache(capacity_bytes)
        self.stats = PrefixStats()

    def live_tokens(self) -> list[int]:
        """The tokens the context holds now."""
        return [int(t) for t in self.llama.input_ids[: self.llama.n_tokens]]

    def prepare(self, tokens: Sequence[int]) -> int:
        """Make the context hold the longest prefix of ``tokens`` it can; returns its length.

        The caller's generation evaluates the rest (at least the last token).
        """
        self.stats.calls += 1
        if not self.enabled or not tokens:
            self.llama.reset()
            self.stats.evaluated += len(tokens)
            return 0
        live = self.live_tokens()
        live_shared = common_prefix(live, tokens)
        saved, saved_shared = self.cache.best(tokens)
        if saved is not None and saved_shared > live_shared:
            if live_shared < len(live):
                self._save(live)
            shared = saved_shared if self._load(saved) else 0
            self.stats.restored += 1
        else:
            if len(live) - live_shared > KEEP_TAIL:
                self._save(live)
            shared = live_shared
        reused = min(shared, len(tokens) - 1)
        self.llama.n_tokens = reused
        self.stats.reused += reused
        self.stats.evaluated += len(tokens) - reused
        return reused

    def _save(self, live: list[int]) -> None:
        if not live or self.cache.covers(live):
            return
        llama = self.llama
        import llama_cpp

        size = int(llama_cpp.llama_state_get_size(llama.ctx))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_get_data(llama.ctx, buffer, size))
        if written <= 0 or written > size:
            return  # nothing usable: the context simply is not kept
        state = buffer if written == size else bytes(memoryview(buffer)[:written])
        self.stats.saved += 1
        self.stats.evicted += self.cache.put(SavedPrefix(tuple(live), state, written))

    def _load(self, saved: SavedPrefix) -> bool:
        import llama_cpp

        llama = self.llama
        source = saved.state
        if isinstance(source, bytes):
            source = (ctypes.c_uint8 * saved.size).from_buffer_copy(source)
        if int(llama_cpp.llama_state_set_data(llama.ctx, source, saved.size)) != saved.size:
            llama.reset()  # the context is unusable as it is: start from nothing
            return False
        llama.input_ids[: len(saved.tokens)] = saved.tokens
        llama.n_tokens = len(saved.tokens)
        return True

    def clear(self) -> None:
        """Forget the saved states (the live context stays)."""
        self.cache.clear()
