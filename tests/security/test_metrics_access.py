"""Issue 11, finding 4: ``GET /metrics`` (project ids, spend) is not open to anyone.

Real HTTP requests against real servers on 127.0.0.1, port 0: a metrics token required as a
bearer token, compared in constant time; a listener of its own; off by default beyond localhost.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from support.raw import http_get_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chucky.errors import ValidationError
from chucky.server import metrics as metrics_module
from chucky.server.config import ServerConfig
from chucky.server.metrics import MetricsAccess, MetricsGate, is_loopback
from chucky.testing import ScriptedServer, scripted_server

TOKEN = "mt_" + "0123456789abcdef" * 2
Json = dict[str, Any]


async def get(url: str, path: str, authorization: str | None = None) -> tuple[int, Json, bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    status, got, body = await http_get_url(url, path, headers)
    return status, {k.lower(): v for k, v in got.items()}, body


def error_of(body: bytes) -> Json:
    decoded = json.loads(body)
    assert set(decoded) == {"error"}, decoded
    payload: Json = decoded["error"]
    return payload


def metrics_ws_url(server: ScriptedServer) -> str:
    """The metrics listener's address in the ws:// form :func:`http_get_url` takes."""
    return server.server.metrics_url.removesuffix("/metrics").replace("http://", "ws://") + "/ws"


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    expected = MetricsAccess.OPEN if loopback else MetricsAccess.OFF
    assert MetricsGate.for_listener(host, None).access is expected
    assert MetricsGate.for_listener(host, TOKEN).access is MetricsAccess.TOKEN


async def test_open_on_loopback_without_a_token(server: ScriptedServer) -> None:
    status, headers, body = await get(server.url, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"chucky_connections_total" in body


async def test_off_beyond_localhost_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server listens on 127.0.0.1 (tests never listen beyond it) but takes its address for
    # a public one: what `chucky serve --host 0.0.0.0` does.
    monkeypatch.setattr(metrics_module, "is_loopback", lambda host: False)
    async with scripted_server() as server:
        status, headers, body = await get(server.url, "/metrics")
        assert status == 403
        assert headers["content-type"] == "application/json"
        assert "www-authenticate" not in headers
        payload = error_of(body)
        assert payload["code"] == "AUTHENTICATION_ERROR"
        assert payload["details"] == {"reason": "metrics_disabled"}
        assert "--metrics-token" in payload["message"]
        assert b"chucky_" not in body
        # The rest of the server is not affected.
        status, _, _ = await get(server.url, "/healthz")
        assert status == 200


async def test_with_a_token_beyond_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "is_loopback", lambda host: False)
    async with scripted_server(metrics_token=TOKEN) as server:
        assert (await get(server.url, "/metrics", f"Bearer {TOKEN}"))[0] == 200
        assert (await get(server.url, "/metrics"))[0] == 401


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
        "Bearer " + "x" * 10_000,
        f"{TOKEN}",
    ],
    ids=["none", "empty", "no-value", "basic", "prefix", "longer", "case", "huge", "no-scheme"],
)
async def test_a_token_is_required_once_set(authorization: str | None) -> None:
    async with scripted_server(metrics_token=TOKEN) as server:
        status, headers, body = await get(server.url, "/metrics", authorization)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        payload = error_of(body)
        assert (payload["code"], payload["details"]) == (
            "AUTHENTICATION_ERROR",
            {"reason": "invalid_token"},
        )
        assert TOKEN not in body.decode()


async def test_the_right_token_reads_the_metrics(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with scripted_server(metrics_token=TOKEN) as server:
            for authorization in (f"Bearer {TOKEN}", f"bearer  {TOKEN} "):
                status, _, body = await get(server.url, "/metrics", authorization)
                assert status == 200
                assert b"chucky_http_requests_total" in body
            # Never in the query string: query strings end up in logs.
            status, _, _ = await get(server.url, f"/metrics?token={TOKEN}")
            assert status == 401
            assert TOKEN not in repr(server.server.config)
    assert TOKEN not in caplog.text


async def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = metrics_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(metrics_module.hmac, "compare_digest", spy)
    async with scripted_server(metrics_token=TOKEN) as server:
        assert (await get(server.url, "/metrics", "Bearer wrong"))[0] == 401
        assert (await get(server.url, "/metrics", f"Bearer {TOKEN}"))[0] == 200
    assert compared == [(b"wrong", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


# -- a listener of its own ---------------------------------------------------------------------


async def test_a_metrics_listener_of_its_own() -> None:
    async with scripted_server(metrics_port=0) as server:
        metrics_url = server.server.metrics_url
        assert metrics_url.startswith("http://127.0.0.1:")
        assert metrics_url.endswith("/metrics")
        assert f":{server.server.port}/" not in metrics_url
        own = metrics_ws_url(server)

        status, _, body = await get(own, "/metrics")
        assert status == 200
        assert b"chucky_connections_total" in body

        # The main listener no longer serves it; the metrics listener serves nothing else.
        for url, path in ((server.url, "/metrics"), (own, "/healthz"), (own, "/usage")):
            status, headers, body = await get(url, path)
            assert status == 404, (url, path)
            assert headers["content-type"] == "application/json"
            assert error_of(body)["details"] == {"reason": "not_found"}
        status, _, _ = await get(server.url, "/healthz")
        assert status == 200


async def test_the_metrics_listener_upgrades_nothing() -> None:
    async with scripted_server(metrics_port=0) as server:
        port = int(server.server.metrics_url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://127.0.0.1:{port}/ws?token={server.token()}"):
                pass
        response = caught.value.response
        assert response.status_code == 404
        assert error_of(response.body)["details"] == {"reason": "not_found"}


async def test_the_metrics_listener_takes_the_token_too() -> None:
    async with scripted_server(metrics_port=0, metrics_token=TOKEN) as server:
        own = metrics_ws_url(server)
        assert (await get(own, "/metrics"))[0] == 401
        assert (await get(own, "/metrics", f"Bearer {TOKEN}"))[0] == 200


async def test_the_metrics_listener_closes_with_the_server() -> None:
    async with scripted_server(metrics_port=0) as server:
        own = metrics_ws_url(server)
        assert (await get(own, "/metrics"))[0] == 200
    with pytest.raises(OSError):
        await get(own, "/metrics")


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["short", "", "has space in it 0123456789", "tab\tinside0123456789", "é" * 20, "=abc" * 5],
)
def test_a_bad_metrics_token_is_refused_in_one_line(token: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ServerConfig(metrics_token=token)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith("invalid metrics token")
    assert token not in message or not token


def test_metrics_host_needs_a_port_and_beyond_localhost_a_token() -> None:
    with pytest.raises(ValidationError, match="--metrics-host needs --metrics-port"):
        ServerConfig(metrics_host="127.0.0.1")
    with pytest.raises(ValidationError, match="not a loopback address"):
        ServerConfig(metrics_host="0.0.0.0", metrics_port=9100)
    ServerConfig(metrics_host="0.0.0.0", metrics_port=9100, metrics_token=TOKEN)
    ServerConfig(metrics_host="::1", metrics_port=9100)


def test_the_token_comes_from_the_environment_unless_given() -> None:
    env = {"CHUCKY_METRICS_TOKEN": TOKEN}
    assert ServerConfig.from_env(env).metrics_token == TOKEN
    other = "z" * 20
    assert ServerConfig.from_env(env, metrics_token=other).metrics_token == other
    assert ServerConfig.from_env({}).metrics_token is None
    assert ServerConfig.from_env({"CHUCKY_METRICS_TOKEN": ""}).metrics_token is None
    with pytest.raises(ValidationError, match="invalid metrics token"):
        ServerConfig.from_env({"CHUCKY_METRICS_TOKEN": "short"})
