"""What serving the embedded model costs: ``llama-cpp-python`` called directly vs ``chucky serve``.

Same model (the default SmolLM2-135M GGUF), greedy or seeded sampling, same prompts. The direct
baseline is ``llama_cpp.Llama(model_path, n_ctx=4096)`` with llama-cpp-python's own defaults
(batches of 512, its thread counts), as a user of the library would call it -- except where
batched evaluation crashes this build (the probe of ``chucky.server.providers.llamacpp_probe``
says so), where both sides evaluate one token at a time and the tables say so. ``chucky serve``
runs in its own process with a routing file sending ``smollm2-local`` to the ``llamacpp``
provider with its defaults and ``smollm2-cold`` to one with prefix reuse off
(``prompt_cache_mb = 0``); our client drives it from this process. Modes alternate (direct,
served, direct, served, ...) after a warm-up each; the two never run at the same time.

Three measurements:

1. **Story** (decode): a short prompt and ``--max-tokens`` of a story, temperature 0.
   Decode tok/s = ``(deltas - 1) / (last delta - first delta)``: one text delta per sampled
   token on both sides.
2. **Turns**: a ~300-token prompt (a system prompt made unique per repeat, so nothing is
   reused from an earlier repeat, and a question), then a second turn of the same session
   adding a ~20-token message. TTFT (call to first text delta) of: the direct cold call
   (``Llama.reset()`` first), the served first turn (cold), the served second turn (its
   prefix reused), and the same second turn with nothing reused (the session forked onto
   ``smollm2-cold``: the same full prompt, evaluated cold).
3. **Demo**: ``python -m chucky.cli demo`` from process start to exit, and the seconds it
   reports "in the model", against the same two model calls (prompts, grammar, sampling)
   made directly with ``llama-cpp-python`` on a fresh ``Llama``.

    python bench/bench_local_model.py [--repeats 10] [--max-tokens 96] [--demos 5] [--quick]
                                      [--one-token-at-a-time]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import PROJECT_ID, SECRET, bench_token, child, fmt, machine, ratio, table

STORY = "Write a long story about a lighthouse keeper and the sea."
MODEL, COLD_MODEL = "smollm2-local", "smollm2-cold"
SEED = 7
# ~280 tokens of system prompt: the history of a session that has been going on for a while.
SYSTEM = (
    "You are the assistant of a small harbour town's visitor centre. You answer questions "
    "about the harbour, the lighthouse, the ferry timetable, the fish market, the museum of "
    "maritime history, the coastal footpath and the weather. Keep answers short and friendly. "
    "The ferry leaves at 8:00, 12:00 and 17:30 from pier 2 and takes forty minutes to reach the "
    "island; tickets are sold on board and cost six euros, children under twelve travel free. "
    "The fish market opens at 6:00 on weekdays and closes when the catch is sold, usually "
    "before noon. The museum opens from 10:00 to 18:00, closed on Mondays, and its top floor "
    "has a view of the whole bay. The lighthouse can be visited on Saturdays with a guide; the "
    "climb has 214 steps. The coastal footpath runs twelve kilometres to the next village and "
    "is closed in strong winds. When you do not know something, say so and suggest asking at "
    "the desk, which is open every day from 9:00 to 17:00. Never invent opening hours, prices "
    "or timetables that are not written here. If a visitor asks about the weather, tell them "
    "that the forecast is posted by the door every morning at 7:00."
)
QUESTION = "When does the first ferry leave, and how long is the crossing?"
FOLLOW_UP = "And is the lighthouse open on Saturdays? How many steps are there to the top?"
TURN_TOKENS = 24


def _routing_file(directory: Path, n_batch: int | None) -> Path:
    batch = "" if n_batch is None else f"n_batch = {n_batch}\n"
    path = directory / "routing.toml"
    path.write_text(
        f'fallback = "{MODEL}"\n\n'
        f'[providers.local]\ntype = "llamacpp"\n{batch}\n'
        f'[providers.cold]\ntype = "llamacpp"\nprompt_cache_mb = 0\n{batch}\n'
        f'[models.{MODEL}]\nprovider = "local"\nmodel = "smollm2"\n'
        "price = { input = 0.0, output = 0.0 }\n\n"
        f'[models.{COLD_MODEL}]\nprovider = "cold"\nmodel = "smollm2"\n'
        "price = { input = 0.0, output = 0.0 }\n",
        encoding="utf-8",
    )
    return path


def _batched_ok(path: str) -> bool:
    from chucky.server.providers.llamacpp_probe import batched_decode_works

    return batched_decode_works(path).ok


def _direct_model(path: str, batched: bool) -> Any:
    import llama_cpp

    # llama-cpp-python's defaults (n_batch 512, its thread counts), n_ctx as the provider's.
    extra = {} if batched else {"n_batch": 1, "n_ubatch": 1}
    return llama_cpp.Llama(model_path=path, n_ctx=4096, verbose=False, **extra)


@dataclass
class Stream:
    ttft_s: float
    deltas: int
    decode_s: float
    input_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return (self.deltas - 1) / self.decode_s if self.deltas > 1 and self.decode_s > 0 else 0


def _direct(llama: Any, messages: list[dict[str, str]], max_tokens: int, *, cold: bool) -> Stream:
    if cold:
        llama.reset()
    started = time.perf_counter()
    first = last = 0.0
    deltas = 0
    for chunk in llama.create_chat_completion(
        messages, stream=True, max_tokens=max_tokens, temperature=0.0, seed=SEED
    ):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            if not deltas:
                first = last
            deltas += 1
    return Stream(first - started, deltas, last - first)


async def _served(session: Any, message: str) -> tuple[Stream, str]:
    """One turn of ``session``: its stream figures and the session's id."""
    started = time.perf_counter()
    first = last = 0.0
    deltas = 0
    tokens = 0
    await session.send(message)
    async for msg in session.stream():
        if msg.type == "stream_event":
            if msg.text_delta:
                last = time.perf_counter()
                if not deltas:
                    first = last
                deltas += 1
        elif msg.type == "result":
            tokens = msg.usage.input_tokens
        elif msg.type == "error":
            raise RuntimeError(f"served turn failed: {msg}")
    return Stream(first - started, deltas, last - first, tokens), str(session.session_id)


@dataclass
class Column:
    label: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


async def _measure(args: argparse.Namespace, path: str, batched: bool) -> list[str]:
    from chucky import Chucky

    llama = await asyncio.to_thread(_direct_model, path, batched)
    story = {k: Column(k) for k in ("direct ttft", "served ttft", "direct tok/s", "served tok/s")}
    turns = {
        k: Column(k)
        for k in ("direct cold", "served cold", "served 2nd turn", "2nd turn, nothing reused")
    }
    lengths: list[int] = []
    options = {"include_partial_messages": True, "temperature": 0.0, "seed": SEED}
    with tempfile.TemporaryDirectory(prefix="chucky-bench-") as directory:
        async with (
            child(
                sys.executable,
                "-m",
                "chucky.cli",
                "serve",
                "--port",
                "0",
                "--db",
                f"sqlite+aiosqlite:///{directory}/bench.db",
                "--config",
                str(_routing_file(Path(directory), None if batched else 1)),
                # The project through the environment: --project would put its secret in ps.
                env={**os.environ, "CHUCKY_PROJECTS": f"{PROJECT_ID}:{SECRET}"},
            ) as server,
            Chucky(bench_token(), server.url, timeout=300) as client,
        ):

            async def served_story() -> Stream:
                session = client.create_session(model=MODEL, max_tokens=args.max_tokens, **options)
                async with session:
                    return (await _served(session, STORY))[0]

            story_messages = [{"role": "user", "content": STORY}]
            # Warm-up: both load their models; the cold model too.
            _direct(llama, story_messages, args.max_tokens, cold=True)
            await served_story()
            cold = client.create_session(model=COLD_MODEL, max_tokens=4, **options)
            async with cold:
                await _served(cold, "hello")
            for _ in range(args.repeats):
                # Both sides keep the story's prompt in their context from the run before.
                direct = _direct(llama, story_messages, args.max_tokens, cold=False)
                served = await served_story()
                story["direct ttft"].values.append(direct.ttft_s)
                story["served ttft"].values.append(served.ttft_s)
                story["direct tok/s"].values.append(direct.tokens_per_s)
                story["served tok/s"].values.append(served.tokens_per_s)
            for repeat in range(args.repeats):
                system = f"Visitor centre desk {repeat} of {time.time_ns()}. {SYSTEM}"
                messages = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": QUESTION},
                ]
                direct = _direct(llama, messages, TURN_TOKENS, cold=True)
                session = client.create_session(
                    model=MODEL, system_prompt=system, max_tokens=TURN_TOKENS, **options
                )
                async with session:
                    first, session_id = await _served(session, QUESTION)
                    # The same second turn on a fork of the session, on the model that
                    # reuses nothing: the same full prompt, evaluated cold.
                    forked = client.resume_session(
                        session_id,
                        model=COLD_MODEL,
                        fork_session=True,
                        system_prompt=system,
                        max_tokens=TURN_TOKENS,
                        **options,
                    )
                    async with forked:
                        again, _ = await _served(forked, FOLLOW_UP)
                    second, _ = await _served(session, FOLLOW_UP)
                turns["direct cold"].values.append(direct.ttft_s)
                turns["served cold"].values.append(first.ttft_s)
                turns["served 2nd turn"].values.append(second.ttft_s)
                turns["2nd turn, nothing reused"].values.append(again.ttft_s)
                lengths = [first.input_tokens, second.input_tokens, again.input_tokens]
    llama.close()
    rate = story["served tok/s"].median / story["direct tok/s"].median
    cold_ratio = turns["served cold"].median / turns["direct cold"].median
    reuse_ratio = turns["served 2nd turn"].median / turns["2nd turn, nothing reused"].median
    return [
        table(
            ["story (decode)", "direct", "served", "served vs direct"],
            [
                ["TTFT p50 ms"]
                + [fmt(story[k].median * 1e3, 1) for k in ("direct ttft", "served ttft")]
                + [ratio(story["served ttft"].median, story["direct ttft"].median)],
                ["decode tok/s p50"]
                + [fmt(story[k].median, 1) for k in ("direct tok/s", "served tok/s")]
                + [ratio(story["served tok/s"].median, story["direct tok/s"].median)],
            ],
        ),
        "",
        f"prompt tokens served: first turn {lengths[0]}, second turn {lengths[1]} "
        f"({lengths[2]} when forked)",
        table(
            ["TTFT p50 ms", *turns],
            [[""] + [fmt(column.median * 1e3, 1) for column in turns.values()]],
        ),
        "",
        table(
            ["target", "measured", "verdict"],
            [
                _verdict("served cold TTFT <= 1.15x direct", cold_ratio, 1.15),
                _verdict("2nd turn TTFT <= 0.3x the same prompt cold", reuse_ratio, 0.3),
                _verdict("served decode >= 0.95x direct tok/s", rate, 0.95, at_least=True),
            ],
        ),
    ]


def _verdict(what: str, value: float, bound: float, *, at_least: bool = False) -> list[str]:
    ok = value >= bound if at_least else value <= bound
    return [what, f"{value:.3f}x", "pass" if ok else "MISS"]


# -- chucky demo ------------------------------------------------------------------------------


def _demo_requests() -> list[Any]:
    """The two model calls of ``chucky demo``, recorded from an in-process run."""
    from chucky.demo import DemoOptions, run_demo
    from chucky.server.providers import llamacpp

    recorded: list[Any] = []
    original = llamacpp.LlamaCppProvider.stream

    def recording(self: Any, request: Any) -> Any:
        # A copy: the agent loop goes on appending to the transcript it passed.
        recorded.append(dataclasses.replace(request, messages=copy.deepcopy(request.messages)))
        return original(self, request)

    llamacpp.LlamaCppProvider.stream = recording  # type: ignore[method-assign]
    try:
        asyncio.run(run_demo(DemoOptions(), out=io.StringIO()))
    finally:
        llamacpp.LlamaCppProvider.stream = original  # type: ignore[method-assign]
    return recorded


def _direct_demo_calls(path: str, batched: bool, requests: list[Any]) -> float:
    """The same calls on a fresh ``Llama``, one after the other as a program would make them:
    their prompts, grammar and sampling exactly as the provider builds them."""
    from llama_cpp import llama_chat_format
    from llama_cpp.llama_grammar import LlamaGrammar

    from chucky.server.providers.llamacpp_prompt import (
        prompt_messages,
        reply_grammar,
        reply_schema,
    )
    from chucky.server.providers.openai_translate import chat_params
    from chucky.server.routing import LOCAL_REPEAT_PENALTY

    llama = _direct_model(path, batched)

    def text(token: int) -> str:
        return bytes(llama.detokenize([token], special=True)).decode() if token != -1 else ""

    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=text(llama.token_eos()),
        bos_token=text(llama.token_bos()),
    )
    calls = []
    for request in requests:
        formatted = formatter(messages=prompt_messages(request))
        tokens = llama.tokenize(
            formatted.prompt.encode(), add_bos=not formatted.added_special, special=True
        )
        schema = reply_schema(request.tools, request.params.get("tool_choice"))
        params = chat_params(request)
        params.pop("stop", None)
        calls.append((tokens, reply_grammar(schema), formatted.stop, params))
    started = time.perf_counter()
    for tokens, grammar, stop, params in calls:
        for _ in llama.create_completion(
            tokens,
            stream=True,
            stop=stop,
            grammar=LlamaGrammar.from_string(grammar, verbose=False),
            repeat_penalty=LOCAL_REPEAT_PENALTY,
            **params,
        ):
            pass
    seconds = time.perf_counter() - started
    llama.close()
    return seconds


def _demo_once() -> tuple[float, float]:
    """``chucky demo`` as a user runs it: (process start to exit, seconds in the model)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "chucky.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - started
    match = re.search(r"\(([\d.]+) s in the model\)", done.stdout)
    if match is None:
        raise RuntimeError(f"no model time in the demo's output:\n{done.stdout}")
    return wall, float(match.group(1))


def _measure_demo(args: argparse.Namespace, path: str, batched: bool) -> list[str]:
    requests = _demo_requests()
    _demo_once()  # warm-up: the file cache, the probe's verdict
    walls, models, directs = [], [], []
    for _ in range(args.demos):
        wall, model = _demo_once()
        walls.append(wall)
        models.append(model)
        directs.append(_direct_demo_calls(path, batched, requests))
    wall, model, direct = (statistics.median(v) for v in (walls, models, directs))
    return [
        f"chucky demo: {len(requests)} model calls, transcripts of "
        f"{[len(json.dumps(r.messages)) for r in requests]} characters; {args.demos} runs",
        table(
            ["chucky demo p50", "seconds"],
            [
                ["process start to exit", fmt(wall, 2)],
                ["in the model (as the demo reports it)", fmt(model, 2)],
                ["the same two calls, llama-cpp-python directly", fmt(direct, 2)],
            ],
        ),
        "",
        table(
            ["target", "measured", "verdict"],
            [_verdict("demo model time <= 1.2x the same calls direct", model / direct, 1.2)],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--demos", type=int, default=5, help="chucky demo runs")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--one-token-at-a-time",
        action="store_true",
        help="n_batch 1 on both sides (as where batched evaluation crashes); no demo runs",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.max_tokens, args.demos = 1, 16, 1

    from chucky.server.providers.llamacpp import default_model_path

    path = str(default_model_path())
    batched = _batched_ok(path) and not args.one_token_at_a_time
    lines = asyncio.run(_measure(args, path, batched))
    if args.demos > 0 and not args.one_token_at_a_time:
        lines += ["", *_measure_demo(args, path, batched)]
    print(
        f"story: {STORY!r}, max_tokens {args.max_tokens}; turns: ~300-token prompt, "
        f"{TURN_TOKENS} tokens a reply; {args.repeats} repeats"
    )
    print(
        "batched prompt evaluation: "
        + (
            "works (direct: llama-cpp-python's n_batch 512)"
            if batched
            else "off (--one-token-at-a-time, or it crashes this build): n_batch 1 on both sides"
        )
    )
    print(machine())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
