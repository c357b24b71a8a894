"""Issue 11, findings 5 and 7, and ill-typed claims: what a token may not do."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chucky import create_budget, create_token
from chucky.errors import AuthenticationError
from chucky.testing import ScriptedServer
from chucky.tokens import CLOCK_SKEW_SECONDS, verify_claims


async def _verdict(server: ScriptedServer, token: str) -> dict[str, Any]:
    """The first frame the server sends for ``token`` (its error, or ``ready``)."""
    async with connect(f"{server.url}?token={token}") as ws:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] == "error":
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        return frame


def _claims(server: ScriptedServer) -> dict[str, Any]:
    return dict(jwt.decode(server.token(), options={"verify_signature": False}))


async def test_an_unknown_project_is_answered_as_a_wrong_secret(server: ScriptedServer) -> None:
    wrong = "hk_live_" + "f" * 32
    budget = create_budget(1, 1)
    exists = create_token("u", server.project_id, wrong, budget)
    missing = create_token("u", "no-such-project", wrong, budget)
    missing_right_secret = create_token("u", "no-such-project", server.secret, budget)
    answers = [await _verdict(server, token) for token in (exists, missing, missing_right_secret)]
    assert answers[0]["type"] == "error"
    assert answers[0]["payload"]["details"]["reason"] == "invalid_token"
    assert answers[1] == answers[0] == answers[2]
    assert "no-such-project" not in json.dumps(answers)


@pytest.mark.parametrize(
    ("nbf_in", "accepted"),
    [
        (86_400, False),
        (CLOCK_SKEW_SECONDS + 30, False),
        (CLOCK_SKEW_SECONDS - 5, True),
        (-60, True),
    ],
)
async def test_nbf_is_honoured_with_the_clock_skew_of_exp(
    server: ScriptedServer, nbf_in: float, accepted: bool
) -> None:
    claims = {**_claims(server), "nbf": int(time.time() + nbf_in)}
    token = jwt.encode(claims, server.secret, algorithm="HS256")
    frame = await _verdict(server, token)
    if accepted:
        assert frame["type"] == "control"
    else:
        assert frame["type"] == "error"
        assert frame["payload"]["details"]["reason"] == "invalid_token"
        assert "nbf" in frame["payload"]["message"]


@pytest.mark.parametrize("nbf", ["tomorrow", True, None, [1]])
def test_an_ill_typed_nbf_is_an_invalid_token(nbf: Any) -> None:
    secret = "hk_live_" + "0" * 32
    claims = jwt.decode(
        create_token("u", "p", secret, create_budget(1, 1)), options={"verify_signature": False}
    )
    token = jwt.encode({**claims, "nbf": nbf}, secret, algorithm="HS256")
    if nbf is None:
        verify_claims(token, secret)  # null: absent
        return
    with pytest.raises(AuthenticationError) as info:
        verify_claims(token, secret)
    assert info.value.details["reason"] == "invalid_token"


@pytest.mark.parametrize("claim", ["iss", "sub"])
async def test_a_lone_surrogate_in_a_claim_is_an_invalid_token(
    server: ScriptedServer, claim: str
) -> None:
    claims = {**_claims(server), claim: "p\udc00"}
    token = jwt.encode(claims, server.secret, algorithm="HS256")
    frame = await _verdict(server, token)
    assert frame["type"] == "error"
    assert frame["payload"]["code"] == "AUTHENTICATION_ERROR"
    assert frame["payload"]["details"]["reason"] == "invalid_token"
    assert "sqlite" not in json.dumps(frame) and "/" not in frame["payload"]["message"]
