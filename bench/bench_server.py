"""What ``chucky serve`` costs per turn, measured from the outside.

``chucky serve`` runs in its own process (the scripted model, priced as the model each session
names, so the budget ledger works as in production; the bench token's budget is huge), a fresh
server and database per section. This process drives it with raw ``websockets`` frames. The
baselines are measured in the same run:

1. **latency**: sequential ``echo hi`` turns on an open session, against the round trip of the
   same frame through ``bench/raw_server.py /echo`` (bare ``websockets``, its own process);
2. **cpu**: the server process's CPU time (``/proc/<pid>/stat``) per turn over N sequential
   turns, against the raw echo server's CPU time per echo;
3. **concurrency**: S sessions of S users, connected first, each running ``sleep 1; echo ok``
   turns back to back for D seconds: turns/s against the ideal (S per second), errors, and the
   latency added to the model's 1 s;
4. **claude**: the default routing (no routing file) with ``ANTHROPIC_API_KEY`` and
   ``ANTHROPIC_BASE_URL`` pointing at ``bench/messages_standin.py`` (a local Messages API):
   a turn on ``claude-sonnet-4-5`` against one streamed call of the official ``anthropic`` SDK
   to the same stand-in;
5. **idle**: K idle initialised sessions: server RSS per session, and the turn latency of
   another session while they sit there against the same server before they were opened.

    python bench/bench_server.py [--quick] [--db sqlite|sqlite-ram|postgresql|all]
                                 [--sections latency,cpu,concurrency,claude,idle]

See ``bench/README.md`` for what each row means. Nothing is asserted: targets are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _harness import (
    BENCH,
    DB_CHOICES,
    Database,
    Samples,
    child,
    chucky_server,
    close_raw_sessions,
    databases,
    floor_server,
    fmt,
    git_state,
    machine,
    open_raw_session,
    open_raw_sessions,
    percentile,
    proc_cpu_seconds,
    proc_rss_kb,
    quiet_gc,
    raise_fd_limit,
    ratio,
    raw_server,
    raw_turn,
    table,
    turn_failure,
    user_frame,
)
from websockets.asyncio.client import ClientConnection, connect

SECTIONS = ("latency", "cpu", "concurrency", "claude", "idle")
CLAUDE_MODEL = "claude-sonnet-4-5"  # priced; routed to Anthropic (the stand-in)
SESSION_TURNS = 50  # timed turns per session: a turn's cost grows with the history
clock = time.perf_counter
ECHO_HI = user_frame("echo hi")
SLEEP_1 = user_frame("sleep 1; echo ok")


# -- raw client --------------------------------------------------------------------------------


async def timed_turns(ws: ClientConnection, frame: str, n: int, out: list[float]) -> None:
    for _ in range(n):
        started = clock()
        msg = await raw_turn(ws, frame)
        out.append(clock() - started)
        if (why := turn_failure(msg)) is not None:
            raise RuntimeError(f"turn failed: {why}")


async def echoes(ws: ClientConnection, frame: str, n: int, out: list[float] | None) -> None:
    for _ in range(n):
        started = clock()
        await ws.send(frame)
        await ws.recv()
        if out is not None:
            out.append(clock() - started)


async def sequential(url: str, rounds: int, turns: int, tag: str, out: list[float]) -> None:
    """``rounds`` fresh sessions of 5 untimed then ``turns`` timed ``echo hi`` turns."""
    for i in range(rounds):
        ws = await open_raw_session(url, f"{tag}-{i}")
        await timed_turns(ws, ECHO_HI, 5, [])
        quiet_gc()
        await timed_turns(ws, ECHO_HI, turns, out)
        await ws.close()


# -- the sections ------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything measured, keyed by database label, and what the report needs."""

    args: argparse.Namespace
    echo_url: str = ""
    echo_pid: int = 0
    floor_url: str = ""
    floor_pid: int = 0
    floor: Samples = field(default_factory=lambda: Samples("floor", unit="s"))
    floor_cpu: list[dict[str, float]] = field(default_factory=list)
    echo_rtt: Samples = field(default_factory=lambda: Samples("echo", unit="s"))
    latency: dict[str, Samples] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    echo_cpu: list[dict[str, float]] = field(default_factory=list)
    concurrency: dict[str, dict[str, Any]] = field(default_factory=dict)
    sdk: Samples = field(default_factory=lambda: Samples("sdk", unit="s"))
    claude: dict[str, Samples] = field(default_factory=dict)
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)


async def section_latency(run: Run, db: Database) -> None:
    a = run.args
    turns = Samples(db.label, unit="s")
    async with (
        chucky_server(await db.fresh_url()) as server,
        connect(f"{run.echo_url}/echo", compression=None, ping_interval=None) as echo,
    ):
        await sequential(server.url, 1, 20, "warmup", [])
        await echoes(echo, ECHO_HI, 200, None)
        await sequential(run.floor_url, 1, 20, "warmup", [])
        for i in range(a.rounds):  # alternate, so drift hits every row alike
            quiet_gc()
            await echoes(echo, ECHO_HI, a.turns, run.echo_rtt.values)
            await sequential(server.url, 1, a.turns, f"lat{i}", turns.values)
            await sequential(run.floor_url, 1, a.turns, f"lat{i}", run.floor.values)
    run.latency[db.label] = turns


async def section_cpu(run: Run, db: Database) -> None:
    a = run.args
    async with (
        chucky_server(await db.fresh_url()) as server,
        connect(f"{run.echo_url}/echo", compression=None, ping_interval=None) as echo,
    ):
        pid = server.proc.pid
        await sequential(server.url, 1, 20, "warmup", [])
        # Sessions opened (and their first turn run) before the window: only turns inside.
        count = max(1, math.ceil(a.cpu_turns / SESSION_TURNS))
        sessions = [await open_raw_session(server.url, f"cpu-{i}") for i in range(count)]
        for ws in sessions:
            await timed_turns(ws, ECHO_HI, 1, [])
        quiet_gc()
        done = 0
        cpu0, wall0 = proc_cpu_seconds(pid), clock()
        for i, ws in enumerate(sessions):
            n = min(SESSION_TURNS, a.cpu_turns - i * SESSION_TURNS)
            await timed_turns(ws, ECHO_HI, n, [])
            done += n
        cpu1, wall1 = proc_cpu_seconds(pid), clock()
        await close_raw_sessions(sessions)
        run.cpu[db.label] = {"n": done, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}
        # The baseline: the raw echo server's CPU time over --echoes round trips.
        await echoes(echo, ECHO_HI, 200, None)
        quiet_gc()
        cpu0, wall0 = proc_cpu_seconds(run.echo_pid), clock()
        await echoes(echo, ECHO_HI, a.echoes, None)
        cpu1, wall1 = proc_cpu_seconds(run.echo_pid), clock()
        run.echo_cpu.append({"n": a.echoes, "cpu": cpu1 - cpu0, "wall": wall1 - wall0})
        # The floor: the same turns on floor_server.py (a turn's durable work, no chucky code).
        sessions = [await open_raw_session(run.floor_url, f"cpu-{i}") for i in range(count)]
        for ws in sessions:
            await timed_turns(ws, ECHO_HI, 1, [])
        quiet_gc()
        cpu0, wall0 = proc_cpu_seconds(run.floor_pid), clock()
        for ws in sessions:
            await timed_turns(ws, ECHO_HI, SESSION_TURNS, [])
        cpu1, wall1 = proc_cpu_seconds(run.floor_pid), clock()
        await close_raw_sessions(sessions)
        n = count * SESSION_TURNS
        run.floor_cpu.append({"n": n, "cpu": cpu1 - cpu0, "wall": wall1 - wall0})


async def section_concurrency(run: Run, db: Database) -> None:
    a = run.args
    async with chucky_server(await db.fresh_url()) as server:
        pid = server.proc.pid
        await sequential(server.url, 1, 20, "warmup", [])
        t0 = clock()
        sockets, errors = await open_raw_sessions(
            server.url, [f"conc-{i}" for i in range(a.sessions)], a.open_concurrency
        )
        opened_s = clock() - t0
        latencies: list[float] = []
        rates: list[float] = []
        done = 0

        async def session(ws: ClientConnection, offset: float) -> None:
            nonlocal done
            # Starts spread over the model's second: a steady arrival rate, not one burst.
            await asyncio.sleep(offset)
            first = last = clock()
            deadline, n = first + a.duration, 0
            while clock() < deadline:
                started = clock()
                try:
                    async with asyncio.timeout(120):
                        msg = await raw_turn(ws, SLEEP_1)
                except Exception as exc:  # counted and reported
                    errors[f"turn: {type(exc).__name__}"] += 1
                    break
                last = clock()
                if (why := turn_failure(msg)) is not None:
                    errors[why] += 1
                    continue
                latencies.append(last - started)
                n += 1
            done += n
            if n:
                rates.append(n / (last - first))

        quiet_gc()
        cpu0, start = proc_cpu_seconds(pid), clock()
        await asyncio.gather(*(session(ws, i / len(sockets)) for i, ws in enumerate(sockets)))
        window = clock() - start
        cpu = proc_cpu_seconds(pid) - cpu0
        await close_raw_sessions(sockets)
    run.concurrency[db.label] = {
        "opened": len(sockets),
        "opened_s": opened_s,
        "window": window,
        "done": done,
        "rate": sum(rates),
        "errors": errors,
        "added": Samples("added", unit="s", values=[t - 1.0 for t in latencies]),
        "cpu_share": cpu / window,
    }


async def section_claude(run: Run, db: Database) -> None:
    import anthropic

    a = run.args
    measured = Samples(db.label, unit="s")
    async with child(sys.executable, str(BENCH / "messages_standin.py")) as api:
        env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": api.url}
        async with chucky_server(await db.fresh_url(), scripted=False, env=env) as server:
            sdk = anthropic.AsyncAnthropic(api_key="sk-test", base_url=api.url, max_retries=0)

            async def sdk_call() -> None:
                events = await sdk.messages.create(
                    model=CLAUDE_MODEL,
                    max_tokens=4096,
                    messages=[{"role": "user", "content": "echo hi"}],
                    stream=True,
                )
                async for _ in events:
                    pass

            async def chucky_turns(tag: str, n: int, out: list[float]) -> None:
                ws = await open_raw_session(server.url, tag, model=CLAUDE_MODEL)
                first = await raw_turn(ws, ECHO_HI)
                if turn_failure(first) is not None or first.get("result") != "hi":
                    raise RuntimeError(f"the turn did not reach the stand-in: {first}")
                await timed_turns(ws, ECHO_HI, 4, [])
                quiet_gc()
                await timed_turns(ws, ECHO_HI, n, out)
                await ws.close()

            for _ in range(20):
                await sdk_call()
            await chucky_turns("claude-warmup", 20, [])
            for i in range(a.rounds):
                quiet_gc()
                for _ in range(a.turns):
                    started = clock()
                    await sdk_call()
                    run.sdk.values.append(clock() - started)
                await chucky_turns(f"claude-{i}", a.turns, measured.values)
            await sdk.close()
    run.claude[db.label] = measured


async def section_idle(run: Run, db: Database) -> None:
    a = run.args
    async with chucky_server(await db.fresh_url()) as server:
        pid = server.proc.pid
        await sequential(server.url, 1, 20, "warmup", [])
        before: list[float] = []
        await sequential(server.url, a.rounds, a.turns, "before", before)
        quiet_gc()
        rss0 = proc_rss_kb(pid)
        t0 = clock()
        sockets, errors = await open_raw_sessions(
            server.url, [f"idle-{i}" for i in range(a.idle)], a.open_concurrency
        )
        opened_s = clock() - t0
        await asyncio.sleep(1.0)
        rss1 = proc_rss_kb(pid)
        cpu0, wall0 = proc_cpu_seconds(pid), clock()
        await asyncio.sleep(a.idle_watch)
        idle_cpu = (proc_cpu_seconds(pid) - cpu0) / (clock() - wall0)
        after: list[float] = []
        await sequential(server.url, a.rounds, a.turns, "after", after)
        await close_raw_sessions(sockets)
    run.idle[db.label] = {
        "opened": len(sockets),
        "opened_s": opened_s,
        "errors": errors,
        "rss0": rss0,
        "rss1": rss1,
        "idle_cpu": idle_cpu,
        "before": Samples("before", unit="s", values=before),
        "after": Samples("after", unit="s", values=after),
    }


RUNNERS: dict[str, Callable[[Run, Database], Awaitable[None]]] = {
    "latency": section_latency,
    "cpu": section_cpu,
    "concurrency": section_concurrency,
    "claude": section_claude,
    "idle": section_idle,
}


# -- report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**MISS**"


def us(seconds: float) -> str:
    return fmt(seconds * 1e6)


def report(run: Run) -> str:
    a, out = run.args, []
    if run.latency:
        echo = run.echo_rtt
        out.append(
            f"\n## 1. Sequential turn latency ({a.rounds} fresh sessions x {a.turns} timed "
            "turns per store)\n"
        )
        rows = [
            [
                "-",
                "raw echo RTT: the user frame to raw_server.py /echo and back",
                us(echo.median),
                us(echo.p90),
                "1.00x",
            ]
        ]
        floor = run.floor
        rows.append(
            [
                "sqlite (file)",
                "floor_server.py: the same turn's durable work, no chucky code",
                us(floor.median),
                us(floor.p90),
                ratio(floor.median, echo.median),
                "1.00x",
            ]
        )
        rows[0].append("-")
        for label, s in run.latency.items():
            rows.append(
                [
                    label,
                    "chucky turn: `echo hi` user frame -> its result",
                    us(s.median),
                    us(s.p90),
                    ratio(s.median, echo.median),
                    ratio(s.median, floor.median),
                ]
            )
        headers = ["store", "what is timed", "p50 µs", "p90 µs", "p50 vs echo", "vs floor"]
        out.append(table(headers, rows))
        targets = [
            [
                f"{label}: turn p50 <= 4x echo RTT p50",
                ratio(s.median, echo.median),
                verdict(s.median <= 4 * echo.median),
            ]
            for label, s in run.latency.items()
        ]
        out.append("\n" + table(["target", "measured", "verdict"], targets))
    if run.cpu:
        n = sum(e["n"] for e in run.echo_cpu)
        echo_cpu = sum(e["cpu"] for e in run.echo_cpu) / n
        echo_wall = sum(e["wall"] for e in run.echo_cpu) / n
        out.append("\n## 2. Server CPU per turn (/proc/<pid>/stat utime + stime)\n")
        rows = [
            [
                "-",
                "raw_server.py /echo: CPU per echo",
                us(echo_cpu),
                us(echo_wall),
                str(n),
                fmt(sum(e["cpu"] for e in run.echo_cpu), 2),
                "1.00x",
                "-",
            ]
        ]
        n = sum(e["n"] for e in run.floor_cpu)
        floor_cpu = sum(e["cpu"] for e in run.floor_cpu) / n
        rows.append(
            [
                "sqlite (file)",
                "floor_server.py: CPU per `echo hi` turn",
                us(floor_cpu),
                us(sum(e["wall"] for e in run.floor_cpu) / n),
                str(n),
                fmt(sum(e["cpu"] for e in run.floor_cpu), 2),
                ratio(floor_cpu, echo_cpu),
                "1.00x",
            ]
        )
        for label, c in run.cpu.items():
            rows.append(
                [
                    label,
                    "chucky serve: CPU per `echo hi` turn",
                    us(c["cpu"] / c["n"]),
                    us(c["wall"] / c["n"]),
                    str(c["n"]),
                    fmt(c["cpu"], 2),
                    ratio(c["cpu"] / c["n"], echo_cpu),
                    ratio(c["cpu"] / c["n"], floor_cpu),
                ]
            )
        headers = [
            "store",
            "server process",
            "CPU µs/op",
            "wall µs/op",
            "ops",
            "CPU s",
            "vs echo",
            "vs floor",
        ]
        out.append(table(headers, rows))
        targets = [
            [
                f"{label}: CPU per turn <= 10x CPU per echo",
                ratio(c["cpu"] / c["n"], echo_cpu),
                verdict(c["cpu"] / c["n"] <= 10 * echo_cpu),
            ]
            for label, c in run.cpu.items()
        ]
        out.append("\n" + table(["target", "measured", "verdict"], targets))
        out.append("\n(CPU time is counted in clock ticks of 10 ms: read the CPU s column.)")
    if run.concurrency:
        out.append(
            f"\n## 3. Concurrency: {a.sessions} sessions (one user each), `sleep 1; echo ok` "
            f"turns back to back for {a.duration:g} s\n"
        )
        rows = []
        for label, c in run.concurrency.items():
            added: Samples = c["added"]
            errors = sum(c["errors"].values())
            rows.append(
                [
                    label,
                    f"{c['opened']}/{a.sessions}",
                    fmt(c["opened_s"], 1),
                    fmt(c["window"], 1),
                    str(c["done"]),
                    fmt(c["rate"], 1),
                    fmt(a.sessions / 1.0, 0),
                    f"{c['rate'] / a.sessions:.3f}",
                    str(errors),
                    fmt(added.median * 1e3, 1),
                    fmt(percentile(added.values, 99) * 1e3, 1),
                    f"{100 * c['cpu_share']:.0f}%",
                ]
            )
        headers = ["store", "sessions open", "connect s", "window s", "turns ok", "turns/s"]
        headers += ["ideal/s", "fraction", "errors", "added p50 ms", "added p99 ms", "server CPU"]
        out.append(table(headers, rows))
        for label, c in run.concurrency.items():
            for why, count in c["errors"].most_common(5):
                out.append(f"- {label}: {count} x {why}")
    if run.claude:
        sdk = run.sdk
        out.append(
            f"\n## 4. Claude path: `{CLAUDE_MODEL}` through a local Messages API stand-in "
            f"({a.rounds} x {a.turns} per row)\n"
        )
        rows = [
            [
                "-",
                "anthropic SDK: messages.create(stream=True), consumed",
                us(sdk.median),
                us(sdk.p90),
                "-",
            ]
        ]
        for label, s in run.claude.items():
            rows.append(
                [
                    label,
                    "chucky turn: `echo hi` user frame -> result",
                    us(s.median),
                    us(s.p90),
                    fmt((s.median - sdk.median) * 1e3, 2),
                ]
            )
        out.append(table(["store", "what is timed", "p50 µs", "p90 µs", "p50 - SDK ms"], rows))
        targets = [
            [
                f"{label}: chucky adds <= 1 ms (p50 difference)",
                f"{(s.median - sdk.median) * 1e3:.2f} ms",
                verdict(s.median - sdk.median <= 1e-3),
            ]
            for label, s in run.claude.items()
        ]
        out.append("\n" + table(["target", "measured", "verdict"], targets))
    if run.idle:
        out.append(f"\n## 5. Idle sessions: {a.idle} initialised sessions (one user each)\n")
        rows = []
        for label, i in run.idle.items():
            kb = (i["rss1"] - i["rss0"]) / max(1, i["opened"])
            b, f = i["before"], i["after"]
            rows.append(
                [
                    label,
                    f"{i['opened']}/{a.idle}",
                    fmt(i["opened_s"], 1),
                    fmt(i["rss0"] / 1024, 1),
                    fmt(i["rss1"] / 1024, 1),
                    fmt(kb, 1),
                    f"{100 * i['idle_cpu']:.1f}%",
                    us(b.median),
                    us(f.median),
                    us(f.p90),
                    ratio(f.median, b.median),
                ]
            )
        headers = ["store", "sessions open", "connect s", "RSS before MB", "RSS after MB"]
        headers += ["KB/session", "idle CPU", "turn p50 µs (none idle)", "turn p50 µs (idle)"]
        headers += ["turn p90 µs (idle)", "p50 vs none"]
        out.append(table(headers, rows))
        for label, i in run.idle.items():
            for why, count in i["errors"].most_common(5):
                out.append(f"- {label}: {count} x {why}")
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> Run:
    run = Run(args)
    async with raw_server() as raw, floor_server() as floor, databases(args.db) as stores:
        run.echo_url, run.echo_pid = raw.url, raw.proc.pid
        run.floor_url, run.floor_pid = floor.url, floor.proc.pid
        for db in stores:
            for name in args.sections:
                print(f"{db.label}: {name}", file=sys.stderr, flush=True)
                await RUNNERS[name](run, db)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds each")
    parser.add_argument("--db", choices=[*DB_CHOICES, "all"], default="sqlite")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}"
    )
    parser.add_argument("--rounds", type=int, default=10, help="fresh sessions per latency row")
    parser.add_argument("--turns", type=int, default=50, help="timed turns per session")
    parser.add_argument("--cpu-turns", type=int, default=2000, help="turns in the CPU window")
    parser.add_argument("--echoes", type=int, default=20000, help="echoes in the CPU window")
    parser.add_argument("--sessions", type=int, default=500, help="concurrent sessions")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of turns")
    parser.add_argument("--idle", type=int, default=10_000, help="idle sessions")
    parser.add_argument("--idle-watch", type=float, default=5.0, help="seconds of idle CPU")
    parser.add_argument("--open-concurrency", type=int, default=200, help="handshakes at once")
    args = parser.parse_args()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.quick:
        args.rounds, args.turns, args.cpu_turns, args.echoes = 2, 20, 200, 2000
        args.sessions, args.duration, args.idle, args.idle_watch = 20, 3.0, 200, 1.0
    limit = raise_fd_limit()  # before any child starts: the servers inherit it
    needed = max(
        args.sessions if "concurrency" in args.sections else 0,
        args.idle if "idle" in args.sections else 0,
    )
    if needed + 100 > limit:
        print(f"(open-file limit {limit}: some of the {needed} sessions may fail to open)")
    started = datetime.datetime.now(datetime.UTC)
    run = asyncio.run(bench(args))
    print(f"# chucky server benchmarks ({started:%Y-%m-%d %H:%M} UTC)\n")
    print(f"Machine: {machine()}\n")
    print(f"Code: {git_state()}\n")
    print(
        "`chucky serve` and `bench/raw_server.py` in their own processes, a fresh server and "
        "database per section; raw `websockets` clients in this process. Medians and p90 over "
        "every sample; ratios against baselines measured in the same run."
        + (" **Quick run: a smoke test, the figures mean little.**" if args.quick else "")
    )
    print(report(run))


if __name__ == "__main__":
    main()
