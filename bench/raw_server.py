"""A minimal WebSocket server for the benchmarks: no chucky code, only ``websockets``.

Run as a subprocess by ``bench_client.py``; prints ``raw server listening on ws://...`` first.
What a connection gets depends on its path:

``/echo``
    Every frame is sent straight back (the loopback round-trip floor).
``/tool?n=N&warmup=W&label=L``
    The server side of a client tool round trip. Sends ``ready``, reads ``init``, waits for
    one turn frame (``user``, ``prompt`` or ``sdk_message``), then sends W + N ``tool_call``
    frames one at a time, timing each from just before the send until the next frame arrives
    (the client's ``tool_result``, or its echo for the raw floor). Prints one JSON line
    ``{"label": L, "ns": [N timings]}`` and ends the turn with a ``result`` frame.
``/replay``
    Sends ``ready``, reads ``init``; then, for every turn frame, sends the frames recorded in
    the file given with ``--replay`` back to back (a ``stream`` turn recorded from the real
    server, so the client, not the server, is the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

READY = json.dumps({"type": "control", "payload": {"action": "ready"}})
SESSION_ID = "00000000-0000-4000-8000-000000000000"

replay_frames: list[str] = []


def is_turn(text: str) -> bool:
    frame = json.loads(text)
    return frame.get("type") in ("user", "prompt", "sdk_message")


def result_frame(text: str) -> str:
    return json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "uuid": "11111111-1111-4111-8111-111111111111",
            "session_id": SESSION_ID,
            "is_error": False,
            "num_turns": 1,
            "duration_ms": 0,
            "duration_api_ms": 0,
            "total_cost_usd": 0.0,
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            "result": text,
            "stop_reason": "end_turn",
        }
    )


async def handshake(ws: ServerConnection) -> None:
    await ws.send(READY)
    while json.loads(await ws.recv()).get("type") != "init":
        pass


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def tool(ws: ServerConnection, n: int, warmup: int, label: str) -> None:
    await handshake(ws)
    while not is_turn(await ws.recv()):
        pass
    frames = [
        json.dumps(
            {
                "type": "tool_call",
                "payload": {"callId": f"call_{i:06d}", "toolName": "get_time", "input": {}},
            },
            separators=(",", ":"),
        )
        for i in range(warmup + n)
    ]
    clock = time.perf_counter_ns
    send, recv = ws.send, ws.recv
    timings: list[int] = []
    for frame in frames:
        t0 = clock()
        await send(frame)
        reply = await recv()
        timings.append(clock() - t0)
        # Outside the timing: make sure the reply answered this call (not a keepalive ping).
        kind = json.loads(reply).get("type")
        while kind not in ("tool_result", "tool_call"):
            timings[-1] = -1  # disturbed: drop it
            kind = json.loads(await recv()).get("type")
    kept = [t for t in timings[warmup:] if t >= 0]
    print(json.dumps({"label": label, "ns": kept}), flush=True)
    await ws.send(result_frame("done"))
    # Let the client close; answer nothing more.
    async for _ in ws:
        pass


async def replay(ws: ServerConnection) -> None:
    await handshake(ws)
    frames = replay_frames
    send = ws.send
    async for message in ws:
        if is_turn(message):
            for frame in frames:
                await send(frame)


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    parts = urlsplit(ws.request.path)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.path == "/echo":
        await echo(ws)
    elif parts.path == "/tool":
        await tool(ws, int(query.get("n", "1000")), int(query.get("warmup", "100")), query["label"])
    elif parts.path == "/replay":
        await replay(ws)
    else:
        await ws.close(1008, "unknown path")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", type=Path, help="JSON list of frames (strings) to replay")
    args = parser.parse_args()
    if args.replay:
        replay_frames.extend(json.loads(args.replay.read_text(encoding="utf-8")))
    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=16 * 1024 * 1024, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"raw server listening on ws://127.0.0.1:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
