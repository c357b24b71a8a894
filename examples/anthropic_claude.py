"""A backend talking to `chucky serve` with Claude behind it.

Start the server with an Anthropic API key: Claude model names (``claude-*``) and the aliases
``sonnet``, ``opus`` and ``haiku`` then go to Anthropic (``local`` stays the embedded model):

    export ANTHROPIC_API_KEY=sk-ant-...
    CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve

then run ``python examples/anthropic_claude.py``. Each result carries its cost at Anthropic's
list prices, and the user's token budget caps what the session may spend. ``CHUCKY_URL``,
``CHUCKY_PROJECT``, ``CHUCKY_SECRET`` and ``CHUCKY_MODEL`` override the defaults. (chucky's tests
run this file against a local stand-in replaying a recorded Messages API stream.)
"""

import asyncio
import os

from chucky import Chucky, create_budget, create_token, tool

URL = os.environ.get("CHUCKY_URL", "ws://127.0.0.1:8765/ws")
PROJECT = os.environ.get("CHUCKY_PROJECT", "proj")
SECRET = os.environ.get("CHUCKY_SECRET", "hk_live_0123456789abcdef0123456789abcdef")
MODEL = os.environ.get("CHUCKY_MODEL", "claude-haiku-4-5-20251001")

token = create_token(
    user_id="user-123",
    project_id=PROJECT,
    secret=SECRET,
    budget=create_budget(ai_dollars=0.50, compute_hours=1, window="day"),
)


@tool("get_weather", "Get the current weather in a city.")
async def get_weather(city: str) -> str:
    return f"Sunny and 18 C in {city}."


async def main() -> None:
    async with Chucky(token=token, url=URL, model=MODEL, max_budget_usd=0.05) as client:
        async for event in client.stream(
            "What is the weather in Paris?", tools=[get_weather], include_partial_messages=True
        ):
            if event.type == "message":
                print(event.data, end="", flush=True)
            elif event.type == "tool_use":
                print(f"\n[Using tool: {event.name} {event.input}]")
            elif event.type == "result":
                result = event.data
                print(
                    f"\n[{result.subtype}: ${result.total_cost_usd:.6f}, "
                    f"{result.usage.input_tokens} in / {result.usage.output_tokens} out]"
                )


asyncio.run(main())
