"""Prometheus metrics of one server (chucky.server.metrics)."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from chucky.server.metrics import OTHER, ServerMetrics


def samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def test_render_has_every_metric_with_its_labels() -> None:
    metrics = ServerMetrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.turn_finished("success")
    metrics.turn_finished("success")
    metrics.turn_finished("error_max_turns")
    metrics.error_sent("BUDGET_EXCEEDED")
    metrics.tool_called("ok")
    metrics.tool_called("timeout")
    metrics.spent("proj", 1_500_000)
    metrics.spent("proj", 250_000)
    metrics.compute_used("proj", 2.5)
    metrics.http_request("prompt", 200)
    metrics.http_request("prompt", 200)
    metrics.http_request("usage", 401)

    body, content_type = metrics.render()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    text = body.decode()
    for name in (
        "chucky_connections_open",
        "chucky_connections_total",
        "chucky_turns_total",
        "chucky_errors_total",
        "chucky_tool_calls_total",
        "chucky_spend_usd_total",
        "chucky_compute_seconds_total",
        "chucky_http_requests_total",
    ):
        assert f"\n{name}" in text, name

    assert value(metrics, "chucky_connections_open") == 1
    assert value(metrics, "chucky_connections_total") == 2
    assert value(metrics, "chucky_turns_total", subtype="success") == 2
    assert value(metrics, "chucky_turns_total", subtype="error_max_turns") == 1
    assert value(metrics, "chucky_errors_total", code="BUDGET_EXCEEDED") == 1
    assert value(metrics, "chucky_tool_calls_total", outcome="ok") == 1
    assert value(metrics, "chucky_tool_calls_total", outcome="timeout") == 1
    assert value(metrics, "chucky_spend_usd_total", project="proj") == 1.75
    assert value(metrics, "chucky_compute_seconds_total", project="proj") == 2.5
    assert value(metrics, "chucky_http_requests_total", route="prompt", status="200") == 2
    assert value(metrics, "chucky_http_requests_total", route="usage", status="401") == 1


def test_two_servers_do_not_share_counts() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.turn_finished("success")
    first.connection_opened()
    second.turn_finished("success")
    second.turn_finished("success")
    assert value(first, "chucky_turns_total", subtype="success") == 1
    assert value(second, "chucky_turns_total", subtype="success") == 2
    assert value(first, "chucky_connections_open") == 1
    assert value(second, "chucky_connections_open") == 0


def test_the_global_registry_is_untouched() -> None:
    ServerMetrics().turn_finished("success")
    assert b"chucky_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_negative_amounts_are_ignored() -> None:
    metrics = ServerMetrics()
    metrics.spent("proj", -5)
    metrics.compute_used("proj", -1.0)
    metrics.spent("proj", 1)
    assert value(metrics, "chucky_spend_usd_total", project="proj") == 1e-6
    assert ("chucky_compute_seconds_total", frozenset({("project", "proj")})) not in samples(
        metrics
    )


def test_label_values_are_bounded() -> None:
    metrics = ServerMetrics(max_label_values=3)
    for n in range(10):
        metrics.error_sent(f"CODE_{n}")
    metrics.error_sent("CODE_1")
    series = {
        dict(labels)["code"]: v
        for (name, labels), v in samples(metrics).items()
        if name == "chucky_errors_total"
    }
    assert series == {"CODE_0": 1, "CODE_1": 2, "CODE_2": 1, OTHER: 7}
