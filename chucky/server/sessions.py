"""Opening a session at ``init`` (docs/protocol.md sections 2 and 5).

:func:`open_session` applies the token's policy to the client's options, finds or creates the
session in the store (``sessionId`` / ``resume``, ``continue``, ``forkSession``,
``resumeSessionAt``) -- only the owner (same project, same user) may continue a session; anyone
else gets the same ``session_not_found`` as for an id that does not exist -- and takes the
session's concurrency lease, which also makes a session live on another socket (of any node)
``session_busy``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._redact import redacting_logger
from ..errors import ConcurrencyLimitError, SessionError, SessionNotFoundError, ValidationError
from ..history import seed_transcript
from ..options import SessionOptions, SystemPromptPreset
from ..protocol.frames import MAX_SERVER_FRAME_BYTES
from ..tokens import TokenClaims
from .agent import TurnSettings
from .catalog import ToolCatalog
from .policy import Policy
from .store import Lease, SessionRecord, new_id

if TYPE_CHECKING:
    from .app import ChuckyServer
    from .config import ServerConfig

__all__ = ["RELEASE_WAIT", "OpenSession", "iso_time", "open_session"]

logger = redacting_logger("chucky.server")

RELEASE_WAIT = 2.0
"""Seconds a lease conflict with a socket that is closing is retried."""


@dataclass(slots=True)
class OpenSession:
    """A session opened on a connection, with what is in force for it."""

    record: SessionRecord
    lease: Lease
    options: SessionOptions
    catalog: ToolCatalog
    policy: Policy
    unsupported: tuple[str, ...] = ()
    """The ``init`` options this server does not act on (``unsupportedOptions``)."""

    def info(self) -> dict[str, Any]:
        """The ``session_info`` data (docs/protocol.md section 2)."""
        record = self.record
        info = {
            "sessionId": record.session_id,
            "model": record.model,
            "tools": self.catalog.names,
            "messageCount": len(record.transcript),
            "createdAt": iso_time(record.created_at),
            "lastActivityAt": iso_time(record.last_activity_at),
        }
        if self.unsupported:
            info["unsupportedOptions"] = list(self.unsupported)
        return info

    def turn_settings(self, config: ServerConfig, overrides: SessionOptions | None) -> TurnSettings:
        """The options in force for one turn: the session's, and a prompt's per-turn options
        through the token's policy like the init's."""
        record, options = self.record, self.options
        if overrides is not None:
            options = self.policy.apply(
                options.merged(overrides), default_model=record.model or config.default_model
            )
        model = options.model or record.model or config.default_model
        output_format = options.output_format
        return TurnSettings(
            model=model,
            system_prompt=options.system_prompt_text(),
            max_turns=options.max_turns if options.max_turns is not None else config.max_turns,
            max_tokens=min(options.max_tokens or config.max_tokens, config.max_tokens),
            include_partial_messages=bool(options.include_partial_messages),
            max_budget_usd=options.max_budget_usd,
            permission_mode=options.permission_mode or "default",
            output_schema=output_format.schema_ if output_format is not None else None,
            max_structured_output_retries=config.max_structured_output_retries,
            params=options.inference_params(),
            fallback_model=options.fallback_model,
            tool_choice=options.tool_choice,
            model_timeout=config.model_timeout,
            first_event_timeout=config.first_event_timeout,
            unsupported_options=self.unsupported,
        )


def iso_time(timestamp: float) -> str:

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(
        f"Session not found: {session_id:.200}", details={"reason": "session_not_found"}
    )


async def open_session(
    server: ChuckyServer,
    claims: TokenClaims,
    requested: SessionOptions,
    *,
    lease_wait: float | None = None,
) -> OpenSession:
    """Open the session an ``init`` asks for.

    ``lease_wait``: seconds a session busy on another node (or detached on this one) is
    waited for, beyond the usual :data:`RELEASE_WAIT` -- a client resuming a session without
    replay waits for its turn to end there (docs/protocol.md section 10).

    Raises:
        SessionNotFoundError: an unknown session id, or one that belongs to someone else.
        SessionError: the session is live on another connection (``session_busy``).
        ConcurrencyLimitError: the user or the project has too many live sessions.
        ValidationError: invalid options (tools, ``resumeSessionAt``).
    """
    store, config = server.store, server.config
    project, user = claims.iss, claims.sub
    now = time.time()
    history: list[tuple[str, Any]] = []
    if requested.messages:
        requested, history = _with_history(requested)
    policy = Policy.from_claims(claims)
    options = policy.apply(requested, default_model=config.default_model)
    catalog = policy.filter_catalog(ToolCatalog.from_options(options))
    _check_frame_room(options, catalog)
    record: SessionRecord | None = None
    if options.session_id:
        record = await store.get_session(options.session_id, project, user)
        if record is None:
            raise _not_found(options.session_id)
    elif options.continue_session:
        record = await store.latest_session(project, user)
    fork = record is not None and bool(options.fork_session)
    # The lease comes first: a user at a limit must not leave a new session behind each try.
    session_id = record.session_id if record is not None and not fork else new_id()
    lease = await _acquire(server, claims, session_id, wait=lease_wait)
    try:
        if record is not None and not fork:
            # Read it again under the lease: the socket that held it may have written more.
            record = await store.get_session(session_id, project, user)
            if record is None:
                raise _not_found(session_id)
        if record is None or fork:
            model = options.model or (record.model if record else config.default_model)
            source = record
            record = await store.create_session(project, user, model, now, session_id=session_id)
            if source is not None:
                record.replace_transcript(_cut(source.transcript, options))
        elif options.resume_session_at:
            # Cut under the lease: a session live on another socket stays untouched.
            record.replace_transcript(_cut(record.transcript, options))
        for role, content in history:
            record.append(role, content)
        if options.model:
            # The session's model is the init's; a prompt's per-turn model never sticks to it.
            record.model = options.model
        await store.save_session(record)
    except BaseException:
        await store.release_lease(lease)
        raise
    unsupported = tuple(requested.unsupported())
    if unsupported:
        logger.info(
            "session %s: options not acted on here: %s", session_id, ", ".join(unsupported)[:500]
        )
    return OpenSession(record, lease, options, catalog, policy, unsupported)


FRAME_HEADROOM = 64 * 1024
"""Bytes of a ``session_info`` or ``system`` init frame kept for what is not the session's
tool names, MCP servers and model (ids, times, the working directory, the JSON around them)."""


def _check_frame_room(options: SessionOptions, catalog: ToolCatalog) -> None:
    """Refuse a session whose ``session_info`` and ``system`` init frames, which list its tool
    names and MCP servers, could not fit the server's frame limit (docs/protocol.md section 3).

    Raises:
        ValidationError: ``invalid_options``, with the ``limit`` in bytes.
    """
    size = len(json.dumps(catalog.names)) + len(json.dumps(catalog.servers, default=str))
    size += len(json.dumps(options.model or ""))
    room = MAX_SERVER_FRAME_BYTES - FRAME_HEADROOM
    if size > room:
        raise ValidationError(
            f"Invalid options: the session's {len(catalog.names):,} tool names and MCP servers "
            f"take {size:,} bytes, and the session_info and system frames that list them must "
            f"fit the {MAX_SERVER_FRAME_BYTES:,}-byte frame limit (at most {room:,} bytes for "
            "them): declare fewer tools",
            details={"reason": "invalid_options", "limit": MAX_SERVER_FRAME_BYTES},
        )


async def _acquire(
    server: ChuckyServer, claims: TokenClaims, session_id: str, *, wait: float | None = None
) -> Lease:
    """Take the session's lease.

    A lease held by a process of this host that is provably gone (killed: its leases were not
    released) is taken back at once (:meth:`~chucky.server.app.ChuckyServer.reclaim_dead_nodes`),
    then the lease is taken again without waiting.

    A socket that has just closed releases its lease a moment after the client saw the close,
    so a client that reconnects at once would find its own session busy, or its last slot
    taken. Such a conflict is retried for up to :data:`RELEASE_WAIT` seconds, unless the holder
    is a live socket of this node (then the answer is known at once); with ``wait``, for up to
    that many seconds more whoever holds it.
    """
    config = server.config
    deadline = time.monotonic() + RELEASE_WAIT + (wait or 0.0)
    reclaimed = False
    while True:
        try:
            return await server.store.acquire_lease(
                claims.iss,
                claims.sub,
                session_id,
                node_id=server.node_id,
                now=time.time(),
                ttl=config.lease_ttl,
                user_limit=config.max_sessions_per_user,
                project_limit=config.max_sessions_per_project,
            )
        except SessionError as exc:
            if exc.reason != "session_busy" or (wait is None and server.holds_live(session_id)):
                raise
            if not reclaimed:
                # Then at once again: the holder may have been a dead process of this host
                # (or a closing socket that let go meanwhile).
                reclaimed = True
                await server.reclaim_dead_nodes(time.time())
                continue
            if time.monotonic() >= deadline:
                raise
        except ConcurrencyLimitError:
            if not reclaimed:
                reclaimed = True
                await server.reclaim_dead_nodes(time.time())
                continue
            if not server.releasing(claims) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.02 if wait is None else 0.2)


def _with_history(requested: SessionOptions) -> tuple[SessionOptions, list[tuple[str, Any]]]:
    """The options with the history's system messages in the system prompt (after the
    ``systemPrompt`` given), and the transcript messages the history adds.

    Raises:
        ValidationError: ``invalid_options``: the history is malformed.
    """
    system, history = seed_transcript(requested.messages or [])
    if system is None:
        return requested, history
    prompt = requested.system_prompt
    if isinstance(prompt, SystemPromptPreset):
        append = "\n\n".join(part for part in (prompt.append, system) if part)
        prompt = prompt.model_copy(update={"append": append})
    else:
        prompt = "\n\n".join(part for part in (prompt, system) if part)
    return requested.model_copy(update={"system_prompt": prompt}), history


def _cut(transcript: list[dict[str, Any]], options: SessionOptions) -> list[dict[str, Any]]:
    """The transcript up to and including ``resumeSessionAt`` (a copy)."""
    if not options.resume_session_at:
        return [dict(message) for message in transcript]
    cut = next(
        (i for i, m in enumerate(transcript) if m.get("uuid") == options.resume_session_at),
        None,
    )
    if cut is None:
        raise ValidationError(
            f"Invalid options: resumeSessionAt {options.resume_session_at!r:.200} is not a "
            "message of this session",
            details={"reason": "invalid_options"},
        )
    return [dict(message) for message in transcript[: cut + 1]]
