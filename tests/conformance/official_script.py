"""Drives our server with the official ``chucky-sdk==0.2.0`` client; prints one JSON line.

This file runs under the official client's interpreter (tests/support/official.py), never under
ours: ``import chucky`` here is the official package. It uses only that package's public API,
unchanged, except for reading ``Session._ws`` to prove two turns shared one socket.

Usage: ``official_script.py URL PROJECT_ID SECRET WRONG_SECRET``

Every step runs under a timeout and records either its observations or ``{"error": ...}``, so
one failing step does not hide the others; the test asserts on the printed object.
"""

import asyncio
import json
import sys
import traceback

from chucky import (
    Chucky,
    PromptOptions,
    create_budget,
    create_mcp_server,
    create_token,
    text_result,
    tool,
)

STEP_TIMEOUT = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0

calls = []


@tool("get_time", "Get the current time")
async def get_time():
    calls.append("get_time")
    return text_result("12:00")


def mint(project_id, secret):
    budget = create_budget(ai_dollars=1.00, compute_hours=1, window="day")
    return create_token(
        user_id="official-user", project_id=project_id, secret=secret, budget=budget
    )


def describe(msg):
    """The parts of an SDK message the test looks at."""
    out = {"type": msg.get("type"), "subtype": msg.get("subtype")}
    content = (msg.get("message") or {}).get("content")
    if isinstance(content, list):
        out["blocks"] = [
            {
                k: block[k]
                for k in ("type", "text", "name", "input", "content", "is_error")
                if k in block
            }
            for block in content
            if isinstance(block, dict)
        ]
    for key in ("result", "session_id", "is_error"):
        if key in msg:
            out[key] = msg[key]
    return out


def describe_event(event):
    data = event.data
    if event.type in ("message", "result", "error") and isinstance(data, dict):
        return {"type": event.type, "data": describe(data)}
    return {"type": event.type, "data": data}


async def step_prompt(url, token):
    client = Chucky(url=url, token=token)
    result = await client.prompt("echo hello")
    await client.close()
    return {"result": result}


async def step_legacy_stream(url, token):
    client = Chucky(url=url, token=token)
    events = [describe_event(event) async for event in client.stream("echo streamed")]
    await client.close()
    return {"events": events}


async def step_two_turns(url, token):
    client = Chucky(url=url, token=token)
    session = client.create_session(system_prompt="You are terse.")
    await session.send("echo Alice was here")
    first = [describe(msg) async for msg in session.stream()]
    ws_after_first = session._ws
    await session.send("recall")
    second = [describe(msg) async for msg in session.stream()]
    same_socket = ws_after_first is not None and session._ws is ws_after_first
    await session.close()
    await client.close()
    return {"first": first, "second": second, "same_socket": same_socket}


async def step_mcp_tool(url, token):
    before = len(calls)
    server = create_mcp_server("time", [get_time])
    client = Chucky(url=url, token=token, mcp_servers={"time": server})
    result = await client.prompt("call get_time {}")
    await client.close()
    return {"result": result, "handler_calls": len(calls) - before}


async def step_inline_tool(url, token):
    before = len(calls)
    client = Chucky(url=url, token=token)
    events = [
        describe_event(event)
        async for event in client.stream(
            "call get_time {}", options=PromptOptions(tools=[get_time])
        )
    ]
    await client.close()
    return {"events": events, "handler_calls": len(calls) - before}


async def step_wrong_secret(url, token):
    client = Chucky(url=url, token=token)
    try:
        await client.prompt("echo never")
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    finally:
        await client.close()
    return {"raised": None}


async def run(step, *args):
    try:
        return await asyncio.wait_for(step(*args), STEP_TIMEOUT)
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


async def main():
    url, project_id, secret, wrong_secret = sys.argv[1:5]
    token = mint(project_id, secret)
    out = {"token": token}
    out["prompt"] = await run(step_prompt, url, token)
    out["legacy_stream"] = await run(step_legacy_stream, url, token)
    out["two_turns"] = await run(step_two_turns, url, token)
    out["mcp_tool"] = await run(step_mcp_tool, url, token)
    out["inline_tool"] = await run(step_inline_tool, url, token)
    out["wrong_secret"] = await run(step_wrong_secret, url, mint(project_id, wrong_secret))
    print(json.dumps(out))


asyncio.run(main())
