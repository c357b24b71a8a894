"""The agent loop keeps the transcript whole when the client goes at the worst moment: after the
model asked for tools, before its ``assistant`` frame could be sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.faults import check_history

from chucky import create_budget, create_token
from chucky.messages import AssistantMessage, WireModel
from chucky.options import ToolDefinition
from chucky.protocol.frames import ToolResultPayload
from chucky.protocol.turns import TurnEvent
from chucky.server.account import TurnAccount
from chucky.server.agent import AgentTurn, TurnSettings
from chucky.server.budget import BudgetSettings, UserBudget
from chucky.server.catalog import ClientTool, ToolCatalog
from chucky.server.pricing import price_for
from chucky.server.providers.scripted import ScriptedProvider
from chucky.server.routing import Route
from chucky.server.sql import SqlStore
from chucky.server.turn_runner import ClientGoneError
from chucky.tokens import decode_token

SECRET = "hk_live_" + "0" * 32
MODEL = "claude-sonnet-5-5"


class _GoneAtTheAssistant:
    """The connection as the loop sees it: the client vanishes when the ``assistant`` frame is
    sent."""

    def __init__(self) -> None:
        self.sent: list[WireModel] = []

    async def send_message(self, message: WireModel) -> None:
        if isinstance(message, AssistantMessage):
            raise ClientGoneError("the connection is closed")
        self.sent.append(message)

    async def call_tool(self, tool: ClientTool, call_id: str, arguments: Any) -> ToolResultPayload:
        raise AssertionError("no tool call may go out: the client is gone")

    def record(self, event: TurnEvent) -> None:
        pass


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'chucky.db'}")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_tool_use_whose_frame_could_not_be_sent_is_answered(store: SqlStore) -> None:
    budget = create_budget(ai_dollars=10, compute_hours=1, window="day")
    claims = decode_token(create_token("ann", "p", SECRET, budget)).claims
    session = await store.create_session("p", "ann", MODEL, 0.0)
    account = TurnAccount(
        store=store,
        budget=UserBudget(store, claims, BudgetSettings(), node_id="n"),
        session=session,
        track=lambda task: None,
    )
    catalog = ToolCatalog([ClientTool("srv", ToolDefinition(name="t"))], [])
    agent = AgentTurn(
        session=session,
        content="echo using t; call t {}",
        settings=TurnSettings(model=MODEL, system_prompt=None, max_turns=5, max_tokens=1024),
        catalog=catalog,
        route=Route(ScriptedProvider(), MODEL, price_for(MODEL)),
        io=_GoneAtTheAssistant(),
        account=account,
    )
    await agent.start(turns_per_minute=None)
    with pytest.raises(ClientGoneError):
        await agent.run()
    await account.close()
    stored = await store.get_session(session.session_id, "p", "ann")
    assert stored is not None
    roles = [m["role"] for m in stored.transcript]
    assert roles == ["user", "assistant", "user"]  # the prompt, the tool_use, its error result
    check_history(stored.transcript)
    (result,) = stored.transcript[2]["content"]
    assert result["type"] == "tool_result" and result["is_error"] is True
