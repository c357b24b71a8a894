"""The quickstart of the README: one-shot prompt, streaming with a tool, a two-turn session.

Start a server first (same project id and secret as below):

    CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve

then run ``python examples/quickstart.py``. ``CHUCKY_URL``, ``CHUCKY_PROJECT`` and
``CHUCKY_SECRET`` override the defaults.
"""

import asyncio
import os

from chucky import Chucky, create_budget, create_token, get_assistant_text, text_result, tool

URL = os.environ.get("CHUCKY_URL", "ws://127.0.0.1:8765/ws")
PROJECT = os.environ.get("CHUCKY_PROJECT", "proj")
SECRET = os.environ.get("CHUCKY_SECRET", "hk_live_0123456789abcdef0123456789abcdef")

# On your backend: mint a token for one end user, with a budget.
token = create_token(
    user_id="user-123",
    project_id=PROJECT,
    secret=SECRET,
    budget=create_budget(ai_dollars=1.00, compute_hours=1, window="day"),
)


@tool("get_time", "Get the current time")
async def get_time() -> dict:
    return text_result("12:00")


async def main() -> None:
    async with Chucky(token=token, url=URL, system_prompt="You are helpful.") as client:
        # One-shot prompt.
        result = await client.prompt("What is 2 + 2?")
        print(result.result, f"(${result.total_cost_usd:.6f})")

        # Streaming, with a client-side tool. (The scripted model of `chucky serve` reads
        # "call get_time {}" as an instruction to call the tool.)
        async for event in client.stream("call get_time {}", tools=[get_time]):
            if event.type == "message":
                print(event.data)
            elif event.type == "tool_use":
                print(f"[Using tool: {event.name}]")

        # A multi-turn session on one socket.
        async with client.create_session(system_prompt="You are a math tutor.") as session:
            await session.send("Hello, I am Alice")
            async for msg in session.stream():
                if msg.get("type") == "assistant":
                    print(get_assistant_text(msg))
            await session.send("recall")
            async for msg in session.stream():
                if msg.get("type") == "result":
                    print(msg.get("result"))


asyncio.run(main())
