"""``can_use_tool`` and the PreToolUse / PostToolUse / Stop hooks around client tool calls,
and ``chucky.query()``. Against the real server with the scripted model (whose reply to a tool
round is ``tool <name> returned: <text>``, so what the model saw is in the result)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import chucky
from chucky import (
    Chucky,
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    ToolPermissionContext,
    ValidationError,
)
from chucky.client import HookContext
from chucky.testing import scripted_server
from chucky.tools import tool

CALLS: list[dict[str, Any]] = []


@tool("greet", "Greet someone")
async def greet(name: str) -> str:
    CALLS.append({"name": name})
    return f"Hello, {name}"


SCRIPT = 'call greet {"name": "Ada"}'


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


async def test_can_use_tool_deny_reaches_the_model_as_an_error_result() -> None:
    seen: list[tuple[str, dict[str, Any], ToolPermissionContext]] = []

    async def deny(name: str, data: dict[str, Any], ctx: ToolPermissionContext) -> Any:
        seen.append((name, data, ctx))
        return PermissionResultDeny("greeting is not allowed today")

    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, can_use_tool=deny) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
    assert result.result == "tool greet returned: greeting is not allowed today"
    assert CALLS == []
    ((name, data, ctx),) = seen
    assert name.endswith("greet") and data == {"name": "Ada"}
    assert ctx.tool_use_id.startswith("toolu_") and ctx.session_id == result.session_id
    echo = next(m for m in result.messages if m.type == "user")
    assert echo.message.content[0].is_error is True


async def test_can_use_tool_allow_with_changed_input() -> None:
    def rename(name: str, data: dict[str, Any], ctx: ToolPermissionContext) -> Any:
        return PermissionResultAllow(updated_input={"name": "Grace"})

    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, can_use_tool=rename) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
        plain = await client.prompt(SCRIPT, tools=[greet])
    assert result.result == plain.result == "tool greet returned: Hello, Grace"
    assert CALLS == [{"name": "Grace"}, {"name": "Grace"}]


async def test_hooks_run_in_order_around_the_call_then_stop() -> None:
    order: list[str] = []

    def recorder(label: str, output: dict[str, Any] | None = None) -> Any:
        async def hook(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
            order.append(label)
            assert data["hook_event_name"] in label
            if data["hook_event_name"] == "PostToolUse":
                assert data["tool_response"]["content"][0]["text"] == "Hello, Ada"
                assert tool_use_id is not None
            if data["hook_event_name"] == "Stop":
                assert tool_use_id is None and data["result"]["subtype"] == "success"
            return output

        return hook

    async def can_use(name: str, data: dict[str, Any], ctx: ToolPermissionContext) -> Any:
        order.append("can_use_tool")
        return PermissionResultAllow()

    hooks = {
        "PreToolUse": [
            HookMatcher("greet", [recorder("PreToolUse 1"), recorder("PreToolUse 2")]),
            HookMatcher("other", [recorder("PreToolUse never")]),
        ],
        "PostToolUse": [
            HookMatcher(
                None,
                [
                    recorder(
                        "PostToolUse",
                        {"hookSpecificOutput": {"additionalContext": "(checked)"}},
                    )
                ],
            )
        ],
        "Stop": [HookMatcher(hooks=[recorder("Stop")])],
    }
    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, can_use_tool=can_use, hooks=hooks) as client,
    ):
        session = client.create_session(tools=[greet])
        async with session:
            await session.send(SCRIPT)
            async for message in session.stream():
                if isinstance(message, ResultMessage):
                    # Stop hooks ran before the application saw the result.
                    assert order[-1] == "Stop"
                    result = message
    assert order == ["PreToolUse 1", "PreToolUse 2", "can_use_tool", "PostToolUse", "Stop"]
    assert CALLS == [{"name": "Ada"}]
    assert result.result == "tool greet returned: Hello, Ada(checked)"


async def test_a_pre_tool_use_deny_skips_the_rest() -> None:
    order: list[str] = []

    async def deny(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
        order.append("deny")
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "no greetings",
            }
        }

    async def after(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
        order.append("after")
        return None

    def can_use(name: str, data: dict[str, Any], ctx: ToolPermissionContext) -> Any:
        order.append("can_use_tool")
        return PermissionResultAllow()

    hooks = {
        "PreToolUse": [HookMatcher("gr.*", [deny, after])],
        "PostToolUse": [HookMatcher(hooks=[after])],
    }
    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, can_use_tool=can_use, hooks=hooks) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
    assert result.result == "tool greet returned: no greetings"
    assert order == ["deny"] and CALLS == []


async def test_a_pre_tool_use_allow_skips_can_use_tool_and_may_change_input() -> None:
    async def allow(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
        return {
            "hookSpecificOutput": {
                "permissionDecision": "allow",
                "updatedInput": {"name": data["tool_input"]["name"].upper()},
            }
        }

    def never(name: str, data: dict[str, Any], ctx: ToolPermissionContext) -> Any:
        raise AssertionError("can_use_tool must not be asked")

    hooks = {"PreToolUse": [HookMatcher(hooks=[allow])]}
    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, can_use_tool=never, hooks=hooks) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
    assert result.result == "tool greet returned: Hello, ADA"


async def test_a_failing_hook_fails_the_call_closed() -> None:
    async def broken(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
        raise RuntimeError("hook bug")

    hooks = {"PreToolUse": [HookMatcher(hooks=[broken])]}
    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, hooks=hooks) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
    assert "was not run" in str(result.result) and "hook bug" in str(result.result)
    assert CALLS == []


async def test_a_post_tool_use_block_replaces_the_result() -> None:
    async def block(data: dict[str, Any], tool_use_id: str | None, ctx: HookContext) -> Any:
        return {"decision": "block", "reason": "output withheld"}

    hooks = {"PostToolUse": [HookMatcher(hooks=[block])]}
    async with (
        scripted_server() as server,
        Chucky(server.token(), server.url, hooks=hooks) as client,
    ):
        result = await client.prompt(SCRIPT, tools=[greet])
    assert result.result == "tool greet returned: output withheld"
    assert CALLS == [{"name": "Ada"}]


def test_bad_hooks_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown hook event"):
        Chucky("t", "ws://127.0.0.1:1/ws", hooks={"Start": []})
    with pytest.raises(ValidationError, match="HookMatcher"):
        Chucky("t", "ws://127.0.0.1:1/ws", hooks={"Stop": [print]})  # type: ignore[list-item]


async def test_query_reads_token_and_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with scripted_server() as server:
        monkeypatch.setenv("CHUCKY_TOKEN", server.token())
        monkeypatch.setenv("CHUCKY_URL", server.url)
        messages = [m async for m in chucky.query("echo one-off")]
        assert isinstance(messages[-1], ResultMessage)
        assert messages[-1].result == "one-off"
        monkeypatch.delenv("CHUCKY_TOKEN")
        monkeypatch.delenv("CHUCKY_URL")
        denied = chucky.query(
            SCRIPT,
            token=server.token(),
            url=server.url,
            tools=[greet],
            can_use_tool=lambda name, data, ctx: PermissionResultDeny("nope"),
        )
        async with contextlib.aclosing(denied) as stream:
            last = [m async for m in stream][-1]
        assert isinstance(last, ResultMessage) and last.result == "tool greet returned: nope"


async def test_query_without_a_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHUCKY_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="CHUCKY_TOKEN"):
        await anext(chucky.query("echo hi"))
