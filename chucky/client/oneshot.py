"""``chucky.query()``: one turn, one call, no client to manage (like claude-agent-sdk's
``query()``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Unpack

from ..errors import ValidationError
from ..messages import ErrorMessage, SDKMessage
from .chucky import Chucky
from .hooks import CanUseTool, HookMatcher
from .session import Content
from .settings import SessionArgs

__all__ = ["query"]


async def query(
    prompt: Content,
    *,
    token: str | None = None,
    url: str | None = None,
    can_use_tool: CanUseTool | None = None,
    hooks: Mapping[str, Sequence[HookMatcher]] | None = None,
    turn_timeout: float | None = None,
    **options: Unpack[SessionArgs],
) -> AsyncIterator[SDKMessage]:
    """Run one turn in a fresh session and yield its messages, the ``result`` last.

    ``async for message in chucky.query("...", model=...)``: a client is opened for the
    call and closed when the iteration ends. To leave early, wrap the call in
    :func:`contextlib.aclosing` so the session closes at once.

    Args:
        prompt: The user's message.
        token: The end-user token; default: the ``CHUCKY_TOKEN`` environment variable.
        url: The server's WebSocket URL; default: ``CHUCKY_URL``, else the hosted service.
        can_use_tool: Asked before each client tool call (:mod:`chucky.client.hooks`).
        hooks: ``PreToolUse`` / ``PostToolUse`` / ``Stop`` hooks (:mod:`chucky.client.hooks`).
        turn_timeout: Seconds the turn may take.
        **options: Session options (``model``, ``tools``, ``output_format`` ...).

    Raises:
        ValidationError: no token (neither ``token`` nor ``CHUCKY_TOKEN``), or invalid options.
        ChuckyError: the typed error the turn ended with (an ``error`` frame), or a connection
            failure or timeout.
    """
    token = token or os.environ.get("CHUCKY_TOKEN")
    if not token:
        raise ValidationError("chucky.query() needs a token: pass token= or set CHUCKY_TOKEN")
    client = Chucky(
        token,
        url or os.environ.get("CHUCKY_URL") or None,
        can_use_tool=can_use_tool,
        hooks=hooks,
    )
    async with client, client.create_session(**options) as session:
        await session.send(prompt, turn_timeout=turn_timeout)
        async for message in session.stream():
            if isinstance(message, ErrorMessage):
                raise message.exception
            yield message
