"""Prompt prefix reuse of the local model (issue 14): a call evaluates only what is new.

The cache's bookkeeping is tested pure; reuse itself on the real SmolLM2 model, by the
provider's counters (prompt tokens evaluated and reused), never by timing.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from chucky.errors import ProviderError
from chucky.server.providers.base import MessageAccumulator, ModelRequest, ToolSpec
from chucky.server.providers.llamacpp_prefix import (
    PrefixCache,
    PrefixStats,
    SavedPrefix,
    common_prefix,
)

# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "shared"),
    [
        ([], [1, 2], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2, 3, 4], 3),
        ([1, 2, 3, 4], [1, 2], 2),
        ([1, 2, 3], [9, 2, 3], 0),
        (list(range(1000)), [*range(777), -1, *range(778, 1000)], 777),
        (list(range(1000)), [*range(999), -1], 999),
    ],
)
def test_common_prefix(a: list[int], b: list[int], shared: int) -> None:
    assert common_prefix(a, b) == shared == common_prefix(b, a)


def _saved(tokens: list[int], size: int = 10) -> SavedPrefix:
    return SavedPrefix(tuple(tokens), state=b"", size=size)


def test_the_best_state_shares_the_longest_prefix() -> None:
    cache = PrefixCache(100)
    cache.put(_saved([1, 2, 3, 4]))
    cache.put(_saved([1, 2, 9, 9, 9]))
    cache.put(_saved([7, 7]))
    best, shared = cache.best([1, 2, 3, 5])
    assert best is not None and best.tokens == (1, 2, 3, 4) and shared == 3
    assert cache.best([8]) == (None, 0)


def test_least_recently_used_states_are_evicted_to_fit_the_cap() -> None:
    cache = PrefixCache(25)
    assert cache.put(_saved([1])) == 0
    assert cache.put(_saved([2])) == 0
    cache.best([1, 5])  # [1] is now the most recently used
    assert cache.put(_saved([3])) == 1  # 30 > 25: [2] goes
    assert [e.tokens for e in cache.entries] == [(1,), (3,)]
    assert cache.size == 20
    # Larger than the whole cap: not kept, nothing evicted for it.
    assert cache.put(_saved([4], size=26)) == 0
    assert len(cache) == 2


def test_a_state_replaces_the_states_it_extends() -> None:
    cache = PrefixCache(100)
    cache.put(_saved([1, 2]))
    cache.put(_saved([1, 2, 3]))
    assert [e.tokens for e in cache.entries] == [(1, 2, 3)]
    # A prefix of a kept state adds nothing.
    cache.put(_saved([1, 2]))
    assert [e.tokens for e in cache.entries] == [(1, 2, 3)]
    assert cache.covers([1, 2]) and not cache.covers([1, 3])


# -- the real model ------------------------------------------------------------------------------

_IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def _real() -> None:
    try:
        import llama_cpp  # noqa: F401

        from chucky.server.providers.llamacpp import default_model_path

        default_model_path()
    except (ImportError, ProviderError) as exc:  # pragma: no cover - depends on the environment
        if _IN_CI:
            raise
        pytest.skip(f"the local model cannot run here: {exc}")


WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather in a city.",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def _provider(**settings: Any) -> Any:
    from chucky.server.providers.llamacpp import LlamaCppProvider

    # n_ctx differs from every other test's, so this module's models are its own.
    return LlamaCppProvider(n_ctx=2048, seed=7, repeat_penalty=1.3, **settings)


def _request(messages: list[dict[str, Any]], **kwargs: Any) -> ModelRequest:
    params = {"temperature": 0.0, **kwargs.pop("params", {})}
    kwargs.setdefault("max_tokens", 24)
    return ModelRequest(model="local", system=SYSTEM, messages=messages, params=params, **kwargs)


async def _call(provider: Any, request: ModelRequest) -> tuple[MessageAccumulator, PrefixStats]:
    """One call: the reply and what the call itself evaluated and reused."""
    await provider.load()
    before = PrefixStats(**{k: getattr(provider.prefix_stats, k) for k in PrefixStats.__slots__})
    accumulator = MessageAccumulator()
    async for event in provider.stream(request):
        accumulator.feed(event)
    after = provider.prefix_stats
    delta = PrefixStats(**{k: getattr(after, k) - getattr(before, k) for k in before.__slots__})
    return accumulator, delta


def _assistant(reply: MessageAccumulator) -> dict[str, Any]:
    """The reply as the transcript keeps it (tool calls renumbered ``toolu_0``...)."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    for index, call in enumerate(reply.tool_uses):
        blocks.append({**call, "id": f"toolu_{index}"})
    return {"role": "assistant", "content": blocks or [{"type": "text", "text": ""}]}


async def _conversation(provider: Any, user: str, turns: int = 2) -> list[tuple[Any, Any, int]]:
    """``turns`` plain turns: (reply, the call's counters, its prompt's token count) each."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": user}]
    out = []
    for turn in range(turns):
        request = _request(list(messages))
        await provider.load()
        length = provider.estimate_input_tokens(request)
        reply, stats = await _call(provider, request)
        out.append((reply, stats, length))
        messages += [_assistant(reply), {"role": "user", "content": f"And then? ({turn})"}]
    return out


@pytest.mark.usefixtures("_real")
async def test_a_second_turn_evaluates_only_the_new_tokens() -> None:
    provider = _provider()
    try:
        (_, one, length_1), (_, two, length_2) = await _conversation(provider, "Name a colour.")
    finally:
        await provider.aclose()
    assert one.evaluated + one.reused == length_1
    assert two.evaluated + two.reused == length_2
    # The whole first prompt (and the reply, as the model wrote it) is reused.
    assert two.reused >= length_1
    assert two.evaluated <= length_2 - length_1
    assert two.restored == 0


@pytest.mark.usefixtures("_real")
async def test_a_tool_round_reuses_the_prompt_of_the_call_before() -> None:
    provider = _provider()
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first_request = _request(
        [question],
        tools=[WEATHER],
        params={"tool_choice": {"type": "tool", "name": "get_weather"}},
        max_tokens=48,
    )
    try:
        await provider.load()
        length_1 = provider.estimate_input_tokens(first_request)
        call, _ = await _call(provider, first_request)
        assert call.tool_uses, call.text
        result = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "Sunny"}],
        }
        second_request = _request(
            [question, _assistant(call), result],
            tools=[WEATHER],
            params={"tool_choice": {"type": "none"}},
        )
        length_2 = provider.estimate_input_tokens(second_request)
        answer, stats = await _call(provider, second_request)
    finally:
        await provider.aclose()
    assert answer.text and not answer.tool_uses
    # Everything but the first call's directive ("Call the tool get_weather now.", at the
    # end of its last user message) is reused: the tool call as the model wrote it included.
    assert stats.reused >= length_1 - 16, (stats, length_1, length_2)
    assert stats.evaluated <= length_2 - length_1 + 16


@pytest.mark.usefixtures("_real")
async def test_two_interleaved_sessions_keep_their_prefixes() -> None:
    provider = _provider()
    sessions: list[list[dict[str, Any]]] = [
        [{"role": "user", "content": "Name a fruit."}],
        [{"role": "user", "content": "Name a river in Europe, and say where it flows."}],
    ]
    lengths: list[list[int]] = [[], []]
    counters: list[list[PrefixStats]] = [[], []]
    try:
        for turn in range(2):
            for index, messages in enumerate(sessions):  # A, B, A, B
                request = _request(list(messages))
                await provider.load()
                lengths[index].append(provider.estimate_input_tokens(request))
                reply, stats = await _call(provider, request)
                counters[index].append(stats)
                messages += [_assistant(reply), {"role": "user", "content": f"Another? {turn}"}]
    finally:
        await provider.aclose()
    for index in (0, 1):
        second = counters[index][1]
        assert second.restored == 1, second  # its own state, saved when the other came in
        assert second.reused >= lengths[index][0], (index, second, lengths[index])
        assert second.evaluated <= lengths[index][1] - lengths[index][0]


@pytest.mark.usefixtures("_real")
@pytest.mark.parametrize("megabytes", [2, 256])
async def test_a_small_cache_evicts_the_least_recently_used_state(megabytes: int) -> None:
    # 2 MiB hold one state of these ~50-token sessions (SmolLM2: ~23 KB a token and ~200 KB of
    # logits), not two; 256 MiB hold them all.
    provider = _provider(prompt_cache_mb=megabytes)
    sessions = [[{"role": "user", "content": f"Say {word}."}] for word in ("yes", "no", "maybe")]
    try:
        for messages in sessions:
            await _call(provider, _request(messages))
        _, again = await _call(provider, _request(sessions[0]))
        stats = provider.prefix_stats
    finally:
        await provider.aclose()
    if megabytes == 2:
        assert stats.evicted >= 1, stats
        # The first session's state is gone: it evaluates again what follows "Say".
        assert again.restored == 0 and again.evaluated > 1, again
    else:
        assert again.restored == 1 and again.evaluated == 1, again


@pytest.mark.usefixtures("_real")
async def test_results_are_identical_with_and_without_prefix_reuse() -> None:
    async def run(provider: Any) -> tuple[list[str], int]:
        try:
            texts = []
            a = await _conversation(provider, "Name a colour.", turns=3)
            b = await _conversation(provider, "Name an animal.", turns=2)
            texts = [reply.text for reply, _, _ in a + b]
            stats = provider.prefix_stats
            return texts, stats.reused
        finally:
            await provider.aclose()

    reused_texts, reused = await run(_provider())
    plain_texts, none_reused = await run(_provider(prompt_cache_mb=0))
    assert none_reused == 0 and reused > 0
    assert reused_texts == plain_texts
    assert all(reused_texts)
