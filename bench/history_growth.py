"""Server-side reproduction: the cost of a turn grows with the session's history.

Runs ``chucky serve`` (scripted model) in its own process and ONE raw ``websockets`` client
session that sends ``echo hi`` turns back to back; prints the median turn latency per bucket
of turns. A client-side constant cost would give a flat line; here every turn re-copies and
re-measures the whole transcript (see docs/benchmarks.md, "Server findings").

Usage: ``python bench/history_growth.py [--buckets 8] [--per-bucket 400] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _harness import bench_token, chucky_server, table
from bench_client import ECHO_HI, init_frame, raw_open, raw_turn


async def main(buckets: int, per_bucket: int) -> None:
    async with chucky_server() as server:
        ws = await raw_open(server.url, bench_token(), init_frame())
        rows = []
        for bucket in range(buckets):
            times = []
            for _ in range(per_bucket):
                t0 = time.perf_counter_ns()
                await raw_turn(ws, ECHO_HI)
                times.append(time.perf_counter_ns() - t0)
            first = bucket * per_bucket
            rows.append(
                [
                    f"{first}-{first + per_bucket - 1}",
                    f"{2 * first}",
                    f"{statistics.median(times) / 1000:,.0f}",
                ]
            )
        await ws.close()
    print(table(["turns", "transcript messages at start", "median turn us"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--per-bucket", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.buckets, args.per_bucket = 2, 50
    asyncio.run(main(args.buckets, args.per_bucket))
