"""Chucky tokens: mint, decode and verify the HS256 JWTs of docs/protocol.md section 7.

The budget window math lives in :mod:`chucky.windows` (re-exported here).

Everything here is pure: no I/O, and no hidden clock. Each function that needs the time takes
``now`` (an aware or naive-UTC :class:`~datetime.datetime`, or Unix seconds) and reads the real
clock only when it is ``None``.

The API is a superset of the official client's (``chucky-sdk`` 0.2.0 ``chucky.utils``):

- :func:`create_budget` rounds (the official one truncated: ``2.01`` dollars gave ``2009999``
  microdollars, ``1.13`` hours ``4067`` seconds) and always writes ``windowStart`` with a ``Z``
  suffix (never the official ``+00:00Z``).
- :func:`decode_token` returns a :class:`DecodedToken` that is also the official dict
  (``decoded["payload"]["sub"]``).
- :func:`verify_token` rejects expired tokens unless ``verify_exp=False`` (the official one only
  checked the signature), and every ``alg`` but ``HS256``.

Errors: malformed input and bad arguments raise :class:`~chucky.errors.ValidationError`;
:func:`verify_claims` raises :class:`~chucky.errors.AuthenticationError` whose
``details["reason"]`` is ``token_expired`` or ``invalid_token``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, cast

import jwt
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from .errors import AuthenticationError, ValidationError
from .windows import (
    WINDOWS,
    Window,
    as_datetime,
    format_utc,
    parse_window_start,
    to_utc,
    window_bounds,
    window_key,
)

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_EXPIRES_IN",
    "SECRET_PREFIX",
    "WINDOWS",
    "DecodedToken",
    "TokenBudget",
    "TokenClaims",
    "TokenPermissions",
    "Window",
    "check_project_secret",
    "create_budget",
    "create_token",
    "decode_token",
    "is_token_expired",
    "parse_window_start",
    "verify_claims",
    "verify_token",
    "window_bounds",
    "window_key",
]

CLOCK_SKEW_SECONDS: Final = 30.0  # docs/protocol.md section 7: allow 30 s clock skew on ``exp``
DEFAULT_EXPIRES_IN: Final = 3600
_ALGORITHM: Final = "HS256"  # the only one accepted, whatever the header says
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# Only HS256 is registered, so no other algorithm can ever be used to verify.
_JWS: Final = jwt.PyJWS(algorithms=[_ALGORITHM])
# pyjwt >= 2.10 warns (InsecureKeyLengthWarning) for HMAC keys under 32 bytes. docs/protocol.md says
# the key is the secret's UTF-8 bytes as is, short or not, so that one warning is silenced
# around our own encode/decode calls (the project runs with filterwarnings=error).
_KEY_LENGTH_WARNING: Final[type[Warning] | None] = getattr(jwt, "InsecureKeyLengthWarning", None)


SECRET_PREFIX: Final = "hk_live_"
"""What every project secret starts with (docs/protocol.md section 7: ``hk_live_<32 hex>``)."""
_SECRET: Final = re.compile(r"hk_live_[0-9a-fA-F]{32}")


def check_project_secret(secret: object, *, project_id: str | None = None) -> str:
    """``secret`` if it has the documented form of a project secret: ``hk_live_`` followed by
    exactly 32 hex digits (what ``chucky project create`` makes: 128 random bits).

    Args:
        secret: The candidate.
        project_id: The project it is for, named in the error.

    Returns:
        ``secret``.

    Raises:
        ValidationError: anything else (``reason`` ``invalid_options``); the one-line message
            says what is wrong and never quotes the secret.
    """
    if isinstance(secret, str) and _SECRET.fullmatch(secret):
        return secret
    if not isinstance(secret, str):
        why = f"not text but {type(secret).__name__}"
    elif not secret.startswith(SECRET_PREFIX):
        why = f"it does not start with {SECRET_PREFIX}"
    else:
        rest = secret[len(SECRET_PREFIX) :]
        bad = sum(1 for c in rest if c not in "0123456789abcdefABCDEF")
        why = f"{len(rest)} characters after the prefix" + (
            f", {bad} of them not hex digits" if bad else ""
        )
    whose = f" of project {project_id[:100]!r}" if project_id is not None else ""
    raise ValidationError(
        f"invalid secret{whose}: expected {SECRET_PREFIX} followed by exactly 32 hex digits "
        f"({why})",
        details={"reason": "invalid_options"},
    )


@contextmanager
def _short_keys_allowed() -> Iterator[None]:
    with warnings.catch_warnings():
        if _KEY_LENGTH_WARNING is not None:
            warnings.simplefilter("ignore", _KEY_LENGTH_WARNING)
        yield


def _now_seconds(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return to_utc(now).timestamp()
    return float(now)


def _pydantic_reason(exc: PydanticValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'claims'}: {err['msg']}" for err in exc.errors()
    )


class _WireModel(BaseModel):
    """Claims object: tolerant of unknown fields, dumps to the camelCase wire form."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_shadowed_spellings(cls, data: Any) -> Any:
        # With extra="allow", a losing spelling ("tools" next to "allowedTools") would be kept as
        # an extra and re-emitted by model_dump; keep only the spelling that wins.
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            names = [c for c in (*choices, info.alias, name) if isinstance(c, str)]
            present = [n for n in dict.fromkeys(names) if n in data]
            for loser in present[1:]:
                del data[loser]
        return data

    def to_claims(self) -> dict[str, Any]:
        """The wire form: camelCase keys, ``None`` fields left out, unknown fields kept.

        Returns:
            A JSON-ready dict (the same as ``model_dump(by_alias=True, exclude_none=True)``).
        """
        return self.model_dump(by_alias=True, exclude_none=True)


class TokenBudget(_WireModel):
    """The ``budget`` claim.

    Attributes:
        ai: AI budget in microdollars (1 USD = 1,000,000).
        compute: Compute budget in seconds of running turns.
        window: How often the budget resets.
        window_start: Anchor of the windows (ISO 8601, wire name ``windowStart``); ``None`` means
            the token's ``iat``.
    """

    ai: int = Field(ge=0)
    compute: int = Field(ge=0)
    window: Window
    window_start: str | None = Field(default=None, alias="windowStart")

    @field_validator("window_start")
    @classmethod
    def _check_window_start(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window_start(value)  # kept as sent; only checked
        return value


class TokenPermissions(_WireModel):
    """The optional ``permissions`` claim; every spelling the clients use is accepted.

    Attributes:
        allowed_tools: From ``allowedTools`` or ``tools``.
        blocked_tools: From ``blockedTools``.
        max_turns: From ``maxTurns`` or ``maxTurnsPerSession``.
        allowed_models: From ``allowedModels`` or ``model`` (a single string becomes a list).
    """

    allowed_tools: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("allowedTools", "tools", "allowed_tools"),
        serialization_alias="allowedTools",
    )
    blocked_tools: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("blockedTools", "blocked_tools"),
        serialization_alias="blockedTools",
    )
    max_turns: int | None = Field(
        default=None,
        ge=0,
        validation_alias=AliasChoices("maxTurns", "maxTurnsPerSession", "max_turns"),
        serialization_alias="maxTurns",
    )
    allowed_models: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("allowedModels", "model", "allowed_models"),
        serialization_alias="allowedModels",
    )

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _one_model_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TokenClaims(_WireModel):
    """The claims of a chucky token (docs/protocol.md section 7).

    Attributes:
        sub: End-user id: the budget and session owner.
        iss: Project id: selects the secret(s) and the project config.
        iat: Issued at (Unix seconds), if present.
        exp: Expiry (Unix seconds).
        budget: The user's budget.
        permissions: Optional tool/model/turn restrictions.
        sdk_config: Optional client option overrides (wire name ``sdkConfig``).
    """

    sub: str = Field(min_length=1)
    iss: str = Field(min_length=1)
    iat: int | None = None
    exp: int
    budget: TokenBudget
    permissions: TokenPermissions | None = None
    sdk_config: dict[str, Any] | None = Field(default=None, alias="sdkConfig")


class DecodedToken(Mapping[str, Any]):
    """An unverified token split into its parts.

    Also the official client's dict: ``decoded["payload"]["sub"]``, ``decoded.get("header")``
    and ``dict(decoded)`` work over the keys ``header``, ``payload`` and ``signature``.

    Attributes:
        header: The JOSE header.
        payload: The claims, as sent.
        signature: The signature segment (base64url text), as sent.
    """

    __slots__ = ("header", "payload", "signature")
    _KEYS: Final = ("header", "payload", "signature")

    def __init__(self, header: dict[str, Any], payload: dict[str, Any], signature: str) -> None:
        self.header = header
        self.payload = payload
        self.signature = signature

    @property
    def claims(self) -> TokenClaims:
        """The payload as typed claims (not verified).

        Returns:
            The validated :class:`TokenClaims`.

        Raises:
            ValidationError: A required claim is missing or has the wrong type.
        """
        try:
            return TokenClaims.model_validate(self.payload)
        except PydanticValidationError as exc:
            raise ValidationError(f"Invalid token claims: {_pydantic_reason(exc)}") from exc

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def __repr__(self) -> str:
        return f"DecodedToken(header={self.header!r}, payload={self.payload!r})"


def create_budget(
    ai_dollars: float,
    compute_hours: float,
    window: str = "day",
    window_start: datetime | str | None = None,
    *,
    now: datetime | float | None = None,
) -> TokenBudget:
    """Build a budget from dollars and hours.

    Args:
        ai_dollars: AI budget in US dollars (rounded to the nearest microdollar).
        compute_hours: Compute budget in hours (rounded to the nearest second).
        window: ``hour``, ``day``, ``week``, ``month`` or ``lifetime``.
        window_start: Anchor of the windows; a naive datetime is UTC. Default: ``now``.
        now: The current time, for the default ``window_start`` (default: the real clock).

    Returns:
        The budget, with ``window_start`` as ISO 8601 UTC ending in ``Z``.

    Raises:
        ValidationError: A negative or non-finite amount, an unknown window or a bad start.
    """
    for label, amount in (("ai_dollars", ai_dollars), ("compute_hours", compute_hours)):
        is_number = isinstance(amount, int | float) and not isinstance(amount, bool)
        if not is_number or not math.isfinite(amount) or amount < 0:
            raise ValidationError(f"Invalid budget: {label} must be >= 0, got {amount!r}")
    if window not in WINDOWS:
        raise ValidationError(f"Invalid budget window {window!r}: expected one of {WINDOWS}")
    if window_start is None:
        start = as_datetime(now)
    elif isinstance(window_start, datetime):
        start = to_utc(window_start)
    else:
        start = parse_window_start(window_start)
    return TokenBudget(
        ai=round(ai_dollars * 1_000_000),
        compute=round(compute_hours * 3600),
        window=cast(Window, window),  # checked against WINDOWS above
        window_start=format_utc(start),
    )


def _coerce_budget(budget: object) -> TokenBudget:
    if isinstance(budget, TokenBudget):
        return budget
    if isinstance(budget, Mapping):
        data = dict(budget)
    else:  # the official client's TokenBudget dataclass, or any look-alike
        names = ("ai", "compute", "window", "window_start")
        data = {name: getattr(budget, name) for name in names if hasattr(budget, name)}
    try:
        return TokenBudget.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError(f"Invalid budget: {_pydantic_reason(exc)}") from exc


def create_token(
    user_id: str,
    project_id: str,
    secret: str,
    budget: TokenBudget | Mapping[str, Any] | object,
    *,
    expires_in: int = DEFAULT_EXPIRES_IN,
    permissions: TokenPermissions | Mapping[str, Any] | None = None,
    sdk_config: Mapping[str, Any] | None = None,
    now: datetime | float | None = None,
) -> str:
    """Mint a signed HS256 token.

    Args:
        user_id: The end user (``sub``).
        project_id: The project (``iss``).
        secret: The project's HMAC secret; its UTF-8 bytes are the key.
        budget: A :class:`TokenBudget`, a mapping of its fields, or the official client's
            ``TokenBudget`` dataclass.
        expires_in: Lifetime in seconds.
        permissions: Optional ``permissions`` claim.
        sdk_config: Optional ``sdkConfig`` claim (JSON-serialisable).
        now: The issue time (default: the real clock).

    Returns:
        The compact JWT.

    Raises:
        ValidationError: An empty id or secret, a non-positive lifetime, or a bad budget,
            permissions or sdk_config.
    """
    for label, value in (("user_id", user_id), ("project_id", project_id), ("secret", secret)):
        if not isinstance(value, str) or not value:
            raise ValidationError(f"Invalid token request: {label} must be a non-empty string")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise ValidationError(f"Invalid token request: expires_in must be > 0, got {expires_in!r}")
    iat = math.floor(_now_seconds(now))
    claims: dict[str, Any] = {
        "sub": user_id,
        "iss": project_id,
        "iat": iat,
        "exp": iat + expires_in,
        "budget": _coerce_budget(budget).to_claims(),
    }
    try:
        if permissions is not None:
            perms = permissions
            if not isinstance(perms, TokenPermissions):
                perms = TokenPermissions.model_validate(dict(perms))
            claims["permissions"] = perms.to_claims()
        if sdk_config is not None:
            claims["sdkConfig"] = dict(sdk_config)
        with _short_keys_allowed():
            return jwt.encode(claims, secret.encode("utf-8"), algorithm=_ALGORITHM)
    except PydanticValidationError as exc:
        raise ValidationError(f"Invalid permissions: {_pydantic_reason(exc)}") from exc
    except (TypeError, ValueError, jwt.PyJWTError) as exc:
        raise ValidationError(f"Invalid token claims: {exc}") from exc


def _b64_json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:  # JSONDecodeError/UnicodeDecodeError too
        raise ValidationError(f"Invalid token: the {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise ValidationError(f"Invalid token: the {what} is not a JSON object")
    return value


def decode_token(token: str) -> DecodedToken:
    """Split a token and decode its header and payload, WITHOUT verifying anything.

    Args:
        token: The compact JWT (surrounding whitespace is ignored).

    Returns:
        The decoded parts, usable as the official client's dict.

    Raises:
        ValidationError: Not three base64url segments, or a header/payload that is not a JSON
            object.
    """
    if not isinstance(token, str):
        raise ValidationError(f"Invalid token: expected a string, got {type(token).__name__}")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValidationError(f"Invalid token format: expected 3 segments, got {len(parts)}")
    if not all(_SEGMENT.fullmatch(part) for part in parts):
        raise ValidationError("Invalid token format: segments must be base64url")
    header = _b64_json_object(parts[0], "header")
    payload = _b64_json_object(parts[1], "payload")
    return DecodedToken(header, payload, parts[2])


def _invalid(why: str) -> AuthenticationError:
    return AuthenticationError(f"Invalid token: {why}", details={"reason": "invalid_token"})


def verify_claims(
    token: str,
    secret: str | Iterable[str],
    *,
    verify_exp: bool = True,
    leeway: float = CLOCK_SKEW_SECONDS,
    now: datetime | float | None = None,
) -> TokenClaims:
    """Verify a token's HS256 signature and claims.

    Args:
        token: The compact JWT.
        secret: The project's secret, or several (key rotation): any one may have signed it.
        verify_exp: Reject the token once ``now >= exp + leeway``.
        leeway: Allowed clock skew in seconds.
        now: The current time (default: the real clock).

    Returns:
        The verified claims.

    Raises:
        AuthenticationError: ``details["reason"]`` is ``token_expired`` for an expired token and
            ``invalid_token`` for anything else (malformed, not HS256, bad signature, missing or
            ill-typed ``sub``/``iss``/``exp``/``budget``, an ``nbf`` still ahead of ``now`` by
            more than ``leeway``).
    """
    try:
        decoded = decode_token(token)
    except ValidationError as exc:
        raise _invalid(f"malformed ({exc.message})") from exc
    alg = decoded.header.get("alg")
    if alg != _ALGORITHM:
        raise _invalid(f"algorithm {alg!r:.40} is not allowed (only {_ALGORITHM})")
    keys = [secret] if isinstance(secret, str) else list(secret)
    failure: Exception | None = None
    for key in keys:
        if not key:  # an unset secret must never verify anything
            continue
        try:
            with _short_keys_allowed():
                _JWS.decode_complete(token.strip(), key.encode("utf-8"), algorithms=[_ALGORITHM])
        except jwt.InvalidSignatureError as exc:
            failure = exc
            continue
        except jwt.PyJWTError as exc:
            raise _invalid(str(exc)) from exc
        break
    else:
        raise _invalid("signature verification failed") from failure
    try:
        claims = TokenClaims.model_validate(decoded.payload)
    except PydanticValidationError as exc:
        raise _invalid(f"missing or invalid claims ({_pydantic_reason(exc)})") from exc
    if verify_exp and _now_seconds(now) - leeway >= claims.exp:
        raise AuthenticationError("Token expired", details={"reason": "token_expired"})
    not_before = decoded.payload.get("nbf")
    if not_before is not None:
        if (
            isinstance(not_before, bool)
            or not isinstance(not_before, int | float)
            or not math.isfinite(not_before)
        ):
            raise _invalid("missing or invalid claims (nbf: must be a number)")
        if _now_seconds(now) + leeway < not_before:
            raise _invalid("not valid yet (nbf is in the future)")
    return claims


def verify_token(
    token: str,
    secret: str | Iterable[str],
    *,
    verify_exp: bool = True,
    leeway: float = CLOCK_SKEW_SECONDS,
    now: datetime | float | None = None,
) -> bool:
    """Whether :func:`verify_claims` accepts the token (the official client's boolean API).

    Unlike the official client, an expired token is rejected unless ``verify_exp=False``.

    Args:
        token: The compact JWT.
        secret: The secret, or several (key rotation).
        verify_exp: Also require the token not to be expired.
        leeway: Allowed clock skew in seconds.
        now: The current time (default: the real clock).

    Returns:
        ``True`` if the token is valid.
    """
    try:
        verify_claims(token, secret, verify_exp=verify_exp, leeway=leeway, now=now)
    except AuthenticationError:
        return False
    return True


def is_token_expired(
    token: str, *, now: datetime | float | None = None, leeway: float = 0.0
) -> bool:
    """Whether ``now >= exp + leeway`` (signature not checked).

    Args:
        token: The compact JWT.
        now: The current time (default: the real clock).
        leeway: Seconds of grace after ``exp``.

    Returns:
        ``True`` if expired, or if the token is malformed or has no numeric ``exp``.
    """
    try:
        exp = decode_token(token).payload.get("exp")
    except ValidationError:
        return True
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return True
    if isinstance(exp, float) and not math.isfinite(exp):
        return True
    return _now_seconds(now) - leeway >= exp
