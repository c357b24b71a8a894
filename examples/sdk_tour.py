"""The SDK tour from the project's founding issue, as written (but for the secret: the issue's
``hk_live_...`` placeholder is not a secret a server accepts).

Run a server with the matching project first:

    CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve

(a made-up secret, as in the other examples; use your own in real code).
"""

import asyncio

from chucky import Chucky, create_budget, create_token, get_assistant_text, text_result, tool

token = create_token(
    user_id="user-123",
    project_id="proj",
    secret="hk_live_0123456789abcdef0123456789abcdef",
    budget=create_budget(ai_dollars=1.00, compute_hours=1, window="day"),
)


@tool("get_time", "Get the current time")
async def get_time() -> dict:
    return text_result("12:00")


async def main():
    client = Chucky(
        token=token,
        url="ws://127.0.0.1:8765/ws",
        model="claude-sonnet-5-5",
        system_prompt="You are helpful.",
        timeout=60.0,
    )
    result = await client.prompt("What is 2 + 2?")
    print(result.result, result.total_cost_usd)  # attribute access
    print(result.get("result"), result["subtype"])  # and mapping access (both are documented)

    async for event in client.stream("Write a poem about coding", tools=[get_time]):
        if event.type == "message":
            print(event.data, end="", flush=True)  # text as it arrives
        elif event.type == "tool_use":
            print(f"\n[Using tool: {event.name}]")

    session = client.create_session(system_prompt="You are a math tutor.", tools=[get_time])
    await session.send("Hello, I am Alice")
    async for msg in session.stream():
        if msg.get("type") == "assistant":
            print(get_assistant_text(msg))
        if msg.get("type") == "result":
            break
    await session.send("What is my name?")
    async for msg in session.stream():
        if msg.get("type") == "result":
            print(msg.get("result"))
    await session.close()
    await client.close()


asyncio.run(main())
