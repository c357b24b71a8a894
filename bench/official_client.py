"""The official client's side of the benchmarks. Runs under the official ``chucky-sdk==0.2.0``.

``bench_client.py`` runs this file with the interpreter of the official client's venv (in
isolated mode, so ``import chucky`` is the official package) and one JSON argument::

    {"url": ..., "token": ..., "turns": N, "session_turns": S, "warmup": W, "cold": C,
     "tool_url": ... | null}

It uses only the official public API, and does what the bench does with our client:

* ``turns``: N timed turns of ``echo hi`` (``send`` + iterate ``stream()`` to the ``result``),
  in fresh sessions of S turns, each opened by a first untimed turn and W warm-up turns;
* ``cold``: C times, a new session's first turn (connect, ``ready``, ``init``, the turn);
* ``tool_url``: one turn on the raw tool server (``bench/raw_server.py``), which times the
  client tool round trips itself; the handler is an ``@tool`` from ``create_mcp_server``.

Prints one JSON line: ``{"turn_ns": [...], "turn_cpu_ns": mean, "cold_ns": [...],
"tool_cpu_ns": total}`` (CPU times are this process's: per warm turn, and for the whole tool
turn).
"""

import asyncio
import gc
import json
import sys
import time

from chucky import Chucky, create_mcp_server, text_result, tool


@tool("get_time", "Get the current time")
async def get_time():
    return text_result("12:00")


async def turn(session, message):
    await session.send(message)
    async for msg in session.stream():
        if msg.get("type") in ("result", "error"):
            return msg
    raise RuntimeError("the turn ended without a result")


async def warm_turns(url, token, n, per_session, warmup):
    clock = time.perf_counter_ns
    timings = []
    cpu = 0
    while len(timings) < n:
        client = Chucky(url=url, token=token)
        session = client.create_session()
        await turn(session, "echo hi")  # connects
        for _ in range(warmup):
            await turn(session, "echo hi")
        gc.collect()
        cpu0 = time.process_time_ns()
        for _ in range(min(per_session, n - len(timings))):
            t0 = clock()
            await session.send("echo hi")
            async for msg in session.stream():
                if msg.get("type") == "result":
                    break
            timings.append(clock() - t0)
        cpu += time.process_time_ns() - cpu0
        await session.close()
        await client.close()
    return timings, cpu / len(timings)


async def cold_turns(url, token, n):
    clock = time.perf_counter_ns
    timings = []
    for _ in range(n):
        client = Chucky(url=url, token=token)
        session = client.create_session()
        t0 = clock()
        await turn(session, "echo hi")
        timings.append(clock() - t0)
        await session.close()
        await client.close()
    return timings


async def tool_turn(url, token):
    client = Chucky(
        url=url, token=token, mcp_servers={"bench": create_mcp_server("bench", [get_time])}
    )
    session = client.create_session()
    await session.send("go")  # connects: not part of the CPU time
    cpu0 = time.process_time_ns()
    last = None
    async for msg in session.stream():
        last = msg
    cpu = time.process_time_ns() - cpu0
    if last is None or last.get("type") != "result":
        raise RuntimeError(f"tool turn failed: {last}")
    await session.close()
    await client.close()
    return cpu


async def main():
    spec = json.loads(sys.argv[1])
    out = {}
    if spec.get("turns"):
        out["turn_ns"], out["turn_cpu_ns"] = await warm_turns(
            spec["url"],
            spec["token"],
            spec["turns"],
            spec.get("session_turns", spec["turns"]),
            spec.get("warmup", 0),
        )
    if spec.get("cold"):
        out["cold_ns"] = await cold_turns(spec["url"], spec["token"], spec["cold"])
    if spec.get("tool_url"):
        out["tool_cpu_ns"] = await tool_turn(spec["tool_url"], spec["token"])
    print(json.dumps(out))


asyncio.run(main())
