"""What serving the embedded model costs: ``llama-cpp-python`` called directly vs ``chucky serve``.

Same model (the default SmolLM2-135M GGUF), same settings as the ``llamacpp`` provider's
defaults (``n_ctx`` 4096, llama.cpp's default thread count, ``n_batch`` 1), same prompt, same
``max_tokens``, greedy sampling (temperature 0, fixed seed), so both modes generate the same
tokens. Two modes, interleaved (direct, served, direct, served, ...) after one warm-up each:

* **direct** (the baseline): ``llama_cpp.Llama(...).create_chat_completion(messages,
  stream=True, ...)`` in this process, as a user of ``llama-cpp-python`` would call it;
* **served**: ``chucky serve`` in its own process with a routing file that sends the model
  name to the ``llamacpp`` provider, driven by our client from this process:
  ``client.stream(prompt, include_partial_messages=True)``, a fresh session per turn.

The two never run at the same time: the direct model sits idle in this process while the
server generates, and the server is idle while the direct model generates.

Definitions, identical for both modes:

* **TTFT**: from the call (``create_chat_completion`` / ``client.stream``) to the first
  non-empty text delta. The served figure includes the client's connect and handshake
  (about 1 ms on loopback, see ``docs/benchmarks.md`` section 4).
* **decode tok/s**: ``(deltas - 1) / (last delta - first delta)``: one text delta per sampled
  token in both modes (``llama-cpp-python`` streams one chunk per token and the provider
  forwards each chunk as one ``text_delta``), so this is the token rate after the first token
  as seen by the consumer. The output token count (``usage`` when served, deltas when direct)
  is printed to show both runs generated the same length.

    python bench/bench_local_model.py [--repeats 20] [--max-tokens 96] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    PROJECT_ID,
    SECRET,
    bench_token,
    child,
    fmt,
    machine,
    percentile,
    ratio,
    table,
)

PROMPT = "Write a long story about a lighthouse keeper and the sea."
MODEL = "smollm2-local"
SEED = 7


@dataclass
class Run:
    ttft_s: float
    deltas: int
    decode_s: float
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return (self.deltas - 1) / self.decode_s if self.deltas > 1 and self.decode_s > 0 else 0


@dataclass
class Mode:
    label: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    def percentile(self, attribute: str, q: float) -> float:
        return percentile([getattr(run, attribute) for run in self.runs], q)


def _routing_file(directory: Path) -> Path:
    path = directory / "routing.toml"
    path.write_text(
        f'fallback = "{MODEL}"\n\n'
        "[providers.local]\n"
        'type = "llamacpp"\n\n'
        f"[models.{MODEL}]\n"
        'provider = "local"\n'
        'model = "smollm2"\n'
        "price = { input = 0.0, output = 0.0 }\n",
        encoding="utf-8",
    )
    return path


def _direct_model() -> Any:
    import llama_cpp

    from chucky.server.providers.llamacpp import default_model_path

    # The provider's defaults: n_ctx 4096, n_threads None (llama.cpp's default), n_batch 1.
    return llama_cpp.Llama(
        model_path=str(default_model_path()),
        n_ctx=4096,
        n_threads=None,
        n_batch=1,
        n_ubatch=1,
        verbose=False,
    )


def _direct(llama: Any, max_tokens: int) -> Run:
    started = time.perf_counter()
    first = last = 0.0
    deltas = 0
    for chunk in llama.create_chat_completion(
        [{"role": "user", "content": PROMPT}],
        stream=True,
        max_tokens=max_tokens,
        temperature=0.0,
        seed=SEED,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            if not deltas:
                first = last
            deltas += 1
    return Run(first - started, deltas, last - first, deltas)


async def _served(client: Any, max_tokens: int) -> Run:
    started = time.perf_counter()
    first = last = 0.0
    deltas = 0
    output_tokens = 0
    async for event in client.stream(
        PROMPT,
        model=MODEL,
        include_partial_messages=True,
        max_tokens=max_tokens,
        temperature=0.0,
        seed=SEED,
    ):
        if event.type == "message" and event.data:
            last = time.perf_counter()
            if not deltas:
                first = last
            deltas += 1
        elif event.type == "result":
            output_tokens = event.data.usage.output_tokens
        elif event.type == "error":
            raise RuntimeError(f"served turn failed: {event.data}")
    return Run(first - started, deltas, last - first, output_tokens)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.max_tokens = 2, 16

    from chucky import Chucky

    llama = await asyncio.to_thread(_direct_model)
    direct, served = Mode("direct: llama-cpp-python"), Mode("served: chucky serve + client")
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
                "--project",
                f"{PROJECT_ID}:{SECRET}",
                "--config",
                str(_routing_file(Path(directory))),
            ) as server,
            Chucky(bench_token(), server.url, timeout=120) as client,
        ):
            # Warm-up: the server loads its model on the first turn; caches settle on both.
            _direct(llama, args.max_tokens)
            await _served(client, args.max_tokens)
            for _ in range(args.repeats):
                direct.runs.append(_direct(llama, args.max_tokens))
                served.runs.append(await _served(client, args.max_tokens))
    llama.close()

    base_rate, base_ttft = direct.median("tokens_per_s"), direct.median("ttft_s")
    rows = [
        [
            mode.label,
            fmt(mode.median("ttft_s") * 1e3, 1),
            fmt(mode.percentile("ttft_s", 90) * 1e3, 1),
            fmt((mode.median("ttft_s") - base_ttft) * 1e3, 1),
            fmt(mode.median("tokens_per_s"), 1),
            fmt(mode.percentile("tokens_per_s", 10), 1),
            ratio(mode.median("tokens_per_s"), base_rate),
            f"{min(r.output_tokens for r in mode.runs)}-{max(r.output_tokens for r in mode.runs)}",
        ]
        for mode in (direct, served)
    ]
    # Paired: each served run against the direct run just before it (drift cancels out).
    pairs = list(zip(direct.runs, served.runs, strict=True))
    rate_ratio = statistics.median(s.tokens_per_s / d.tokens_per_s for d, s in pairs)
    added_ttft = statistics.median((s.ttft_s - d.ttft_s) * 1e3 for d, s in pairs)
    print(f"prompt: {PROMPT!r}; max_tokens {args.max_tokens}; {args.repeats} repeats per mode")
    print(machine())
    print(
        table(
            [
                "mode",
                "TTFT p50 ms",
                "TTFT p90 ms",
                "p50 - direct ms",
                "decode tok/s p50",
                "tok/s p10",
                "p50 vs direct",
                "output tokens",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            ["target", "measured", "verdict"],
            [
                [
                    "served >= 0.95x direct tok/s (median of paired ratios)",
                    f"{rate_ratio:.3f}x",
                    "pass" if rate_ratio >= 0.95 else "MISS",
                ],
                [
                    "added TTFT < 20 ms (median of paired differences)",
                    f"{added_ttft:.1f} ms",
                    "pass" if added_ttft < 20 else "MISS",
                ],
            ],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
