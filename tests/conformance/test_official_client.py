"""The official Python client, ``chucky-sdk==0.2.0``, works against our server unchanged.

Our scripted server runs in this test's event loop; ``official_script.py`` (next to this file)
runs once, under the official client's interpreter (tests/support/official.py), in a worker
thread so the loop keeps serving. It mints its tokens with the official ``create_token`` from
our project id and secret, exercises the official API (``prompt``, the legacy ``stream``,
``create_session`` with two turns, client tools from ``create_mcp_server`` and inline
``PromptOptions(tools=...)``, a wrong-secret token) and prints one JSON object of observations;
each test below checks one part of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.official import run_official
from support.timing import ticks

from chucky.testing import scripted_server
from chucky.tokens import verify_claims

pytestmark = pytest.mark.conformance

SCRIPT = Path(__file__).with_name("official_script.py").read_text(encoding="utf-8")
WRONG_SECRET = "hk_live_00000000000000000000000000000000"
STEP_TIMEOUT = ticks(600)  # 30 s per step of the script, scaled by CHUCKY_TEST_TIME_SCALE
SCRIPT_TIMEOUT = ticks(2400)

Observations = dict[str, Any]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def observed(official_python: Path) -> AsyncIterator[Observations]:
    """Run the official script once against a fresh scripted server; its observations.

    ``official_python`` (the cached venv, built on first use) is requested so that the build
    happens here, with a clear error if PyPI is unreachable, rather than inside the thread.
    """
    async with scripted_server() as server:
        proc = await asyncio.to_thread(
            run_official,
            SCRIPT,
            server.url,
            server.project_id,
            server.secret,
            WRONG_SECRET,
            str(STEP_TIMEOUT),
            timeout=SCRIPT_TIMEOUT,
        )
        assert proc.returncode == 0, f"official script failed:\n{proc.stderr}"
        lines = proc.stdout.strip().splitlines()
        assert lines, f"official script printed nothing:\n{proc.stderr}"
        data: Observations = json.loads(lines[-1])
        data["_secret"] = server.secret
        data["_project_id"] = server.project_id
        yield data


def step(observed: Observations, name: str) -> Observations:
    """One step's observations; fails with the official client's traceback if it raised."""
    data: Observations = observed[name]
    assert "error" not in data, f"{name} failed in the official client: {data['error']}\n" + (
        data.get("traceback", "")
    )
    return data


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def test_official_token_minted_for_our_project_is_accepted(observed: Observations) -> None:
    claims = verify_claims(observed["token"], observed["_secret"])
    assert claims.iss == observed["_project_id"]
    assert claims.sub == "official-user"
    # the official client's "+00:00Z"-style window start parsed, and the turns below ran
    assert "result" in step(observed, "prompt")


def test_prompt_returns_the_result_dict(observed: Observations) -> None:
    result = step(observed, "prompt")["result"]
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == "hello"
    assert is_int(result["duration_ms"])
    assert is_int(result["duration_api_ms"])
    assert is_int(result["num_turns"])
    assert isinstance(result["total_cost_usd"], float)
    assert result["total_cost_usd"] > 0
    assert isinstance(result["session_id"], str)
    assert result["session_id"]
    assert all(is_int(v) for v in result["usage"].values())


def test_legacy_stream_yields_messages_then_result_then_done(observed: Observations) -> None:
    events = step(observed, "legacy_stream")["events"]
    types = [event["type"] for event in events]
    assert types[-2:] == ["result", "done"]
    assert set(types[:-2]) == {"message"}
    messages = [event["data"] for event in events[:-2]]
    assert messages[0]["type"] == "system"
    assert messages[0]["subtype"] == "init"
    assert [m["type"] for m in messages[1:]] == ["assistant"]
    assert messages[1]["blocks"] == [{"type": "text", "text": "streamed"}]
    result = events[-2]["data"]
    assert result["subtype"] == "success"
    assert result["result"] == "streamed"
    session_id = result["session_id"]
    assert session_id
    assert events[-1]["data"] == {"sessionId": session_id}
    assert all(m["session_id"] == session_id for m in messages)


def test_session_runs_two_turns_on_one_socket_with_history(observed: Observations) -> None:
    data = step(observed, "two_turns")
    first, second = data["first"], data["second"]
    assert [m["type"] for m in first] == ["system", "assistant", "result"]
    assert [m["type"] for m in second] == ["system", "assistant", "result"]
    assert first[-1]["result"] == "Alice was here"
    # ``recall`` answers with the session's first user message: the history was kept
    assert second[-1]["subtype"] == "success"
    assert second[-1]["result"] == "echo Alice was here"
    assert data["same_socket"] is True
    session_ids = {m["session_id"] for m in first + second}
    assert len(session_ids) == 1
    assert session_ids != {""}


def test_mcp_server_tool_is_called_and_its_result_used(observed: Observations) -> None:
    data = step(observed, "mcp_tool")
    assert data["handler_calls"] == 1
    result = data["result"]
    assert result["subtype"] == "success"
    assert result["result"] == "tool get_time returned: 12:00"
    assert result["num_turns"] == 2


def test_inline_tools_with_the_legacy_stream(observed: Observations) -> None:
    data = step(observed, "inline_tool")
    assert data["handler_calls"] == 1
    events = data["events"]
    assert [e["type"] for e in events] == ["message"] * 4 + ["result", "done"]
    system, call, echo, answer = (e["data"] for e in events[:4])
    assert (system["type"], system["subtype"]) == ("system", "init")
    assert call["type"] == "assistant"
    [tool_use] = call["blocks"]
    # P puts inline tools in a server named ``inline-tools`` (docs/protocol.md section 6)
    assert tool_use == {"type": "tool_use", "name": "mcp__inline-tools__get_time", "input": {}}
    assert echo["type"] == "user"
    [tool_result] = echo["blocks"]
    assert tool_result["type"] == "tool_result"
    assert tool_result.get("is_error") in (None, False)
    content = tool_result["content"]
    texts = [content] if isinstance(content, str) else [item["text"] for item in content]
    assert texts == ["12:00"]
    assert answer["blocks"] == [{"type": "text", "text": "tool get_time returned: 12:00"}]
    assert events[4]["data"]["result"] == "tool get_time returned: 12:00"
    assert events[5]["data"] == {"sessionId": events[4]["data"]["session_id"]}


def test_wrong_secret_makes_the_official_client_raise(observed: Observations) -> None:
    data = step(observed, "wrong_secret")
    assert data["raised"] == "RuntimeError"
    # the error frame's message, surfaced by the official client's _wait_for_ready
    assert "unauthorized" in data["message"].lower()
