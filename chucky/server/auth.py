"""Token verification at the WebSocket upgrade (docs/protocol.md sections 1 and 7)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from .._redact import redacting_logger
from ..errors import AuthenticationError, ChuckyError
from ..tokens import CLOCK_SKEW_SECONDS, TokenClaims, decode_token, verify_claims
from ..windows import parse_window_start

__all__ = ["SecretLookup", "authenticate", "extract_token"]

logger = redacting_logger("chucky.server.auth")

_NOBODYS_SECRET = secrets.token_hex(32)
"""Verifies the tokens of unknown projects: none was signed with it."""


def _is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode (no lone surrogate from a JSON escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def extract_token(path: str, headers: Mapping[str, str] | None) -> str | None:
    """The token of an upgrade request: ``Authorization: Bearer`` first, then ``?token=``."""
    if headers is not None:
        authorization = headers.get("Authorization") or headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values and values[0] else None


SecretLookup = Callable[[str], Awaitable[Sequence[str]]]
"""Gives the active secrets of a project id (empty for an unknown project)."""


async def authenticate(
    token: str | None, secrets_of: SecretLookup, *, now: float | None = None
) -> TokenClaims:
    """Verify ``token`` against the secrets of the project it names.

    Raises:
        AuthenticationError: no token, a malformed or badly signed token, or one naming a
            project that does not exist (``invalid_token``: the two are answered alike), an
            expired one (``token_expired``), or one not valid yet (``nbf``, or a budget whose
            ``windowStart`` is still in the future: ``invalid_token``).
    """
    if not token:
        raise AuthenticationError(
            "Unauthorized: no token (use ?token=<jwt> or Authorization: Bearer <jwt>)",
            details={"reason": "invalid_token"},
        )
    try:
        issuer = decode_token(token).payload.get("iss")
    except ChuckyError as exc:
        raise AuthenticationError(
            f"Unauthorized: invalid token ({exc.message})", details={"reason": "invalid_token"}
        ) from exc
    if not isinstance(issuer, str) or not issuer or not _is_text(issuer):
        raise AuthenticationError(
            "Unauthorized: invalid token (no iss claim, or not text)",
            details={"reason": "invalid_token"},
        )
    # An unknown project is verified against a secret nobody has: its token is refused exactly
    # as a token signed with a wrong secret, so the answer never tells whether a project exists.
    keys = list(await secrets_of(issuer)) or [_NOBODYS_SECRET]
    try:
        claims = verify_claims(token, keys, now=now)
    except AuthenticationError as exc:
        raise AuthenticationError(
            exc.message if "nauthorized" in exc.message else f"Unauthorized: {exc.message}",
            details=exc.details,
        ) from exc
    _check_window_start(claims, time.time() if now is None else now)
    return claims


def _check_window_start(claims: TokenClaims, now: float) -> None:
    """A budget whose first window has not begun is not valid yet (like a JWT ``nbf``)."""
    start = claims.budget.window_start
    if start is None:
        return
    begins = parse_window_start(start).timestamp()
    if begins > now + CLOCK_SKEW_SECONDS:
        raise AuthenticationError(
            f"Unauthorized: invalid token (budget windowStart {start[:40]} is in the future)",
            details={"reason": "invalid_token"},
        )
