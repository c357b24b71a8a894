"""No turn waits for a model forever (issue 11, finding 8).

Every model call has two deadlines: its first event within ``first_event_timeout`` and its end
within ``model_timeout`` (server options, overridden per provider by the routing file). Past
one, the call is abandoned and the turn fails with ``PROVIDER_ERROR`` (kind ``timeout``); the
session goes on.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.serve import run_chucky
from support.timing import ticks

from chucky import Chucky
from chucky.errors import ProviderError, ValidationError
from chucky.server.app import ChuckyServer
from chucky.server.call_deadline import CallDeadline
from chucky.server.config import ServerConfig
from chucky.server.providers.base import ModelRequest, Provider
from chucky.server.routing import ModelRouter, RoutingConfig
from chucky.testing import ScriptedServer, scripted_server

SECRET = "hk_live_" + "a" * 32


class Stalling(Provider):
    """Starts its answer, then says nothing more (a provider hung mid-stream)."""

    name = "stalling"

    def __init__(self) -> None:
        self.cancelled = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        yield {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": request.model,
                "role": "assistant",
                "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        }
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield {"type": "message_stop"}  # pragma: no cover


# -- the pure part -------------------------------------------------------------------------------


def test_the_route_overrides_the_server() -> None:
    deadline = CallDeadline.pick(
        "m", route_first_event=5.0, route_whole=None, first_event=120.0, whole=600.0
    )
    assert (deadline.first_event, deadline.whole) == (5.0, 600.0)
    assert deadline.before_first_event == 5.0
    assert deadline.after_first_event(1000.0) == 1600.0


def test_the_first_deadline_is_the_earlier_one() -> None:
    assert CallDeadline("m", 120.0, 30.0).before_first_event == 30.0
    assert CallDeadline("m", None, 30.0).before_first_event == 30.0
    assert CallDeadline("m", 10.0, None).before_first_event == 10.0
    assert CallDeadline("m", None, None).before_first_event is None
    assert CallDeadline("m", 10.0, None).after_first_event(5.0) is None


def test_the_error_says_which_deadline_passed() -> None:
    first = CallDeadline("sonnet", 120.0, 600.0).error(streamed=False)
    assert "sent nothing for 120 s (first_event_timeout)" in first.message
    assert first.details["deadline"] == "first_event" and first.details["timeout"] == 120.0
    whole = CallDeadline("sonnet", 120.0, 600.0).error(streamed=True)
    assert "within 600 s (model_timeout)" in whole.message
    assert whole.details["deadline"] == "model" and whole.details["streamed"] is True
    # model_timeout shorter than first_event_timeout: it is the one that passed.
    short = CallDeadline("sonnet", 120.0, 30.0).error(streamed=False)
    assert short.details["deadline"] == "model" and short.details["timeout"] == 30.0
    for error in (first, whole, short):
        assert error.code == "PROVIDER_ERROR" and error.details["kind"] == "timeout"
        assert error.retryable is True and error.reason == "provider_unavailable"


def test_defaults() -> None:
    config = ServerConfig()
    assert (config.model_timeout, config.first_event_timeout) == (600.0, 120.0)


# -- through the server --------------------------------------------------------------------------


async def test_a_model_silent_past_the_first_event_deadline_fails_the_turn() -> None:
    async with (
        scripted_server(first_event_timeout=ticks(4)) as server,
        server.client() as client,
    ):
        began = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await client.prompt("sleep 30; echo too late")
        waited = time.monotonic() - began
        # The server goes on.
        after = await client.prompt("echo next")
    assert waited < 10
    error = caught.value
    assert error.details["kind"] == "timeout" and error.details["deadline"] == "first_event"
    assert "first_event_timeout" in error.message
    assert after.result == "next"


async def test_a_model_stalled_mid_answer_fails_at_the_whole_call_deadline(
    tmp_path: Path,
) -> None:
    provider = Stalling()
    config = ServerConfig(
        port=0,
        projects={"p": [SECRET]},
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db",
        model_timeout=ticks(6),
        first_event_timeout=ticks(2),  # the first event comes at once: this one is not hit
    )
    async with ChuckyServer(config, router=ModelRouter(provider)) as running:
        server = ScriptedServer(running, "p", SECRET)
        async with Chucky(server.token(), server.url) as client:
            with pytest.raises(ProviderError) as caught:
                await client.prompt("hi", include_partial_messages=True)
    error = caught.value
    assert error.details["deadline"] == "model" and error.details["timeout"] == ticks(6)
    assert error.details["streamed"] is True
    assert provider.cancelled == 1  # the call was abandoned, not left running


async def test_the_routing_file_sets_a_provider_s_deadlines(tmp_path: Path) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text(
        f"""
        [providers.slow]
        type = "scripted"
        first_event_timeout = {ticks(4)}
        model_timeout = 900

        [models.slow]
        provider = "slow"

        [models.patient]
        provider = "scripted"
        """,
        encoding="utf-8",
    )
    # The server's own deadlines are long: only the routing file's can end the first turn.
    async with (
        scripted_server(routing_file=str(routing), first_event_timeout=600.0) as server,
        server.client() as client,
    ):
        with pytest.raises(ProviderError) as caught:
            await client.prompt("sleep 30; echo late", model="slow")
        result = await client.prompt(f"sleep {ticks(6)}; echo on time", model="patient")
    assert caught.value.details["timeout"] == ticks(4)
    assert result.result == "on time"
    route = ModelRouter.from_config(RoutingConfig.from_toml(routing)).resolve("slow")
    assert (route.first_event_timeout, route.model_timeout) == (ticks(4), 900)


@pytest.mark.parametrize("value", ["-1", "0", '"soon"', "true", "nan"])
def test_a_bad_deadline_in_the_routing_file_is_refused(value: str) -> None:
    text = f"[providers.scripted]\nmodel_timeout = {value}\n[models.x]\nprovider = 'scripted'\n"
    with pytest.raises(ValidationError, match=r"providers\.scripted\.model_timeout"):
        RoutingConfig.from_mapping(tomllib.loads(text))


def test_deadline_settings_are_not_passed_to_the_provider() -> None:
    config = RoutingConfig.from_mapping(
        tomllib.loads(
            "[providers.scripted]\nfirst_event_timeout = 5\nmodel_timeout = 50\n"
            "[models.x]\nprovider = 'scripted'\n"
        )
    )
    # ScriptedProvider takes no settings: it was created all the same.
    assert ModelRouter.from_config(config).resolve("x").model_timeout == 50


@pytest.mark.parametrize("flag", ["--model-timeout", "--first-event-timeout"])
def test_chucky_serve_refuses_a_deadline_that_is_not_positive(tmp_path: Path, flag: str) -> None:
    result = run_chucky("serve", "--port", "0", flag, "0", data_dir=tmp_path, check=False)
    assert result.returncode == 2
    assert "must be a number of seconds > 0" in result.stderr
