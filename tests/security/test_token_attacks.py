"""Issue 11: the token attacks, each in the query and in the ``Authorization`` header.

Every forged, altered, expired, premature, ill-typed or oversized token is refused before the
connection does anything: one ``error`` frame (``AUTHENTICATION_ERROR``) and a 1008 close, or,
for a token too large for an HTTP request, an HTTP error status; never a session, a crash or a
token in the logs (the suite's log scraper, ``tests/conftest.py``, checks every record).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chucky import create_budget, create_token
from chucky.testing import ScriptedServer

OTHER_PROJECT, OTHER_SECRET = "other-project", "hk_live_" + "ab" * 16
ATTACKER_KEY = b"attacker-chosen-key-0123456789abcdef"
HS256_HEADER = b'{"alg": "HS256"}'
PUBLIC_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
    "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"
    "+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh\n"
    "kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ\n"
    "0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg\n"
    "cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc\n"
    "mwIDAQAB\n"
    "-----END PUBLIC KEY-----\n"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _hs(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any) -> str:
    signing_input = _segments(header, claims)
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(server: ScriptedServer, **changes: Any) -> dict[str, Any]:
    claims = dict(jwt.decode(server.token(), options={"verify_signature": False}))
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not _DROP}


_DROP = object()


def _signed(server: ScriptedServer, **changes: Any) -> str:
    return _hs({"alg": "HS256", "typ": "JWT"}, _claims(server, **changes), _key(server), "sha256")


def _key(server: ScriptedServer) -> bytes:
    return server.secret.encode()


def _tampered(server: ScriptedServer) -> str:
    header, _, signature = server.token().split(".")
    claims = _claims(server)
    claims["budget"] = {**claims["budget"], "ai": 10**15}
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


ATTACKS: dict[str, Callable[[ScriptedServer], str]] = {
    "alg-none": lambda s: _segments({"alg": "none", "typ": "JWT"}, _claims(s)) + ".",
    "alg-null": lambda s: _segments({"alg": None, "typ": "JWT"}, _claims(s)) + ".",
    "alg-none-with-signature": lambda s: (
        _segments({"alg": "none"}, _claims(s)) + "." + _b64(b"x" * 32)
    ),
    "wrong-secret": lambda s: _hs({"alg": "HS256"}, _claims(s), b"hk_live_" + b"0" * 32, "sha256"),
    "another-projects-secret": lambda s: _hs(
        {"alg": "HS256"}, _claims(s), OTHER_SECRET.encode(), "sha256"
    ),
    "hs384": lambda s: _hs({"alg": "HS384"}, _claims(s), _key(s), "sha384"),
    "hs512": lambda s: _hs({"alg": "HS512"}, _claims(s), _key(s), "sha512"),
    "rs256": lambda s: _segments({"alg": "RS256"}, _claims(s)) + "." + _b64(b"\x01" * 256),
    "hs256-keyed-with-a-public-pem": lambda s: _hs(
        {"alg": "HS256"}, _claims(s), PUBLIC_PEM.encode(), "sha256"
    ),
    "embedded-jwk": lambda s: _hs(
        {"alg": "HS256", "jwk": {"kty": "oct", "k": _b64(ATTACKER_KEY)}},
        _claims(s),
        ATTACKER_KEY,
        "sha256",
    ),
    "kid-pointing-elsewhere": lambda s: _hs(
        {"alg": "HS256", "kid": "../../dev/null"}, _claims(s), b"", "sha256"
    ),
    "tampered-claims": _tampered,
    "expired": lambda s: _signed(s, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
    "future-window-start": lambda s: _signed(
        s, budget={**_claims(s)["budget"], "windowStart": _iso(time.time() + 86_400)}
    ),
    "future-nbf": lambda s: _signed(s, nbf=int(time.time()) + 86_400),
    "missing-sub": lambda s: _signed(s, sub=_DROP),
    "missing-iss": lambda s: _signed(s, iss=_DROP),
    "missing-exp": lambda s: _signed(s, exp=_DROP),
    "missing-budget": lambda s: _signed(s, budget=_DROP),
    "sub-not-a-string": lambda s: _signed(s, sub=12345),
    "exp-a-string": lambda s: _signed(s, exp="tomorrow"),
    "budget-ai-negative": lambda s: _signed(s, budget={**_claims(s)["budget"], "ai": -1}),
    "budget-a-list": lambda s: _signed(s, budget=[1, 2]),
    "unknown-project": lambda s: create_token(
        "u", "no-such-project", s.secret, create_budget(1, 1)
    ),
    "not-a-jwt": lambda s: "this-is-not-a-token",
    "two-segments": lambda s: server_token_head(s),
    "payload-not-json": lambda s: _b64(HS256_HEADER) + "." + _b64(b"not json") + ".x",
}


def server_token_head(server: ScriptedServer) -> str:
    return ".".join(server.token().split(".")[:2])


async def _open(server: ScriptedServer, token: str, *, header: bool) -> Any:
    if header:
        return connect(server.url, additional_headers={"Authorization": f"Bearer {token}"})
    return connect(f"{server.url}?token={token}")


@pytest.mark.parametrize("where", ["query", "header"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_a_forged_or_unfit_token_is_refused(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, attack: str, where: str
) -> None:
    caplog.set_level(logging.DEBUG)  # the scraper then sees every record
    await server.server.store.upsert_project(OTHER_PROJECT, [OTHER_SECRET], time.time())
    token = ATTACKS[attack](server)
    async with await _open(server, token, header=where == "header") as ws:
        frame = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert frame["type"] == "error", frame
    assert frame["payload"]["code"] == "AUTHENTICATION_ERROR"
    expected = "token_expired" if attack == "expired" else "invalid_token"
    assert frame["payload"]["details"]["reason"] == expected
    assert ws.close_code == 1008
    assert token not in json.dumps(frame)


@pytest.mark.parametrize("where", ["query", "header"])
async def test_a_megabyte_token_is_refused_at_the_http_level(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    caplog.set_level(logging.DEBUG)
    token = _signed(server, padding="x" * (1024 * 1024))
    with pytest.raises(InvalidStatus) as refused:
        async with await _open(server, token, header=where == "header"):
            pass
    assert 400 <= refused.value.response.status_code < 500
    # The server is still well.
    async with connect(f"{server.url}?token={server.token()}") as ws:
        assert json.loads(await ws.recv())["payload"]["action"] == "ready"


async def test_the_real_token_still_opens_a_session(server: ScriptedServer) -> None:
    # The forgeries above are refused for what they are, not because signing here is broken.
    for token in (server.token(), _signed(server)):
        async with connect(f"{server.url}?token={token}") as ws:
            assert json.loads(await ws.recv())["payload"]["action"] == "ready"
