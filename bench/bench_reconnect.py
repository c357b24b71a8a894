"""What surviving the network costs: the ``seq`` extension (docs/protocol.md section 10).

Run ``python bench/bench_reconnect.py`` (``--quick`` for a smoke run). ``chucky serve`` runs in
its own process with the scripted model, priced (the ledger is on the path). Two sections,
each in interleaved rounds after a warm-up, so drift hits every row alike:

* **Delta throughput, seq on vs off.** A ``stream N`` turn with partial messages (N text
  deltas, one frame each) read by a raw ``websockets`` client, the session opened with and
  without ``"chuckyExtensions": ["seq"]``: with it, each frame is numbered under the write lock
  and kept in the replay buffer, and the client acks at the end. Also through our client
  (``Chucky(reconnect=True)``, the default, vs ``reconnect=False``). Deltas per second, from
  the send to the ``result``.
* **From a cut to the first replayed frame.** Our client reads a ``stream`` turn through a TCP
  proxy (``tests/support/proxy.py``) that resets both sockets mid-turn; the time from the cut
  to the next message the application's ``async for`` gets: noticing the reset, a new socket,
  the token, ``init`` with ``lastSeq``, ``resumed`` and the first frame it missed. The baseline
  is a fresh session's handshake measured in the same run (connect, ``ready``, ``init``,
  ``session_info``): a resume cannot be cheaper than opening a socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from urllib.parse import urlsplit

from _harness import ROOT, bench_token, chucky_server, fmt, git_state, machine, quiet_gc, ratio
from _harness import table as md_table
from websockets.asyncio.client import connect

sys.path.insert(0, str(ROOT / "tests"))
from support.proxy import TcpProxy

from chucky import Chucky, ReconnectEvent
from chucky.messages import ResultMessage, StreamEventMessage


async def raw_stream(url: str, deltas: int, seq: bool) -> float:
    """Deltas per second of one ``stream`` turn read by a raw client."""
    extensions = {"chuckyExtensions": ["seq"]} if seq else {}
    async with connect(f"{url}?token={bench_token()}", compression=None, max_size=None) as ws:
        init = {"type": "init", "payload": {"includePartialMessages": True, **extensions}}
        await ws.send(json.dumps(init))
        while json.loads(await ws.recv())["payload"].get("action") != "session_info":
            pass
        turn = {"type": "user", "message": {"role": "user", "content": f"stream {deltas}"}}
        started = time.perf_counter()
        await ws.send(json.dumps(turn))
        last = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("result", "error"):
                last = frame
                break
        elapsed = time.perf_counter() - started
        if seq and last is not None:
            ack = {"action": "ack", "data": {"seq": last["seq"]}}
            await ws.send(json.dumps({"type": "control", "payload": ack}))
    return deltas / elapsed


async def client_stream(url: str, deltas: int, reconnect: bool) -> float:
    """Deltas per second of one ``stream`` turn read through our client."""
    async with Chucky(bench_token(), url, include_partial_messages=True, reconnect=reconnect) as c:
        session = c.create_session()
        started = time.perf_counter()
        await session.send(f"stream {deltas}")
        async for _ in session.stream():
            pass
        elapsed = time.perf_counter() - started
        await session.close()
    return deltas / elapsed


async def handshake(url: str) -> float:
    """Seconds to open a session: connect, ``ready``, ``init``, ``session_info``."""
    started = time.perf_counter()
    async with connect(f"{url}?token={bench_token()}", compression=None) as ws:
        await ws.send(json.dumps({"type": "init", "payload": {"chuckyExtensions": ["seq"]}}))
        while json.loads(await ws.recv())["payload"].get("action") != "session_info":
            pass
        return time.perf_counter() - started


async def raw_cut_to_replay(proxy: TcpProxy, deltas: int, cut_after: int) -> float:
    """Seconds from a cut mid-turn to the first frame the client missed, resumed by a raw
    client at once (a new socket, ``init`` with ``lastSeq``): the server's and the protocol's
    part of a resume."""
    url = f"{proxy.url('/ws')}?token={bench_token()}"
    options = {"includePartialMessages": True, "chuckyExtensions": ["seq"]}
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "payload": options}))
        while True:
            info = json.loads(await ws.recv())
            if info["payload"].get("action") == "session_info":
                break
        session_id = info["payload"]["data"]["sessionId"]
        turn = {"type": "user", "message": {"role": "user", "content": f"stream {deltas}"}}
        await ws.send(json.dumps(turn))
        for _ in range(cut_after):
            last = json.loads(await ws.recv())["seq"]
        proxy.cut()
        cut_at = time.perf_counter()
        ws.transport.abort()  # the link is dead: no close handshake to wait for
    resume = {**options, "sessionId": session_id, "lastSeq": last}
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "payload": resume}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("seq") == last + 1:
                gap = time.perf_counter() - cut_at
                break
        while frame["type"] not in ("result", "error"):
            frame = json.loads(await ws.recv())
    return gap


async def cut_to_resumed(proxy: TcpProxy, deltas: int, cut_after: int) -> float:
    """Seconds from a cut mid-turn to our client's ``on_reconnect`` ``resumed``: it noticed
    the reset, opened a socket, sent ``init`` with ``lastSeq`` and got ``resumed`` (the replay
    follows it on the wire)."""
    resumed = asyncio.get_running_loop().create_future()

    def report(event: ReconnectEvent) -> None:
        if event.outcome == "resumed" and not resumed.done():
            resumed.set_result(time.perf_counter())

    client = Chucky(
        bench_token(),
        proxy.url("/ws"),
        include_partial_messages=True,
        reconnect_backoff=0.01,
        on_reconnect=report,
    )
    async with client:
        session = client.create_session()
        await session.send(f"stream {deltas}")
        seen = 0
        cut_at = 0.0
        text = []
        async for message in session.stream():
            if isinstance(message, StreamEventMessage):
                delta = message.event.get("delta") or {}
                text.append(delta.get("text", ""))
                seen += 1
                if seen == cut_after:
                    proxy.cut()
                    cut_at = time.perf_counter()
            elif isinstance(message, ResultMessage):
                assert "".join(text) == message.result, "a delta was lost or repeated"
        await session.close()
    return float(await resumed) - cut_at


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, deltas = (3, 200) if args.quick else (args.rounds, args.deltas)

    print(f"# bench_reconnect: {machine()}; {git_state()}")
    async with chucky_server() as server:
        url = server.url
        port = urlsplit(url).port
        assert port is not None
        raw: dict[bool, list[float]] = {True: [], False: []}
        ours: dict[bool, list[float]] = {True: [], False: []}
        gaps: list[float] = []
        resumes: list[float] = []
        opens: list[float] = []
        async with TcpProxy("127.0.0.1", port) as proxy:
            for round_no in range(rounds + 1):
                quiet_gc()
                for seq in (True, False):
                    raw[seq].append(await raw_stream(url, deltas, seq))
                for on in (True, False):
                    ours[on].append(await client_stream(url, deltas, on))
                opens.append(await handshake(url))
                gaps.append(await raw_cut_to_replay(proxy, deltas, deltas // 4))
                resumes.append(await cut_to_resumed(proxy, deltas, deltas // 4))
                if round_no == 0:  # warm-up
                    for series in (*raw.values(), *ours.values(), gaps, resumes, opens):
                        series.clear()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"\n## Delta throughput, seq on vs off (stream {deltas}, {rounds} rounds, median)\n")
    rows = [
        [
            "raw websockets client",
            fmt(med(raw[False])),
            fmt(med(raw[True])),
            ratio(med(raw[True]), med(raw[False])),
        ],
        [
            "our client (reconnect on / off)",
            fmt(med(ours[False])),
            fmt(med(ours[True])),
            ratio(med(ours[True]), med(ours[False])),
        ],
    ]
    print(md_table(["reader", "seq off, deltas/s", "seq on, deltas/s", "on / off"], rows))
    print(f"\n## From a cut to the first replayed frame ({rounds} rounds, median)\n")
    rows = [
        ["a fresh session's handshake (baseline)", fmt(med(opens) * 1e6), "1.00x"],
        [
            "raw client: cut -> first missed frame (resumed at once)",
            fmt(med(gaps) * 1e6),
            ratio(med(gaps), med(opens)),
        ],
        [
            "our client: cut -> on_reconnect resumed",
            fmt(med(resumes) * 1e6),
            ratio(med(resumes), med(opens)),
        ],
    ]
    print(md_table(["", "us", "vs handshake"], rows))


if __name__ == "__main__":
    asyncio.run(main())
