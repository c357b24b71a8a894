"""Prometheus metrics of one server (docs/protocol.md section 9, ``GET /metrics``).

Every :class:`ServerMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`, never
the process-wide default one, so several servers in one process (tests) keep separate counts.

Exposed series::

    chucky_connections_open                     gauge    session sockets open (WS + POST /prompt)
    chucky_connections_total                    counter  session sockets served (WS + POST /prompt)
    chucky_turns_total{subtype}                 counter  turns finished, by result subtype
    chucky_errors_total{code}                   counter  error frames sent, by code
    chucky_tool_calls_total{outcome}            counter  client tool calls: ok, error, timeout
    chucky_spend_usd_total{project}             counter  AI spend in USD
    chucky_compute_seconds_total{project}       counter  compute used in seconds
    chucky_http_requests_total{route,status}    counter  plain-HTTP requests answered

The gauge is not called ``chucky_connections``: a counter ``chucky_connections_total`` owns that
metric family name in the Prometheus data model, and the client library refuses both.

Label values come from bounded sets (result subtypes, error codes, configured project ids, route
names); never pass a user id or a raw path. As a guard, each label keeps at most
:data:`MAX_LABEL_VALUES` distinct values; later newcomers are counted under ``"other"``.

Who may read them: project ids and their spend are not for everyone. :class:`MetricsGate` decides
per listener, from its address and the metrics token (``--metrics-token``, or
``CHUCKY_METRICS_TOKEN``):

==========================  ======================  ===========================================
listener address            metrics token           ``GET /metrics``
==========================  ======================  ===========================================
any                         set                     ``Authorization: Bearer <token>`` (else 401)
loopback (127.0.0.0/8,      none                    open
``::1``, ``localhost``)
anything else               none                    403 ``metrics_disabled``
==========================  ======================  ===========================================
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client import generate_latest as _generate_latest

from ..errors import AuthenticationError, ValidationError

__all__ = [
    "MAX_LABEL_VALUES",
    "OTHER",
    "MetricsAccess",
    "MetricsGate",
    "ServerMetrics",
    "check_metrics_token",
    "is_loopback",
]

MAX_LABEL_VALUES: Final = 100
"""Distinct values one label may take before newcomers are folded into :data:`OTHER`."""

OTHER: Final = "other"
"""The label value that stands for every value beyond :data:`MAX_LABEL_VALUES`."""


class _BoundedLabel:
    """The values seen for one label, capped so a bug cannot explode cardinality."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class ServerMetrics:
    """The counters and gauges of one server, and their Prometheus text rendering.

    Args:
        max_label_values: Distinct values each label may take before they fold into ``other``.
    """

    def __init__(self, *, max_label_values: int = MAX_LABEL_VALUES) -> None:
        self.registry = CollectorRegistry()
        """The registry holding this server's metrics (and nothing else)."""
        registry = self.registry
        self._connections = Gauge(
            "chucky_connections_open",
            "Sessions served now (WebSockets and POST /prompt turns).",
            registry=registry,
        )
        self._connections_total = Counter(
            "chucky_connections_total",
            "Sessions served (WebSockets and POST /prompt turns).",
            registry=registry,
        )
        self._turns = Counter(
            "chucky_turns_total",
            "Turns finished, by result subtype.",
            ["subtype"],
            registry=registry,
        )
        self._errors = Counter(
            "chucky_errors_total", "Error frames sent, by code.", ["code"], registry=registry
        )
        self._tool_calls = Counter(
            "chucky_tool_calls_total",
            "Client-side tool calls, by outcome (ok, error, timeout).",
            ["outcome"],
            registry=registry,
        )
        self._spend = Counter(
            "chucky_spend_usd_total", "AI spend in US dollars.", ["project"], registry=registry
        )
        self._compute = Counter(
            "chucky_compute_seconds_total",
            "Compute time used, in seconds.",
            ["project"],
            registry=registry,
        )
        self._http = Counter(
            "chucky_http_requests_total",
            "Plain-HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=registry,
        )
        limit = max_label_values
        self._subtype = _BoundedLabel(limit)
        self._code = _BoundedLabel(limit)
        self._outcome = _BoundedLabel(limit)
        self._project = _BoundedLabel(limit)
        self._route = _BoundedLabel(limit)

    def connection_opened(self) -> None:
        """A session socket (a WebSocket, or a POST /prompt turn) was accepted."""
        self._connections.inc()
        self._connections_total.inc()

    def connection_closed(self) -> None:
        """A WebSocket connection counted by :meth:`connection_opened` ended."""
        self._connections.dec()

    def turn_finished(self, subtype: str) -> None:
        """A turn ended with a ``result`` of this ``subtype`` (``success``, ``error_...``)."""
        self._turns.labels(subtype=self._subtype(subtype)).inc()

    def error_sent(self, code: str) -> None:
        """An ``error`` frame with this ``code`` was sent (docs/protocol.md section 8)."""
        self._errors.labels(code=self._code(code)).inc()

    def tool_called(self, outcome: str) -> None:
        """A client-side tool call ended: ``ok``, ``error`` or ``timeout``."""
        self._tool_calls.labels(outcome=self._outcome(outcome)).inc()

    def spent(self, project_id: str, microdollars: int) -> None:
        """``project_id`` spent this much on the model (negative amounts are ignored)."""
        if microdollars > 0:
            self._spend.labels(project=self._project(project_id)).inc(microdollars / 1_000_000)

    def compute_used(self, project_id: str, seconds: float) -> None:
        """``project_id`` used this much compute time (negative amounts are ignored)."""
        if seconds > 0:
            self._compute.labels(project=self._project(project_id)).inc(seconds)

    def http_request(self, route: str, status: int) -> None:
        """A plain-HTTP request was answered; ``route`` is a route name, not the raw path."""
        self._http.labels(route=self._route(route), status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its ``Content-Type``."""
        return _generate_latest(self.registry), CONTENT_TYPE_LATEST


# RFC 6750 section 2.1: the characters a bearer token may hold (so it fits a header as is).
_TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MIN_TOKEN_LENGTH: Final = 16


def check_metrics_token(token: str) -> str:
    """``token`` if it can be a metrics token: 16 or more characters of RFC 6750's ``b64token``.

    Raises:
        ValidationError: another token (the message never quotes it).
    """
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise ValidationError(
            f"invalid metrics token: use {MIN_TOKEN_LENGTH} or more of the characters A-Z a-z "
            "0-9 - . _ ~ + / (= only at the end), e.g. the output of: openssl rand -hex 32",
            details={"reason": "invalid_options"},
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps a socket on this machine (``127.0.0.0/8``, ``::1``,
    ``localhost``). An empty host, a wildcard (``0.0.0.0``, ``::``) or any other name is not."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsAccess(enum.Enum):
    """Who may read ``GET /metrics`` on one listener (module docstring)."""

    OPEN = "open"
    """Anyone who can connect: the listener is on the loopback interface."""
    TOKEN = "token"
    """Requests carrying ``Authorization: Bearer <metrics token>``."""
    OFF = "off"
    """Nobody: the listener is reachable from elsewhere and no token is set."""


@dataclass(frozen=True, slots=True)
class MetricsGate:
    """The access rule of ``GET /metrics`` on one listener.

    Attributes:
        access: Who may read.
        token: The bearer token when ``access`` is :attr:`MetricsAccess.TOKEN`.
    """

    access: MetricsAccess
    token: str | None = field(default=None, repr=False)

    @classmethod
    def for_listener(cls, host: str, token: str | None) -> MetricsGate:
        """The rule for a listener on ``host``, with the metrics ``token`` if one is set."""
        if token:
            return cls(MetricsAccess.TOKEN, token)
        return cls(MetricsAccess.OPEN if is_loopback(host) else MetricsAccess.OFF)

    def check(self, authorization: str | None) -> None:
        """Let a request with this ``Authorization`` header read the metrics, or refuse it.

        Raises:
            AuthenticationError: ``metrics_disabled`` (HTTP 403) when the metrics are off;
                ``invalid_token`` (HTTP 401) when the bearer token is missing or wrong. The
                token is compared in constant time.
        """
        if self.access is MetricsAccess.OPEN:
            return
        if self.access is MetricsAccess.OFF or self.token is None:
            raise AuthenticationError(
                "Forbidden: GET /metrics is off on a server listening beyond localhost without "
                "a metrics token (set --metrics-token or CHUCKY_METRICS_TOKEN, or serve the "
                "metrics on a loopback address with --metrics-port)",
                details={"reason": "metrics_disabled"},
            )
        scheme, _, presented = (authorization or "").strip().partition(" ")
        expected = self.token.encode()
        # compare_digest takes as long whatever prefix matches (its time depends only on the
        # length of the presented value).
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), expected
        ):
            raise AuthenticationError(
                "Unauthorized: GET /metrics needs the metrics token as "
                "Authorization: Bearer <token>",
                details={"reason": "invalid_token"},
            )
