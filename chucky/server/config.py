"""Server configuration: what ``chucky serve`` and :class:`~chucky.server.app.ChuckyServer` take."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ValidationError
from ..tokens import check_project_secret
from .metrics import check_metrics_token, is_loopback

__all__ = [
    "DEFAULT_FIRST_EVENT_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MODEL_TIMEOUT",
    "DEFAULT_PORT",
    "ServerConfig",
    "parse_projects",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MODEL_TIMEOUT = 600.0
"""Seconds a model call may take, from its request to its last event (retries included)."""
DEFAULT_FIRST_EVENT_TIMEOUT = 120.0
"""Seconds a model call may take to send its first event (retries included)."""


def parse_projects(specs: Iterable[str]) -> dict[str, list[str]]:
    """Parse ``ID:SECRET`` items (also comma-separated, as in ``CHUCKY_PROJECTS``).

    A project may appear several times: each secret is accepted (key rotation).

    Raises:
        ValidationError: an item without ``:``, with an empty id, or whose secret is not
            ``hk_live_`` followed by exactly 32 hex digits (the message names the project,
            never the secret).
    """
    projects: dict[str, list[str]] = {}
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            project_id, sep, secret = item.partition(":")
            if not sep or not project_id.strip() or not secret.strip():
                raise ValidationError(
                    f"invalid project {item.split(':')[0]!r}: expected ID:SECRET",
                    details={"reason": "invalid_options"},
                )
            check_project_secret(secret.strip(), project_id=project_id.strip())
            secrets = projects.setdefault(project_id.strip(), [])
            if secret.strip() not in secrets:
                secrets.append(secret.strip())
    return projects


@dataclass(slots=True)
class ServerConfig:
    """Settings of one server process.

    Attributes:
        host, port: where to listen (``port=0`` picks a free port).
        projects: project id -> accepted secrets (several for rotation), each
            ``hk_live_`` + 32 hex digits. These projects live in this process only: their
            secrets are never written to the database, and for these ids the database's
            secrets are not consulted (``--project``, ``CHUCKY_PROJECTS``).
        default_model: the model of sessions that name none.
        tool_timeout: seconds to wait for a client's ``tool_result`` (docs/protocol.md section 6).
        max_turns: model calls per user turn when the session sets no ``maxTurns``.
        max_tokens: output-token bound of one model call.
        max_invalid_frames: rejected frames tolerated before closing with 1008.
        max_frame_bytes: largest frame accepted (16 MiB default, multimodal content).
        busy_policy: a turn arriving while another runs is ``queue``d or ``reject``ed.
        max_queued_turns, max_queued_bytes: turns (and characters of their frames) that may
            wait behind the running turn on one connection; beyond, a turn is refused with
            ``RATE_LIMIT`` / ``queue_full`` (a turn arriving at an empty queue always waits).
        write_timeout: seconds a frame may take to reach a client; a client that does not
            read for longer is cut off and its turn ends as a disconnect.
        status_interval: during a turn, send a ``system``/``status`` frame after this many
            seconds without any frame (the official Python client gives up after 300 s).
        idle_timeout: close a connection after this many seconds with no turn and no frame
            from the client (longer than the 5 minutes between the official clients' pings).
        ping_interval, ping_timeout: WebSocket-level keepalive of each connection.
        database_url: the store (SQLAlchemy URL): ``sqlite+aiosqlite:///path`` or
            ``postgresql+asyncpg://user:password@host/db``; ``None`` is a SQLite file in the
            user's data directory (:func:`chucky.server.sql.default_database_url`).
        sqlite_synchronous: a SQLite file's durability. ``normal``: a committed turn survives
            the server being killed (``kill -9``, a crash), not a power loss or a kernel crash
            (the database stays consistent; the last commits may be lost). ``full``: it survives
            those too, at the cost of an ``fsync`` per commit (per batch of turns).
        max_sessions_per_user, max_sessions_per_project: live sessions allowed at once
            (``CONCURRENCY_LIMIT`` beyond); ``None`` is no limit.
        turns_per_minute: turns one user may start per minute (``RATE_LIMIT`` beyond).
        lease_ttl: seconds a concurrency slot or budget reservation of a node that stopped
            sending heartbeats (it crashed) is kept before it is recovered; a node of this
            host proven dead (:mod:`chucky.server.nodes`) is recovered at once.
        min_output_tokens: a model call is made only if the budget pays for its input plus
            this many output tokens.
        compute_grant: seconds of compute a running turn sets aside at a time.
        shutdown_grace: on SIGTERM/SIGINT, seconds running turns get to finish.
        routing_file: a TOML model-routing file (:class:`~chucky.server.routing.RoutingConfig`);
            ``None`` serves every model with the scripted model.
        max_structured_output_retries: repair requests sent to a model whose answer fails the
            session's ``outputFormat`` schema, before the turn ends with
            ``error_max_structured_output_retries``.
        model_timeout: seconds a model call may take, from its request to its last event
            (the provider's retries and the events' delivery included); beyond, the call is
            abandoned and the turn fails with ``PROVIDER_ERROR`` (kind ``timeout``). ``None``:
            no deadline. A routing file's provider table may set its own.
        first_event_timeout: seconds a model call may take to send its first event (a
            provider that accepted the request and says nothing, a missing ``message_start``);
            the same failure. ``None``: only ``model_timeout`` applies.
        metrics_token: the bearer token ``GET /metrics`` requires (``CHUCKY_METRICS_TOKEN``):
            16 or more characters of RFC 6750's ``b64token`` set. Without one, the metrics
            are open on a loopback listener and off (403) on any other
            (:class:`~chucky.server.metrics.MetricsGate`).
        metrics_host, metrics_port: serve ``GET /metrics`` on a listener of its own (and not
            on the main one); ``metrics_host`` defaults to ``127.0.0.1`` and needs
            ``metrics_port`` (0 picks a free port). A ``metrics_host`` that is not a loopback
            address needs a ``metrics_token``.
        reconnect_grace: seconds a session whose client announced ``seq`` stays on the
            server, detached, after its socket dropped (its running turn goes on), waiting for
            the client to resume it with ``lastSeq`` (docs/protocol.md section 10); 0 ends it
            at once, as without ``seq``.
        replay_frames, replay_bytes: the bound of a session's replay buffer (the last frames
            sent, for a resume), in frames and in characters.

    Raises:
        ValidationError: a malformed project secret, an invalid metrics token, a
            ``metrics_host`` without a ``metrics_port``, or a non-loopback ``metrics_host``
            without a token.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    projects: dict[str, list[str]] = field(default_factory=dict, repr=False)
    default_model: str = "claude-sonnet-5-5"
    tool_timeout: float = 120.0
    max_turns: int = 32
    max_tokens: int = 4096
    max_invalid_frames: int = 10
    max_frame_bytes: int = 16 * 1024 * 1024
    busy_policy: Literal["queue", "reject"] = "queue"
    max_queued_turns: int = 16
    max_queued_bytes: int = 8 * 1024 * 1024
    write_timeout: float = 30.0
    status_interval: float = 30.0
    idle_timeout: float = 900.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 120.0
    database_url: str | None = None
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    max_sessions_per_user: int | None = None
    max_sessions_per_project: int | None = None
    turns_per_minute: int | None = None
    lease_ttl: float = 30.0
    min_output_tokens: int = 16
    compute_grant: float = 60.0
    shutdown_grace: float = 30.0
    routing_file: str | None = None
    max_structured_output_retries: int = 2
    model_timeout: float | None = DEFAULT_MODEL_TIMEOUT
    first_event_timeout: float | None = DEFAULT_FIRST_EVENT_TIMEOUT
    metrics_token: str | None = field(default=None, repr=False)
    metrics_host: str | None = None
    metrics_port: int | None = None
    reconnect_grace: float = 30.0
    replay_frames: int = 4096
    replay_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for project_id, secrets in self.projects.items():
            for secret in secrets:
                check_project_secret(secret, project_id=project_id)
        if self.metrics_token is not None:
            check_metrics_token(self.metrics_token)
        if self.metrics_host is not None and self.metrics_port is None:
            raise ValidationError(
                "--metrics-host needs --metrics-port", details={"reason": "invalid_options"}
            )
        if self.metrics_port is not None:
            host = self.metrics_host or DEFAULT_HOST
            if not is_loopback(host) and self.metrics_token is None:
                raise ValidationError(
                    f"--metrics-host {host[:100]} is not a loopback address: set a metrics "
                    "token too (--metrics-token, or CHUCKY_METRICS_TOKEN)",
                    details={"reason": "invalid_options"},
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServerConfig:
        """A config whose projects include ``CHUCKY_PROJECTS`` (``id1:secret1,id2:secret2``),
        and whose metrics token is ``CHUCKY_METRICS_TOKEN`` unless ``metrics_token`` is given.

        Raises:
            ValidationError: as :func:`parse_projects` and :class:`ServerConfig`.
        """
        env = os.environ if env is None else env
        fields = dict(overrides)
        given = fields.pop("projects", None)
        projects: dict[str, list[str]] = {}
        if isinstance(given, Mapping):
            projects = {str(project_id): list(secrets) for project_id, secrets in given.items()}
        for project_id, secrets in parse_projects([env.get("CHUCKY_PROJECTS", "")]).items():
            known = projects.setdefault(project_id, [])
            known.extend(s for s in secrets if s not in known)
        if fields.get("metrics_token") is None:
            fields["metrics_token"] = env.get("CHUCKY_METRICS_TOKEN") or None
        return cls(projects=projects, **fields)  # type: ignore[arg-type]
