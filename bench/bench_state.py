"""What keeping state costs the server: turn latency and throughput on SQLite and PostgreSQL.

Every turn now reserves its model call and its compute in the ledger, stores its messages and
settles afterwards (several transactions per turn). This bench runs ``chucky serve`` (scripted
model) in its own process on each engine and drives it with raw WebSocket frames from this
process:

* **turn latency**: one session, sequential ``echo hi`` turns; median and p90 of the time from
  sending the ``user`` frame to receiving the ``result``;
* **throughput**: N sessions of N users at once, each running sequential turns; turns per second.

The baseline row in the same run is the server with its store on a RAM disk (``/dev/shm``)
SQLite file, which isolates fsync cost from the SQL work. PostgreSQL runs with durability off
(the test cluster's settings), so its row is SQL + network cost, not disk.

    python bench/bench_state.py [--turns 300] [--sessions 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import Samples, bench_token, chucky_server, fmt, machine, ratio, table, user_frame
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


async def _session(url: str, user: str, turns: int, samples: list[float]) -> None:
    async with connect(f"{url}?token={bench_token(user)}", compression=None) as ws:
        assert json.loads(await ws.recv())["payload"]["action"] == "ready"
        await ws.send(json.dumps({"type": "init", "payload": {}}))
        await ws.recv()  # session_info
        frame = user_frame("echo hi")
        for _ in range(turns):
            started = time.perf_counter()
            await ws.send(frame)
            while json.loads(await ws.recv())["type"] != "result":
                pass
            samples.append(time.perf_counter() - started)


async def _measure(database_url: str, turns: int, sessions: int) -> tuple[Samples, float]:
    async with chucky_server(database_url) as server:
        url = server.url
        await _session(url, "warmup", 20, [])
        latency: list[float] = []
        await _session(url, "solo", turns, latency)
        per_session = max(1, turns // sessions)
        started = time.perf_counter()
        await asyncio.gather(
            *(_session(url, f"user-{i}", per_session, []) for i in range(sessions))
        )
        elapsed = time.perf_counter() - started
        return Samples("turn", values=latency), per_session * sessions / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    turns = 40 if args.quick else args.turns

    engines: list[tuple[str, str]] = []
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: ASYNC240 - before any I/O
    with (
        tempfile.TemporaryDirectory(dir=shm) as ram,
        tempfile.TemporaryDirectory() as disk,
    ):
        engines.append(("sqlite (RAM disk, baseline)", f"sqlite+aiosqlite:///{ram}/bench.db"))
        engines.append(("sqlite (file)", f"sqlite+aiosqlite:///{disk}/bench.db"))
        cluster = None
        try:
            from support.postgres import PostgresUnavailable, start_cluster, with_database

            try:
                cluster = start_cluster()
                import asyncpg

                admin = await asyncpg.connect(cluster.url.replace("+asyncpg", ""))
                await admin.execute("CREATE DATABASE bench")
                await admin.close()
                engines.append(("postgresql (fsync off)", with_database(cluster.url, "bench")))
            except PostgresUnavailable as exc:
                print(f"(PostgreSQL skipped: {exc})")
            results = []
            for name, url in engines:
                latency, throughput = await _measure(url, turns, args.sessions)
                results.append((name, latency, throughput))
        finally:
            if cluster is not None:
                cluster.stop()

    base_latency, base_throughput = results[0][1].median, results[0][2]
    rows = [
        [
            name,
            fmt(latency.median * 1e6),
            fmt(latency.p90 * 1e6),
            ratio(latency.median, base_latency),
            fmt(throughput),
            ratio(throughput, base_throughput),
        ]
        for name, latency, throughput in results
    ]
    print(f"turns: {turns} sequential; throughput: {args.sessions} concurrent sessions")
    print(machine())
    print(
        table(
            ["store", "turn p50 µs", "turn p90 µs", "p50 vs base", "turns/s", "turns/s vs base"],
            rows,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
