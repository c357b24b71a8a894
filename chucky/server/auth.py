"""Token verification at the WebSocket upgrade (PROTOCOL.md sections 1 and 7)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from ..errors import AuthenticationError, ChuckyError
from ..tokens import TokenClaims, decode_token, verify_claims

__all__ = ["authenticate", "extract_token"]

logger = logging.getLogger("chucky.server.auth")


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


def authenticate(
    token: str | None, projects: Mapping[str, Sequence[str]], *, now: float | None = None
) -> TokenClaims:
    """Verify ``token`` against the secrets of the project it names.

    Raises:
        AuthenticationError: no token, a malformed or badly signed token (``invalid_token``),
            an expired one (``token_expired``), or an unknown project (``unknown_project``).
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
    if not isinstance(issuer, str) or not issuer:
        raise AuthenticationError(
            "Unauthorized: invalid token (no iss claim)", details={"reason": "invalid_token"}
        )
    secrets = projects.get(issuer)
    if not secrets:
        raise AuthenticationError(
            f"Unauthorized: unknown project {issuer!r}", details={"reason": "unknown_project"}
        )
    try:
        return verify_claims(token, list(secrets), now=now)
    except AuthenticationError as exc:
        raise AuthenticationError(
            exc.message if "nauthorized" in exc.message else f"Unauthorized: {exc.message}",
            details=exc.details,
        ) from exc
