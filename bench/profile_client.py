"""Profile our client's hot paths (the loops of ``bench_client.py``), servers out of process.

Usage::

    python bench/profile_client.py stream   # session.stream() of replayed `stream 5000` turns
    python bench/profile_client.py turns    # echo turns on an open session (chucky serve)
    python bench/profile_client.py tool     # tool round trips (raw tool server)
    python bench/profile_client.py --quick  # a smoke run: each loop for 1 s

By default the loop runs under :mod:`cProfile` and the top functions are printed (by own time
and by cumulative time), then a table of the loops' rates. ``--no-profile`` just runs the loop,
for a sampling profiler::

    py-spy record -o stream.svg -- python bench/profile_client.py stream --no-profile
    py-spy top -- python bench/profile_client.py stream --no-profile --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import bench_token, chucky_server, fmt, raw_server, table
from bench_client import get_time, our_turn, record_stream_turn

from chucky import Chucky

LOOPS = ("stream", "turns", "tool")


async def loop(
    args: argparse.Namespace, profiler: cProfile.Profile | None
) -> tuple[int | None, float]:
    """Run the loop ``args.what``; how many frames or turns it did (``None`` for ``tool``, which
    does not count them) and in how many seconds."""
    token = bench_token()
    deadline_s = args.seconds
    async with chucky_server() as server:
        if args.what == "stream":
            frames = await record_stream_turn(server.url, token)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "turn.json"
                path.write_text(json.dumps(frames), encoding="utf-8")
                async with (
                    raw_server("--replay", str(path)) as replay,
                    Chucky(token, f"{replay.url}/replay", include_partial_messages=True) as c,
                ):
                    session = c.create_session()
                    await our_turn(session, "go")
                    return await _run(
                        lambda: our_turn(session, "go"), deadline_s, profiler, len(frames)
                    )
        if args.what == "turns":
            async with Chucky(token, server.url) as c:
                session = c.create_session()
                await our_turn(session, "echo hi")
                return await _run(lambda: our_turn(session, "echo hi"), deadline_s, profiler, 1)
    # tool
    async with raw_server() as raw, Chucky(token, f"{raw.url}/tool?n=200000&warmup=0&label=p") as c:
        session = c.create_session(tools=[get_time])
        task = asyncio.ensure_future(our_turn(session, "go"))
        await asyncio.sleep(0.5)
        if profiler:
            profiler.enable()
        await asyncio.sleep(deadline_s)
        if profiler:
            profiler.disable()
        task.cancel()
        return None, deadline_s


async def _run(
    once: Any, seconds: float, profiler: cProfile.Profile | None, per: int
) -> tuple[int, float]:
    for _ in range(3):
        await once()
    n = 0
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    while time.perf_counter() - start < seconds:
        await once()
        n += 1
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(f"{n} iterations in {elapsed:.1f} s: {n * per / elapsed:,.0f} per s", file=sys.stderr)
    return n * per, elapsed


def _short(func: tuple[str, int, str]) -> tuple[str, int, str]:
    # Like pstats.func_strip_path, but keep the package (chucky/messages.py is not
    # websockets/asyncio/messages.py).
    filename, line, name = func
    for marker in ("site-packages/", f"{Path(__file__).resolve().parent.parent}/", "lib/python"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return filename, line, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=LOOPS, help="the loop (--quick: all three)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s per loop")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.top = 1.0, 10
    if args.what is None and not args.quick:
        parser.error("which loop: stream, turns or tool")
    profiler = None if args.no_profile else cProfile.Profile()
    rows = []
    for what in [args.what] if args.what else LOOPS:
        args.what = what
        items, elapsed = asyncio.run(loop(args, profiler))
        unit = {"stream": "frames", "turns": "turns", "tool": "(tool calls not counted)"}[what]
        rate = "-" if items is None else fmt(items / elapsed)
        rows.append([what, f"{elapsed:.1f}", unit, "-" if items is None else str(items), rate])
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stdout)
        pstats.func_strip_path = _short  # type: ignore[assignment]  # used by strip_dirs()
        stats.strip_dirs()
        print("\n== by own time ==")
        stats.sort_stats("tottime").print_stats(args.top)
        print("\n== by cumulative time ==")
        stats.sort_stats("cumulative").print_stats(args.top)
    print(table(["loop", "seconds", "counted", "count", "per s"], rows))


if __name__ == "__main__":
    main()
