"""Client benchmarks: our client against the official client and raw ``websockets`` floors.

Run ``python bench/bench_client.py`` (``--quick`` for a smoke run, ``--json PATH`` to keep the
samples). Everything is measured in ONE run, in interleaved rounds so that a noisy neighbour or
CPU frequency drift hits every row alike; the first round is a warm-up and is discarded.

Servers (each in its own process, so server CPU is never billed to the client under test):

* ``chucky serve --port 0`` with the scripted model (turn latency, throughput, connect);
* ``bench/raw_server.py``: a bare ``websockets`` server (echo floor, tool round trip timed on
  the server side, and a replay of a recorded ``stream`` turn to make the client the bottleneck).

The official client (``chucky-sdk==0.2.0``) runs in its own venv through
``bench/official_client.py``. See ``bench/README.md`` for what each row means.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import (
    Samples,
    bench_token,
    chucky_server,
    fmt,
    git_state,
    machine,
    quiet_gc,
    ratio,
    raw_server,
    run_official,
    table,
    user_frame,
)
from websockets.asyncio.client import ClientConnection as RawSocket
from websockets.asyncio.client import connect

from chucky import Chucky, text_result, tool
from chucky.client.connection import ClientConnection, ConnectionSettings
from chucky.client.settings import resolve
from chucky.messages import ErrorMessage

clock = time.perf_counter_ns

MODEL = "claude-sonnet-5-5"
STREAM_N = 5000


@tool("get_time", "Get the current time")
async def get_time() -> Any:
    return text_result("12:00")


GET_TIME = {
    "name": "bench",
    "version": "1.0.0",
    "tools": [
        {
            "name": "get_time",
            "description": "Get the current time",
            "inputSchema": {"type": "object", "properties": {}},
            "executeIn": "client",
        }
    ],
}


def init_frame(**options: Any) -> str:
    return json.dumps({"type": "init", "payload": {"model": MODEL, **options}})


def tool_result_frame(call_id: str) -> str:
    return json.dumps(
        {
            "type": "tool_result",
            "payload": {
                "callId": call_id,
                "result": {"content": [{"type": "text", "text": "12:00"}], "isError": False},
            },
        },
        separators=(",", ":"),
    )


ECHO_HI = user_frame("echo hi")
CALL_TOOL = user_frame("call get_time {}")
STREAM = user_frame(f"stream {STREAM_N}")
TOOL_CALL_PREFIX = '{"type":"tool_call"'


# -- raw websockets clients (the floors) -----------------------------------------------------


def with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}token={token}"


async def raw_open(url: str, token: str, init: str) -> RawSocket:
    """Connect, wait for ``ready``, send ``init``: the protocol handshake, nothing else."""
    ws = await connect(with_token(url, token), ping_interval=None, max_size=16 * 1024 * 1024)
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "control" and frame["payload"].get("action") == "ready":
            break
        if frame.get("type") == "error":
            raise RuntimeError(frame)
    await ws.send(init)
    return ws


async def raw_turn(ws: RawSocket, turn: str) -> int:
    """One turn at the protocol level: send the ``user`` frame, read (and decode) every frame up
    to the ``result``, answering ``tool_call`` frames. Returns the number of frames read."""
    await ws.send(turn)
    frames = 0
    while True:
        frame = json.loads(await ws.recv())
        frames += 1
        kind = frame["type"]
        if kind == "result":
            return frames
        if kind == "tool_call":
            await ws.send(tool_result_frame(frame["payload"]["callId"]))
        elif kind == "error":
            raise RuntimeError(frame)


async def record_stream_turn(url: str, token: str) -> list[str]:
    """The frames of one ``stream`` turn from a real server, as sent (to replay them)."""
    ws = await raw_open(url, token, init_frame(includePartialMessages=True))
    await raw_turn(ws, ECHO_HI)  # the session_info and first-turn frames go by
    await ws.send(STREAM)
    frames: list[str] = []
    while True:
        text = await ws.recv()
        assert isinstance(text, str)
        frames.append(text)
        if json.loads(text)["type"] == "result":
            break
    await ws.close()
    return frames


async def raw_turn_nodecode(ws: RawSocket, turn: str, result_prefix: str) -> int:
    """Like :func:`raw_turn` for a streaming turn, without decoding: the end is spotted by the
    ``result`` frame's prefix."""
    await ws.send(turn)
    frames = 0
    recv = ws.recv
    while True:
        text = await recv()
        frames += 1
        if text.startswith(result_prefix):  # type: ignore[arg-type]
            return frames


# -- our client ------------------------------------------------------------------------------


async def our_turn(session: Any, message: str) -> int:
    await session.send(message)
    n = 0
    async for msg in session.stream():
        n += 1
        if isinstance(msg, ErrorMessage):
            raise msg.exception
    return n


def our_connection(url: str, token: str) -> ClientConnection:
    settings = ConnectionSettings(
        url=url,
        token=token,
        timeout=30.0,
        keepalive_interval=60.0,
        tool_timeout=60.0,
        max_queue=1024,
    )
    spec = resolve({"model": MODEL}, {})
    return ClientConnection(settings, spec.options.to_wire(), spec.registry)


# -- the run ---------------------------------------------------------------------------------

Turn = Callable[[], Awaitable[Any]]
Opener = Callable[[], Awaitable[tuple[Turn, Callable[[], Awaitable[None]]]]]


class Bench:
    """One run: every section once per round, round 0 being a discarded warm-up.

    The scripted server's cost per turn grows with the session's history (see
    docs/benchmarks.md), so every client runs its turns in fresh sessions of the same length
    (``--session-turns``, after the same warm-up): all rows see the same history lengths.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.token = bench_token()
        self.rows: dict[str, Samples] = {}
        self.frames_per_stream_turn = 0
        self.result_prefix = ""
        self.cpu: dict[str, list[float]] = {}  # client CPU us per turn, one value per round
        self.keep = False

    def row(self, key: str, label: str, unit: str = "us") -> Samples:
        if key not in self.rows:
            self.rows[key] = Samples(label, unit)
        return self.rows[key]

    def record(self, key: str, label: str, values_ns: list[int]) -> None:
        if self.keep:
            self.row(key, label).add_ns(values_ns)

    async def sessions(self, opener: Opener, cpu_key: str) -> list[int]:
        """``--turns`` timed turns, in fresh sessions of ``--session-turns`` turns each.

        ``opener`` connects, runs the warm-up turns, and returns (one turn, close). The
        process CPU time of the timed turns is recorded per turn: the client's own cost,
        free of the server's share of the latency.
        """
        a = self.args
        out: list[int] = []
        cpu = 0
        while len(out) < a.turns:
            turn, close = await opener()
            quiet_gc()
            cpu0 = time.process_time_ns()
            for _ in range(min(a.session_turns, a.turns - len(out))):
                t0 = clock()
                await turn()
                out.append(clock() - t0)
            cpu += time.process_time_ns() - cpu0
            await close()
        if self.keep:
            self.cpu.setdefault(cpu_key, []).append(cpu / len(out) / 1000)
        return out

    def raw_opener(self, init: str, frame: str = ECHO_HI) -> Opener:
        async def opener() -> tuple[Turn, Callable[[], Awaitable[None]]]:
            ws = await raw_open(self.server.url, self.token, init)
            for _ in range(1 + self.args.warmup):
                await raw_turn(ws, frame)
            return (lambda: raw_turn(ws, frame)), ws.close

        return opener

    def ours_opener(self, **options: Any) -> Opener:
        async def opener() -> tuple[Turn, Callable[[], Awaitable[None]]]:
            client = Chucky(self.token, self.server.url, **options)
            session = client.create_session()
            for _ in range(1 + self.args.warmup):
                await our_turn(session, "echo hi")
            return (lambda: our_turn(session, "echo hi")), client.close

        return opener

    # -- sections ----------------------------------------------------------------------------

    async def turn_latency(self) -> None:
        a = self.args
        echo_ws = self.echo_ws
        quiet_gc()
        cpu0 = time.process_time_ns()
        floor = []
        for _ in range(a.turns):
            t0 = clock()
            await echo_rtt(echo_ws)
            floor.append(clock() - t0)
        if self.keep:
            self.cpu.setdefault("rtt", []).append((time.process_time_ns() - cpu0) / a.turns / 1000)
        raw = await self.sessions(self.raw_opener(init_frame()), "raw_turn")
        mine = await self.sessions(self.ours_opener(), "ours_turn")
        official = await run_official(
            {
                "url": self.server.url,
                "token": self.token,
                "turns": a.turns,
                "session_turns": a.session_turns,
                "warmup": a.warmup,
                "cold": a.cold,
                "tool_url": f"{self.raw.url}/tool?n={a.tool_calls}&warmup=50&label=official",
            }
        )
        official_tool = json.loads(await self.raw.readline())
        assert official_tool["label"] == "official", official_tool
        self.record("rtt", "raw echo RTT (raw client <-> raw echo server)", floor)
        self.record("raw_turn", "raw protocol turn (raw client)", raw)
        self.record("ours_turn", "ours: session.send + stream()", mine)
        self.record("official_turn", "official 0.2.0: send + stream()", official["turn_ns"])
        self.record(
            "official_cold", "official 0.2.0: first turn of a new session", official["cold_ns"]
        )
        self.record(
            "official_tool", "official 0.2.0 (handler inline in its reader)", official_tool["ns"]
        )
        if self.keep:
            self.cpu.setdefault("official_turn", []).append(official["turn_cpu_ns"] / 1000)
            calls = a.tool_calls + 50
            self.cpu.setdefault("official_tool", []).append(official["tool_cpu_ns"] / calls / 1000)

    async def tool_round_trip(self) -> None:
        n, url, token = self.args.tool_calls, self.raw.url, self.token
        query = f"n={n}&warmup=50"

        calls = n + 50

        def cpu_per_call(key: str, cpu_ns: int) -> None:
            if self.keep:
                self.cpu.setdefault(key, []).append(cpu_ns / calls / 1000)

        async def raw_client(label: str, decode: bool) -> list[int]:
            ws = await raw_open(f"{url}/tool?{query}&label={label}", token, init_frame())
            cpu0 = time.process_time_ns()
            await ws.send(user_frame("go"))
            while True:
                text = await ws.recv()
                if not decode and text.startswith(TOOL_CALL_PREFIX):  # type: ignore[arg-type]
                    await ws.send(text)  # the echo floor: send the frame straight back
                    continue
                frame = json.loads(text)
                if frame["type"] == "tool_call":
                    await ws.send(tool_result_frame(frame["payload"]["callId"]))
                elif frame["type"] == "result":
                    break
            cpu_per_call(f"tool_{label}", time.process_time_ns() - cpu0)
            await ws.close()
            line = json.loads(await self.raw.readline())
            assert line["label"] == label, line
            return list(line["ns"])

        quiet_gc()
        echo = await raw_client("raw-echo", decode=False)
        quiet_gc()
        raw = await raw_client("raw-json", decode=True)
        quiet_gc()
        async with Chucky(self.token, f"{url}/tool?{query}&label=ours") as client:
            session = client.create_session(tools=[get_time])
            await session.send("go")  # connects: not part of the CPU time
            cpu0 = time.process_time_ns()
            async for _ in session.stream():
                pass
            cpu_per_call("tool_ours", time.process_time_ns() - cpu0)
            await session.close()
        line = json.loads(await self.raw.readline())
        assert line["label"] == "ours", line
        self.record("tool_echo", "raw RTT: raw client echoes the tool_call frame", echo)
        self.record("tool_raw", "raw client: decode tool_call, send tool_result", raw)
        self.record("tool_ours", "ours: ToolRunner + @tool handler", line["ns"])

    async def call_minus_echo(self) -> None:
        """The tool round trip seen from the client: a ``call`` turn minus an ``echo`` turn,
        alternating on one session (tools declared), against the chucky server."""
        a = self.args
        times: dict[str, list[int]] = {k: [] for k in ("raw_echo", "raw_call", "ours_echo")}
        times["ours_call"] = []
        for _ in range(max(1, a.tool_pairs // a.session_pairs)):
            ws = await raw_open(self.server.url, self.token, init_frame(mcpServers=[GET_TIME]))
            for _ in range(1 + a.warmup // 2):
                await raw_turn(ws, ECHO_HI)
                await raw_turn(ws, CALL_TOOL)
            quiet_gc()
            for _ in range(a.session_pairs):
                for key, frame in (("raw_echo", ECHO_HI), ("raw_call", CALL_TOOL)):
                    t0 = clock()
                    await raw_turn(ws, frame)
                    times[key].append(clock() - t0)
            await ws.close()
            async with Chucky(self.token, self.server.url) as client:
                session = client.create_session(tools=[get_time])
                for _ in range(1 + a.warmup // 2):
                    await our_turn(session, "echo hi")
                    await our_turn(session, "call get_time {}")
                quiet_gc()
                for _ in range(a.session_pairs):
                    for key, text in (("ours_echo", "echo hi"), ("ours_call", "call get_time {}")):
                        t0 = clock()
                        await our_turn(session, text)
                        times[key].append(clock() - t0)
        self.record("call_raw_echo", "raw: echo turn (tools declared)", times["raw_echo"])
        self.record("call_raw_call", "raw: call turn", times["raw_call"])
        self.record("call_ours_echo", "ours: echo turn (tools declared)", times["ours_echo"])
        self.record("call_ours_call", "ours: call turn", times["ours_call"])

    async def connect(self) -> None:
        n, url, token = self.args.cold, self.server.url, self.token
        times: dict[str, list[int]] = {"open_raw": [], "open_ours": []}
        times |= {"cold_raw": [], "cold_ours": []}

        async def raw_open_close() -> None:
            t0 = clock()
            ws = await raw_open(url, token, init_frame())
            times["open_raw"].append(clock() - t0)
            await ws.close()

        async def ours_open_close() -> None:
            conn = our_connection(url, token)
            t0 = clock()
            await conn.open()
            times["open_ours"].append(clock() - t0)
            await conn.close()

        async def raw_cold() -> None:
            t0 = clock()
            ws = await raw_open(url, token, init_frame())
            await raw_turn(ws, ECHO_HI)
            times["cold_raw"].append(clock() - t0)
            await ws.close()

        async def ours_cold() -> None:
            async with Chucky(token, url) as client:
                session = client.create_session()
                t0 = clock()
                await our_turn(session, "echo hi")
                times["cold_ours"].append(clock() - t0)

        quiet_gc()
        for _ in range(n):
            await raw_open_close()
            await ours_open_close()
            await raw_cold()
            await ours_cold()
        self.record("open_raw", "raw: connect + ready + send init", times["open_raw"])
        self.record("open_ours", "ours: ClientConnection.open()", times["open_ours"])
        self.record("cold_raw", "raw: connect + handshake + echo turn", times["cold_raw"])
        self.record("cold_ours", "ours: create_session + first send/stream", times["cold_ours"])

    async def throughput(self) -> None:
        prefix, frames = self.result_prefix, self.frames_per_stream_turn
        partial = init_frame(includePartialMessages=True)
        for where, url in (("e2e", self.server.url), ("replay", f"{self.replay.url}/replay")):
            # Fresh sessions each round (the server's cost grows with the history).
            ws = await raw_open(url, self.token, partial)
            async with Chucky(self.token, url, include_partial_messages=True) as client:
                session = client.create_session()
                if where == "e2e":  # the first turn of a session carries extra frames
                    await raw_turn(ws, ECHO_HI)
                    await our_turn(session, "echo hi")
                for _ in range(self.args.stream_runs):
                    quiet_gc()
                    t0 = clock()
                    n_nodecode = await raw_turn_nodecode(ws, STREAM, prefix)
                    t1 = clock()
                    n_json = await raw_turn(ws, STREAM)
                    t2 = clock()
                    n_ours = await our_turn(session, f"stream {STREAM_N}")
                    t3 = clock()
                    deltas = 0
                    async for event in client.stream(f"stream {STREAM_N}"):
                        if event.type == "message":
                            deltas += 1
                    t4 = clock()
                    assert n_nodecode == n_json == n_ours == frames, (n_nodecode, n_json, n_ours)
                    assert deltas == STREAM_N, deltas
                    if not self.keep:
                        continue
                    for key, label, dt in (
                        ("nodecode", "raw loop, no decoding", t1 - t0),
                        ("json", "raw loop + json.loads", t2 - t1),
                        ("ours", "ours: session.stream()", t3 - t2),
                        ("ours_legacy", "ours: client.stream() events *", t4 - t3),
                    ):
                        self.row(f"tp_{where}_{key}", label, "frames/s").values.append(
                            frames / (dt / 1e9)
                        )
            await ws.close()

    # -- setup -------------------------------------------------------------------------------

    async def record_stream_turn(self) -> list[str]:
        """The frames of one ``stream`` turn from the real server, to replay."""
        frames = await record_stream_turn(self.server.url, self.token)
        self.result_prefix = frames[-1][: frames[-1].index('"result"') + len('"result"')]
        assert not any(f.startswith(self.result_prefix) for f in frames[:-1])
        self.frames_per_stream_turn = len(frames)
        return frames

    async def run(self) -> dict[str, Any]:
        async with chucky_server() as server, raw_server() as raw:
            self.server, self.raw = server, raw
            frames = await self.record_stream_turn()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "stream-turn.json"
                path.write_text(json.dumps(frames), encoding="utf-8")
                async with raw_server("--replay", str(path)) as replay:
                    self.replay = replay
                    self.echo_ws = await connect(f"{raw.url}/echo", ping_interval=None)
                    try:
                        await self._rounds()
                    finally:
                        await self.echo_ws.close()
        return {
            k: {"label": s.label, "unit": s.unit, "values": s.values} for k, s in self.rows.items()
        }

    async def _rounds(self) -> None:
        a = self.args
        for round_no in range(a.rounds + 1):
            self.keep = round_no > 0
            started = time.monotonic()
            await self.turn_latency()
            await self.tool_round_trip()
            await self.call_minus_echo()
            await self.connect()
            await self.throughput()
            what = f"round {round_no}/{a.rounds}" if self.keep else "warm-up round"
            print(f"  {what} done in {time.monotonic() - started:.1f} s", file=sys.stderr)


async def echo_rtt(ws: RawSocket) -> None:
    await ws.send(ECHO_HI)
    await ws.recv()


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**MISS**"


def report(
    rows: dict[str, Samples], cpu_per_turn: dict[str, list[float]], args: argparse.Namespace
) -> str:
    r = rows
    out: list[str] = []
    n_turns = len(r["ours_turn"].values)
    out.append(
        f"## 1. Turn latency: `echo hi` on an open session ({n_turns} turns per row, "
        f"{args.rounds} rounds)\n"
    )
    base = r["raw_turn"].median
    official = r["official_turn"].median
    body = []
    for key in ("rtt", "raw_turn", "ours_turn", "official_turn"):
        s = r[key]
        cpu = statistics.median(cpu_per_turn[key]) if key in cpu_per_turn else math.nan
        body.append(
            [
                s.label,
                fmt(s.median),
                fmt(s.p90),
                ratio(s.median, base),
                ratio(s.median, official),
                fmt(cpu),
            ]
        )
    out.append(
        table(
            ["client", "median us", "p90 us", "vs raw turn", "vs official", "client CPU us/turn"],
            body,
        )
    )
    ours = r["ours_turn"].median
    out.append("")
    out.append(
        table(
            ["target", "measured", "verdict"],
            [
                [
                    "ours no slower than official (median)",
                    f"{fmt(ours)} vs {fmt(official)} us ({ratio(ours, official)})",
                    verdict(ours <= official),
                ],
                [
                    "ours within 5x the raw protocol turn",
                    ratio(ours, base),
                    verdict(ours <= 5 * base),
                ],
                [
                    "(info) ours vs raw echo RTT",
                    ratio(ours, r["rtt"].median),
                    "-",
                ],
            ],
        )
    )

    out.append(
        f"\n## 2. Text-delta throughput: `stream {STREAM_N}` with includePartialMessages "
        f"({len(r['tp_e2e_ours'].values)} turns per row)\n"
    )
    body = []
    verdicts = []
    for where, title in (
        ("e2e", "chucky server (end to end)"),
        ("replay", "replay server (client-bound)"),
    ):
        json_base = r[f"tp_{where}_json"].median
        nodecode = r[f"tp_{where}_nodecode"].median
        for key in ("nodecode", "json", "ours", "ours_legacy"):
            s = r[f"tp_{where}_{key}"]
            body.append(
                [
                    title,
                    s.label,
                    fmt(s.median),
                    fmt(s.p10),
                    ratio(s.median, json_base),
                    ratio(s.median, nodecode),
                ]
            )
        mine = r[f"tp_{where}_ours"].median
        verdicts.append(
            [
                f"{title}: ours >= 0.6x raw+json",
                ratio(mine, json_base),
                verdict(mine >= 0.6 * json_base),
            ]
        )
        verdicts.append(
            [
                f"{title}: ours >= 0.6x raw no-decode (stricter)",
                ratio(mine, nodecode),
                verdict(mine >= 0.6 * nodecode),
            ]
        )
    out.append(
        table(
            [
                "server",
                "client",
                "median frames/s",
                "p10 frames/s",
                "vs raw+json",
                "vs raw no-decode",
            ],
            body,
        )
    )
    out.append("")
    out.append(table(["target", "measured", "verdict"], verdicts))
    out.append(
        "\n\\* `client.stream()` opens a new session per call: its time includes connect + "
        "handshake (see section 4) and close."
    )

    out.append(
        f"\n## 3. Client tool round trip ({len(r['tool_ours'].values)} calls per row), timed by "
        "the raw server from `tool_call` send to the next frame's arrival\n"
    )
    base = r["tool_echo"].median
    body = []
    for key, cpu_key in (
        ("tool_echo", "tool_raw-echo"),
        ("tool_raw", "tool_raw-json"),
        ("tool_ours", "tool_ours"),
        ("official_tool", "official_tool"),
    ):
        s = r[key]
        cpu = statistics.median(cpu_per_turn[cpu_key]) if cpu_key in cpu_per_turn else math.nan
        body.append([s.label, fmt(s.median), fmt(s.p90), ratio(s.median, base), fmt(cpu)])
    out.append(table(["client", "median us", "p90 us", "vs raw RTT", "client CPU us/call"], body))
    mine = r["tool_ours"].median
    out.append("")
    raw_delta = r["call_raw_call"].median - r["call_raw_echo"].median
    our_delta = r["call_ours_call"].median - r["call_ours_echo"].median
    out.append(
        table(
            ["seen from the client (chucky server)", "median us"],
            [
                [r[k].label, fmt(r[k].median)]
                for k in ("call_raw_echo", "call_raw_call", "call_ours_echo", "call_ours_call")
            ]
            + [
                ["raw: call turn - echo turn", fmt(raw_delta)],
                ["ours: call turn - echo turn", fmt(our_delta)],
            ],
        )
    )
    out.append("")
    out.append(
        table(
            ["target", "measured", "verdict"],
            [
                [
                    "ours within 3x the raw RTT (server-timed)",
                    ratio(mine, base),
                    verdict(mine <= 3 * base),
                ],
                [
                    "(info) ours vs official",
                    ratio(mine, r["official_tool"].median),
                    "-",
                ],
            ],
        )
    )

    out.append(f"\n## 4. Connect ({len(r['open_ours'].values)} connections per row)\n")
    body = []
    for key, base_key in (
        ("open_raw", "open_raw"),
        ("open_ours", "open_raw"),
        ("cold_raw", "cold_raw"),
        ("cold_ours", "cold_raw"),
        ("official_cold", "cold_raw"),
    ):
        s = r[key]
        body.append([s.label, fmt(s.median), fmt(s.p90), ratio(s.median, r[base_key].median)])
    out.append(table(["what", "median us", "p90 us", "vs raw"], body))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--turns", type=int, default=300, help="timed turns per row per round")
    parser.add_argument("--session-turns", type=int, default=50, help="timed turns per session")
    parser.add_argument("--warmup", type=int, default=10, help="untimed turns per new session")
    parser.add_argument("--tool-calls", type=int, default=500, help="tool calls per round")
    parser.add_argument("--tool-pairs", type=int, default=100, help="echo/call pairs per round")
    parser.add_argument("--session-pairs", type=int, default=25, help="pairs per session")
    parser.add_argument("--cold", type=int, default=30, help="connections per round")
    parser.add_argument("--stream-runs", type=int, default=2, help="stream turns per round")
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.turns, args.tool_calls = 2, 100, 100
        args.tool_pairs, args.session_pairs, args.cold, args.stream_runs = 20, 10, 5, 1
    started = datetime.datetime.now(datetime.UTC)
    print(f"chucky client benchmarks, {started:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    bench = Bench(args)
    samples = asyncio.run(bench.run())
    print(f"# chucky client benchmarks ({started:%Y-%m-%d %H:%M} UTC)\n")
    print(f"Machine: {machine()}\n")
    print(f"Code: {git_state()}\n")
    print(
        "Servers run in their own processes (`chucky serve` with the scripted model; "
        "`bench/raw_server.py`); the client under test has the bench process to itself. "
        "Medians and p90 over every sample of every round; ratios against the baseline "
        "measured in the same run.\n"
    )
    print(report(bench.rows, bench.cpu, args))
    if args.json:
        payload = {
            "started": started.isoformat(),
            "machine": machine(),
            "code": git_state(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "cpu_us_per_turn": bench.cpu,
            "rows": samples,
        }
        args.json.write_text(json.dumps(payload), encoding="utf-8")
    if any(math.isnan(s.median) for s in bench.rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
