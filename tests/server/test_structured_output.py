"""Structured output (docs/protocol.md sections 4 and 5): ``outputFormat`` validation and repair."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.raw import check_result, open_session, turn

from chucky.server.app import ChuckyServer
from chucky.server.config import ServerConfig
from chucky.server.providers.base import ModelRequest
from chucky.server.providers.scripted import ScriptedProvider, count_input_tokens
from chucky.server.routing import ModelRouter
from chucky.server.structured import (
    MAX_ERROR_CHARS,
    repair_request,
    schema_instruction,
    validate_output,
)
from chucky.testing import ScriptedServer

SECRET = "hk_live_" + "5" * 32

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"qty": {"type": "integer"}}},
        },
    },
    "required": ["name"],
}
OUTPUT_FORMAT = {"type": "json_schema", "schema": SCHEMA}


# -- validate_output ---------------------------------------------------------------------------


def test_valid_json() -> None:
    assert validate_output('{"name": "a"}', SCHEMA) == ({"name": "a"}, None)


def test_fenced_json() -> None:
    text = 'Here it is:\n```json\n{"name": "a", "items": [{"qty": 2}]}\n```\nDone.'
    assert validate_output(text, SCHEMA) == ({"name": "a", "items": [{"qty": 2}]}, None)


def test_bare_fence() -> None:
    assert validate_output('```\n{"name": "b"}\n```', SCHEMA) == ({"name": "b"}, None)


def test_prose_around_one_object() -> None:
    text = 'Sure! The answer is {"name": "c"} as requested.'
    assert validate_output(text, SCHEMA) == ({"name": "c"}, None)


def test_two_objects_in_prose_are_ambiguous() -> None:
    value, error = validate_output('either {"name": "a"} or {"name": "b"}', SCHEMA)
    assert value is None
    assert error is not None and "not JSON" in error


def test_invalid_json() -> None:
    value, error = validate_output('{"name": ', SCHEMA)
    assert value is None
    assert error is not None and error.startswith("the answer is not JSON")


def test_empty_answer() -> None:
    assert validate_output("  ", SCHEMA) == (None, "the answer is empty")


def test_schema_violation_names_the_path() -> None:
    value, error = validate_output('{"name": 5}', SCHEMA)
    assert value is None
    assert error == "at $.name: 5 is not of type 'string'"


def test_missing_required_property() -> None:
    _, error = validate_output("{}", SCHEMA)
    assert error is not None and "'name' is a required property" in error


def test_nested_path_in_the_error() -> None:
    _, error = validate_output('{"name": "a", "items": [{"qty": 1}, {"qty": "x"}]}', SCHEMA)
    assert error is not None and error.startswith("at $.items[1].qty:")


def test_huge_input_gives_a_bounded_error() -> None:
    text = "{" * 200_000 + "x" * 200_000
    _, error = validate_output(text, SCHEMA)
    assert error is not None and len(error) <= MAX_ERROR_CHARS
    huge = json.dumps({"name": 1, "pad": "y" * 500_000})
    _, error = validate_output(huge, {"type": "object", "properties": {"name": {"enum": ["z"]}}})
    assert error is not None and len(error) <= MAX_ERROR_CHARS


def test_schema_draft_is_honoured() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}
    assert validate_output("[1]", draft7)[1] is not None  # tuple form of items: draft 7 only


def test_an_invalid_schema_falls_back_to_the_lenient_checker() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": "x"}
    assert validate_output('{"a": 1}', schema) == ({"a": 1}, None)
    assert validate_output('{"a": "s"}', schema)[1] is not None


def test_instruction_and_repair_texts() -> None:
    assert '{"type":"object"' in schema_instruction(SCHEMA)
    assert repair_request("at $.a: bad").startswith(
        "Your answer is not valid JSON for the required schema: at $.a: bad."
    )


# -- over the wire (scripted model) ------------------------------------------------------------


async def test_valid_answer_is_the_structured_output(server: ScriptedServer) -> None:
    async with open_session(server, outputFormat=OUTPUT_FORMAT) as (ws, _):
        result = check_result(await turn(ws, 'json {"name":"x","items":[{"qty":3}]}'))
        assert result["structured_output"] == {"name": "x", "items": [{"qty": 3}]}
        assert result["result"] == '{"name":"x","items":[{"qty":3}]}'
        assert result["num_turns"] == 1


async def test_fenced_answer_is_accepted(server: ScriptedServer) -> None:
    async with open_session(server, outputFormat=OUTPUT_FORMAT) as (ws, _):
        result = check_result(await turn(ws, 'json ```json\n{"name":"f"}\n```'))
        assert result["structured_output"] == {"name": "f"}


async def test_always_invalid_ends_with_max_retries(server: ScriptedServer) -> None:
    async with open_session(server, outputFormat=OUTPUT_FORMAT) as (ws, _):
        frames = await turn(ws, "json not json")
        result = check_result(frames, subtype="error_max_structured_output_retries")
        assert result["num_turns"] == 3  # the answer and two repairs (the default)
        assert [f["type"] for f in frames].count("assistant") == 3
        assert len(result["errors"]) == 1
        assert result["errors"][0].startswith("structured output failed validation: ")
        assert result.get("structured_output") is None


async def test_max_turns_binds_during_repair(server: ScriptedServer) -> None:
    async with open_session(server, outputFormat=OUTPUT_FORMAT, maxTurns=2) as (ws, _):
        result = check_result(await turn(ws, "json nope"), subtype="error_max_turns")
        assert result["num_turns"] == 2


# -- repair loop with a model that learns ------------------------------------------------------


class Replaying(ScriptedProvider):
    """The scripted model answering with ``replies`` in order (the last one repeats), and
    remembering every request."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        # A snapshot: the request's list may be the live transcript, which grows after the call.
        self.requests.append(dataclasses.replace(request, messages=list(request.messages)))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        scripted = dataclasses.replace(
            request, messages=[*request.messages[:-1], {"role": "user", "content": f"json {reply}"}]
        )
        async for event in super().stream(scripted):
            yield event


@asynccontextmanager
async def replaying_server(
    tmp_path: Path, provider: Replaying, **config: Any
) -> AsyncIterator[ScriptedServer]:
    settings = ServerConfig(
        port=0,
        projects={"p": [SECRET]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db",
        **config,
    )
    router = ModelRouter(provider, price_model="scripted")
    async with ChuckyServer(settings, router=router) as server:
        yield ScriptedServer(server, "p", SECRET)


async def test_invalid_then_valid_on_repair(tmp_path: Path) -> None:
    provider = Replaying('{"name": 1}', 'Fixed: ```json\n{"name": "ok"}\n```')
    async with replaying_server(tmp_path, provider) as server:
        async with open_session(
            server, outputFormat=OUTPUT_FORMAT, systemPrompt="You are terse."
        ) as (ws, info):
            result = check_result(await turn(ws, "give me a name"))
            assert result["structured_output"] == {"name": "ok"}
            assert result["num_turns"] == 2
        assert len(provider.requests) == 2
        first, second = provider.requests
        # The schema instruction follows the session's own system prompt.
        assert first.system is not None
        assert first.system.startswith("You are terse.")
        assert schema_instruction(SCHEMA) in first.system
        # The repair request is the last user message of the second call, naming the path.
        repair = second.messages[-1]
        assert repair["role"] == "user"
        assert repair["content"] == repair_request("at $.name: 1 is not of type 'string'")
        assert second.messages[-2]["role"] == "assistant"
        # The transcript keeps the repair: user, assistant, repair, assistant.
        async with open_session(server, sessionId=info["sessionId"]) as (_, resumed):
            assert resumed["messageCount"] == 4


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_retries_are_configurable(tmp_path: Path, retries: int) -> None:
    provider = Replaying('{"items": "no"}')
    async with replaying_server(
        tmp_path, provider, max_structured_output_retries=retries
    ) as server:
        async with open_session(server, outputFormat=OUTPUT_FORMAT) as (ws, info):
            frames = await turn(ws, "go")
            result = check_result(frames, subtype="error_max_structured_output_retries")
        assert len(provider.requests) == 1 + retries
        assert result["num_turns"] == 1 + retries
        error = result["errors"][0]
        assert error.startswith("structured output failed validation: at $")
        async with open_session(server, sessionId=info["sessionId"]) as (_, resumed):
            assert resumed["messageCount"] == 2 + 2 * retries


async def test_no_schema_no_instruction(tmp_path: Path) -> None:
    provider = Replaying('{"name": 1}')
    async with replaying_server(tmp_path, provider) as server:
        async with open_session(server, systemPrompt="plain") as (ws, _):
            result = check_result(await turn(ws, "go"))
        assert result.get("structured_output") is None
        assert provider.requests[0].system == "plain"
        assert len(provider.requests) == 1


async def test_budget_refusal_during_repair(tmp_path: Path) -> None:
    provider = Replaying("not json")
    async with replaying_server(tmp_path, provider) as server:
        async with open_session(server, outputFormat=OUTPUT_FORMAT) as (ws, _):
            check_result(await turn(ws, "go"), subtype="error_max_structured_output_retries")
        # A cap that pays for the first call only: its worst case is the input at the cache-write
        # price ($3.75 per M) plus 16 output tokens ($15 per M).
        first_input = count_input_tokens(provider.requests[0])
        cap = (first_input * 3.75 + 16 * 15) * 1.05 / 1e6
        provider.requests.clear()
        async with open_session(server, outputFormat=OUTPUT_FORMAT, maxBudgetUsd=cap) as (ws, _):
            result = check_result(await turn(ws, "go"), subtype="error_max_budget_usd")
    assert len(provider.requests) == 1
    assert result["num_turns"] == 1
    assert result["errors"] == ["max budget reached"]
