"""Unit tests of chucky.tokens (docs/protocol.md section 7)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import jwt
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.errors import AuthenticationError, ValidationError
from chucky.tokens import (
    CLOCK_SKEW_SECONDS,
    WINDOWS,
    DecodedToken,
    TokenBudget,
    TokenClaims,
    TokenPermissions,
    create_budget,
    create_token,
    decode_token,
    is_token_expired,
    parse_window_start,
    verify_claims,
    verify_token,
    window_bounds,
    window_key,
)

SECRET = "hk_live_938642b649c64cc3975e504c0fbcbbd8"
OTHER_SECRET = "hk_live_00000000000000000000000000000000"
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
BUDGET = TokenBudget(ai=1_000_000, compute=3600, window="day", window_start="2023-11-14T00:00:00Z")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def sign(header: dict[str, Any], payload: dict[str, Any], secret: str = SECRET) -> str:
    """A token signed by hand (HMAC-SHA256 over the segments), whatever the header says."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def claims(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "sub": "user-1",
        "iss": "project-1",
        "iat": NOW,
        "exp": NOW + 3600,
        "budget": {"ai": 1, "compute": 2, "window": "day", "windowStart": "2023-11-14T00:00:00Z"},
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def reason(excinfo: pytest.ExceptionInfo[AuthenticationError]) -> str | None:
    return excinfo.value.details.get("reason")


# --- create_budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dollars", "micro"),
    [
        (0.29, 290_000),
        (1.0, 1_000_000),
        (0.1 + 0.2, 300_000),
        (0.000_000_4, 0),
        (19.99, 19_990_000),
    ],
)
def test_create_budget_rounds_to_microdollars(dollars: float, micro: int) -> None:
    assert create_budget(dollars, 1, now=NOW).ai == micro


@pytest.mark.parametrize(
    ("hours", "seconds"),
    [(1, 3600), (1.5, 5400), (1.13, 4068), (0.001, 4), (0, 0)],  # 1.13 * 3600 == 4067.999...
)
def test_create_budget_rounds_compute_seconds(hours: float, seconds: int) -> None:
    assert create_budget(1, hours, now=NOW).compute == seconds


def test_create_budget_defaults_to_day_starting_now() -> None:
    budget = create_budget(1, 1, now=NOW)
    assert budget.window == "day"
    assert budget.window_start == "2023-11-14T22:13:20Z"
    assert create_budget(1, 1, now=utc(2024, 5, 1, 12)).window_start == "2024-05-01T12:00:00Z"


def test_create_budget_default_uses_the_real_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    start = parse_window_start(create_budget(1, 1).window_start or "")
    assert before <= start <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),  # naive = UTC
        (utc(2024, 1, 2, 3, 4, 5, 123456), "2024-01-02T03:04:05.123456Z"),
        (datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=2))), "2024-01-02T01:00:00Z"),
        ("2024-01-02T03:04:05+00:00Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02", "2024-01-02T00:00:00Z"),
    ],
)
def test_create_budget_formats_window_start_as_utc_z(start: datetime | str, expected: str) -> None:
    budget = create_budget(1, 1, "week", start)
    assert budget.window_start == expected
    assert "+00:00" not in expected


@pytest.mark.parametrize("window", WINDOWS)
def test_create_budget_accepts_every_window(window: str) -> None:
    assert create_budget(1, 1, window, now=NOW).window == window


@pytest.mark.parametrize(
    "args",
    [
        (-0.01, 1, "day"),
        (1, -1, "day"),
        (float("nan"), 1, "day"),
        (1, float("inf"), "day"),
        (1, 1, "year"),
        (1, 1, "Day"),
        ("1", 1, "day"),
    ],
)
def test_create_budget_rejects_bad_input(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ValidationError):
        create_budget(*args, now=NOW)


def test_create_budget_rejects_a_bad_window_start() -> None:
    with pytest.raises(ValidationError):
        create_budget(1, 1, "day", "next tuesday")


# --- claim models -------------------------------------------------------------------------------


def test_budget_accepts_both_spellings_and_dumps_camel_case() -> None:
    by_alias = TokenBudget.model_validate(
        {"ai": 1, "compute": 2, "window": "hour", "windowStart": "2024-01-01T00:00:00Z"}
    )
    by_name = TokenBudget(ai=1, compute=2, window="hour", window_start="2024-01-01T00:00:00Z")
    assert by_alias == by_name
    assert by_name.to_claims() == {
        "ai": 1,
        "compute": 2,
        "window": "hour",
        "windowStart": "2024-01-01T00:00:00Z",
    }
    assert TokenBudget(ai=1, compute=2, window="day").to_claims() == {
        "ai": 1,
        "compute": 2,
        "window": "day",
    }


def test_budget_keeps_unknown_fields_and_the_sent_window_start() -> None:
    budget = TokenBudget.model_validate(
        {
            "ai": 1,
            "compute": 2,
            "window": "day",
            "windowStart": "2024-01-01T00:00:00+00:00Z",
            "x": 1,
        }
    )
    assert budget.to_claims()["x"] == 1
    assert budget.window_start == "2024-01-01T00:00:00+00:00Z"


@pytest.mark.parametrize(
    "data",
    [
        {"ai": -1, "compute": 2, "window": "day"},
        {"ai": 1, "compute": 2, "window": "year"},
        {"ai": 1, "compute": 2, "window": "day", "windowStart": "soon"},
        {"ai": 1.5, "compute": 2, "window": "day"},
        {"compute": 2, "window": "day"},
    ],
)
def test_budget_rejects_bad_claims(data: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        TokenBudget.model_validate(data)


@pytest.mark.parametrize(
    ("data", "field", "value"),
    [
        ({"tools": ["Read"]}, "allowed_tools", ["Read"]),
        ({"allowedTools": ["Read"]}, "allowed_tools", ["Read"]),
        ({"allowed_tools": ["Read"]}, "allowed_tools", ["Read"]),
        ({"blockedTools": ["Bash"]}, "blocked_tools", ["Bash"]),
        ({"blocked_tools": ["Bash"]}, "blocked_tools", ["Bash"]),
        ({"maxTurns": 5}, "max_turns", 5),
        ({"maxTurnsPerSession": 5}, "max_turns", 5),
        ({"max_turns": 5}, "max_turns", 5),
        ({"model": "claude-x"}, "allowed_models", ["claude-x"]),
        ({"model": ["a", "b"]}, "allowed_models", ["a", "b"]),
        ({"allowedModels": ["a", "b"]}, "allowed_models", ["a", "b"]),
        ({"allowedModels": "a"}, "allowed_models", ["a"]),
        ({"allowed_models": ["a"]}, "allowed_models", ["a"]),
    ],
)
def test_permissions_accept_every_spelling(data: dict[str, Any], field: str, value: Any) -> None:
    perms = TokenPermissions.model_validate(data)
    assert getattr(perms, field) == value
    assert TokenPermissions.model_validate(perms.to_claims()) == perms


def test_permissions_dump_camel_case_without_duplicate_spellings() -> None:
    perms = TokenPermissions.model_validate(
        {"tools": ["x"], "allowedTools": ["a"], "maxTurnsPerSession": 3, "model": "m", "extra": 1}
    )
    assert perms.allowed_tools == ["a"]
    assert perms.to_claims() == {
        "allowedTools": ["a"],
        "maxTurns": 3,
        "allowedModels": ["m"],
        "extra": 1,
    }
    assert perms.model_dump(by_alias=True, exclude_none=True) == perms.to_claims()


def test_claims_model_round_trips_the_wire_form() -> None:
    wire = claims(permissions={"blockedTools": ["Bash"]}, sdkConfig={"model": "m"}, jti="j")
    parsed = TokenClaims.model_validate(wire)
    assert parsed.sdk_config == {"model": "m"}
    assert parsed.permissions == TokenPermissions(blocked_tools=["Bash"])
    assert parsed.budget.window_start == "2023-11-14T00:00:00Z"
    assert parsed.to_claims() == wire


# --- create_token / decode_token ----------------------------------------------------------------


def test_create_token_round_trip() -> None:
    token = create_token("user-1", "project-1", SECRET, BUDGET, now=NOW)
    decoded = decode_token(token)
    assert decoded.header == {"alg": "HS256", "typ": "JWT"}
    assert decoded.payload == {
        "sub": "user-1",
        "iss": "project-1",
        "iat": NOW,
        "exp": NOW + 3600,
        "budget": BUDGET.to_claims(),
    }
    verified = verify_claims(token, SECRET, now=NOW)
    assert verified == decoded.claims
    assert verified.budget == BUDGET
    assert verified.permissions is None
    assert verified.sdk_config is None


def test_create_token_signature_is_hmac_sha256_of_the_secret_bytes() -> None:
    token = create_token("u", "p", "sécret", BUDGET, now=NOW)
    head, body, sig = token.split(".")
    mac = hmac.new("sécret".encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert sig == b64(mac)


def test_create_token_options() -> None:
    token = create_token(
        "u",
        "p",
        SECRET,
        BUDGET,
        expires_in=60,
        permissions={"tools": ["Read"], "maxTurnsPerSession": 2},
        sdk_config={"model": "m", "maxTurns": 3},
        now=utc(2024, 1, 1, 0, 0, 0, 900000),
    )
    payload = decode_token(token).payload
    iat = int(utc(2024, 1, 1).timestamp())
    assert (payload["iat"], payload["exp"]) == (iat, iat + 60)
    assert payload["permissions"] == {"allowedTools": ["Read"], "maxTurns": 2}
    assert payload["sdkConfig"] == {"model": "m", "maxTurns": 3}
    perms = TokenPermissions(allowed_models=["m"])
    token = create_token("u", "p", SECRET, BUDGET, permissions=perms, now=NOW)
    assert decode_token(token).payload["permissions"] == {"allowedModels": ["m"]}


def test_create_token_uses_the_real_clock_by_default() -> None:
    token = create_token("u", "p", SECRET, BUDGET)
    assert verify_token(token, SECRET)
    assert not is_token_expired(token)


@dataclass
class OfficialStyleBudget:
    """Looks like the official client's ``TokenBudget`` dataclass."""

    ai: int
    compute: int
    window: str
    window_start: str


@pytest.mark.parametrize(
    "budget",
    [
        {"ai": 5, "compute": 6, "window": "week", "windowStart": "2024-01-01T00:00:00Z"},
        {"ai": 5, "compute": 6, "window": "week", "window_start": "2024-01-01T00:00:00Z"},
        OfficialStyleBudget(5, 6, "week", "2024-01-01T00:00:00Z"),
    ],
)
def test_create_token_accepts_mapping_and_dataclass_budgets(budget: object) -> None:
    token = create_token("u", "p", SECRET, budget, now=NOW)
    assert decode_token(token).payload["budget"] == {
        "ai": 5,
        "compute": 6,
        "window": "week",
        "windowStart": "2024-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("", "p", SECRET, BUDGET), {}),
        (("u", "", SECRET, BUDGET), {}),
        (("u", "p", "", BUDGET), {}),
        (("u", "p", SECRET, BUDGET), {"expires_in": 0}),
        (("u", "p", SECRET, BUDGET), {"expires_in": -5}),
        (("u", "p", SECRET, BUDGET), {"expires_in": True}),
        (("u", "p", SECRET, {"ai": 1}), {}),
        (("u", "p", SECRET, object()), {}),
        (("u", "p", SECRET, BUDGET), {"permissions": {"maxTurns": "many"}}),
        (("u", "p", SECRET, BUDGET), {"sdk_config": {"x": object()}}),
    ],
)
def test_create_token_rejects_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        create_token(*args, now=NOW, **kwargs)


def test_short_secrets_work_without_leaking_the_key_length_warning() -> None:
    token = create_token("u", "p", "short", BUDGET, now=NOW)  # filterwarnings=error
    assert verify_claims(token, "short", now=NOW).sub == "u"
    warning = getattr(jwt, "InsecureKeyLengthWarning", None)
    if warning is not None:  # our suppression is local: pyjwt still warns elsewhere
        with pytest.warns(warning):
            jwt.encode({}, b"short", algorithm="HS256")


def test_decoded_token_is_the_official_dict() -> None:
    token = create_token("user-1", "p", SECRET, BUDGET, now=NOW)
    decoded = decode_token(token)
    assert isinstance(decoded, DecodedToken)
    assert decoded["payload"]["sub"] == "user-1"
    assert decoded.get("header") == {"alg": "HS256", "typ": "JWT"}
    assert decoded["signature"] == token.split(".")[2] == decoded.signature
    assert "payload" in decoded
    assert "claims" not in decoded
    assert decoded.get("nope") is None
    assert list(decoded) == ["header", "payload", "signature"]
    assert len(decoded) == 3
    assert (
        decoded
        == dict(decoded)
        == {
            "header": decoded.header,
            "payload": decoded.payload,
            "signature": decoded.signature,
        }
    )
    with pytest.raises(KeyError):
        decoded["claims"]
    assert "user-1" in repr(decoded)
    assert SECRET not in repr(decoded)


def test_decoded_claims_raise_validation_error_when_they_do_not_fit() -> None:
    decoded = decode_token(sign({"alg": "HS256"}, {"sub": "u"}))
    with pytest.raises(ValidationError, match="budget") as excinfo:
        _ = decoded.claims
    assert isinstance(excinfo.value.__cause__, pydantic.ValidationError)


def test_decode_token_ignores_surrounding_whitespace() -> None:
    token = create_token("u", "p", SECRET, BUDGET, now=NOW)
    assert decode_token(f"  {token}\n").payload["sub"] == "u"
    assert verify_claims(f"{token}\n", SECRET, now=NOW).sub == "u"


def test_decode_token_does_not_verify() -> None:
    token = sign({"alg": "none"}, {"anything": True}, secret="whatever")
    assert decode_token(token).payload == {"anything": True}


MALFORMED = [
    "",
    "abc",
    "a.b",
    "a.b.c.d",
    "....",
    "!!!.e30.sig",
    f"{b64json({'alg': 'HS256'})}.e30$.sig",
    f"{b64(b'not json')}.e30.sig",
    f"{b64json({'alg': 'HS256'})}.{b64(b'{not json')}.sig",
    f"{b64json({'alg': 'HS256'})}.{b64json([1, 2])}.sig",
    f"{b64json('HS256')}.e30.sig",
    f"{b64json({'alg': 'HS256'})}.{b64(bytes([0xFF, 0xFE, 0x00, 0x7B]))}.sig",
    f"{b64json({'alg': 'HS256'})}.e30x1.sig",  # 5 chars: impossible base64 length
    f"{b64json({'alg': 'HS256'})}..sig",
    f"{b64json({'alg': 'HS256'})}.e30.s+g",
]


@pytest.mark.parametrize("token", MALFORMED)
def test_decode_token_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(ValidationError, match=r"(?i)token"):
        decode_token(token)


@pytest.mark.parametrize("token", [None, b"a.b.c", 3])
def test_decode_token_rejects_non_strings(token: Any) -> None:
    with pytest.raises(ValidationError):
        decode_token(token)


# --- verify_claims / verify_token / is_token_expired --------------------------------------------


def test_verify_with_rotated_secrets() -> None:
    old = create_token("u", "p", OTHER_SECRET, BUDGET, now=NOW)
    new = create_token("u", "p", SECRET, BUDGET, now=NOW)
    for secrets in ([SECRET, OTHER_SECRET], (OTHER_SECRET, SECRET), iter([OTHER_SECRET, SECRET])):
        keys = list(secrets)
        assert verify_claims(old, keys, now=NOW).sub == "u"
        assert verify_claims(new, keys, now=NOW).sub == "u"
    assert verify_token(old, [SECRET, OTHER_SECRET], now=NOW)
    with pytest.raises(AuthenticationError) as excinfo:
        verify_claims(old, [SECRET, "hk_live_x"], now=NOW)
    assert reason(excinfo) == "invalid_token"
    with pytest.raises(AuthenticationError, match="signature"):
        verify_claims(old, [], now=NOW)


def test_an_empty_secret_never_verifies() -> None:
    with pytest.raises(AuthenticationError, match="signature"):
        verify_claims(sign({"alg": "HS256", "typ": "JWT"}, claims(), secret=""), "", now=NOW)


@pytest.mark.parametrize(
    ("exp_offset", "valid"),
    [(3600, True), (1, True), (0, True), (-1, True), (-29, True), (-30, False), (-31, False)],
)
def test_expiry_allows_thirty_seconds_of_skew(exp_offset: int, valid: bool) -> None:
    token = sign({"alg": "HS256"}, claims(exp=NOW + exp_offset))
    assert CLOCK_SKEW_SECONDS == 30
    if valid:
        assert verify_claims(token, SECRET, now=NOW).exp == NOW + exp_offset
    else:
        with pytest.raises(AuthenticationError, match=r"(?i)token expired") as excinfo:
            verify_claims(token, SECRET, now=NOW)
        assert reason(excinfo) == "token_expired"
        assert excinfo.value.code == "AUTHENTICATION_ERROR"
    assert verify_token(token, SECRET, now=NOW) is valid
    assert verify_token(token, SECRET, verify_exp=False, now=NOW)
    assert verify_claims(token, SECRET, verify_exp=False, now=NOW).sub == "user-1"


def test_expiry_accepts_datetime_now_and_custom_leeway() -> None:
    token = create_token("u", "p", SECRET, BUDGET, expires_in=60, now=NOW)
    assert verify_token(token, SECRET, now=datetime.fromtimestamp(NOW + 89, UTC))
    assert not verify_token(token, SECRET, now=datetime.fromtimestamp(NOW + 90, UTC))
    assert not verify_token(token, SECRET, now=datetime.fromtimestamp(NOW + 90))  # naive = UTC
    with pytest.raises(AuthenticationError):
        verify_claims(token, SECRET, leeway=0, now=NOW + 60)
    assert verify_claims(token, SECRET, leeway=0, now=NOW + 59).sub == "u"
    assert verify_claims(token, SECRET, leeway=1000, now=NOW + 1000).sub == "u"


def test_expired_real_clock_token_is_rejected_by_default() -> None:
    token = create_token("u", "p", SECRET, BUDGET, now=NOW)  # expired in 2023
    assert not verify_token(token, SECRET)
    assert verify_token(token, SECRET, verify_exp=False)  # the official behaviour


def tampered_payload() -> str:
    head, _, sig = sign({"alg": "HS256", "typ": "JWT"}, claims()).split(".")
    return f"{head}.{b64json(claims(sub='admin'))}.{sig}"


def tampered_header() -> str:
    _, body, sig = sign({"alg": "HS256", "typ": "JWT"}, claims()).split(".")
    return f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'x'})}.{body}.{sig}"


def alg_none() -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims())}."


def alg_none_signed() -> str:
    return sign({"alg": "none", "typ": "JWT"}, claims())


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "wrong secret": lambda: sign({"alg": "HS256"}, claims(), secret=OTHER_SECRET),
    "tampered payload": tampered_payload,
    "tampered header": tampered_header,
    "alg none": alg_none,
    "alg none with an HS256 signature": alg_none_signed,
    "alg NONE": lambda: sign({"alg": "NONE"}, claims()),
    "alg hs256 lowercase": lambda: sign({"alg": "hs256"}, claims()),
    "alg RS256 with an HMAC signature": lambda: sign({"alg": "RS256"}, claims()),
    "no alg": lambda: sign({"typ": "JWT"}, claims()),
    "HS512": lambda: jwt.encode(claims(), (SECRET * 2).encode(), algorithm="HS512"),
    "HS384": lambda: jwt.encode(claims(), (SECRET * 2).encode(), algorithm="HS384"),
    "truncated signature": lambda: create_token("u", "p", SECRET, BUDGET, now=NOW)[:-2],
    "empty signature": lambda: sign({"alg": "HS256"}, claims()).rsplit(".", 1)[0] + ".",
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_tokens_are_invalid(make: Callable[[], str]) -> None:
    token = make()
    secrets = [SECRET, SECRET * 2]  # HS512/384 tokens are signed with this one: still refused
    with pytest.raises(AuthenticationError, match=r"(?i)token") as excinfo:
        verify_claims(token, secrets, now=NOW)
    assert reason(excinfo) == "invalid_token"
    assert excinfo.value.code == "AUTHENTICATION_ERROR"
    assert not verify_token(token, secrets, now=NOW)
    assert not verify_token(token, secrets, verify_exp=False, now=NOW)


@pytest.mark.parametrize("missing", ["sub", "iss", "exp", "budget"])
def test_missing_required_claims_are_invalid(missing: str) -> None:
    payload = claims()
    del payload[missing]
    token = sign({"alg": "HS256", "typ": "JWT"}, payload)
    with pytest.raises(AuthenticationError, match=missing) as excinfo:
        verify_claims(token, SECRET, now=NOW)
    assert reason(excinfo) == "invalid_token"
    assert isinstance(excinfo.value.__cause__, pydantic.ValidationError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": ""},
        {"sub": 42},
        {"iss": ["p"]},
        {"exp": "tomorrow"},
        {"exp": NOW + 0.5},
        {"budget": {"ai": 1, "compute": 1}},
        {"budget": {"ai": 1, "compute": 1, "window": "year"}},
        {"budget": {"ai": 1, "compute": 1, "window": "day", "windowStart": "garbage"}},
        {"budget": "lots"},
        {"permissions": {"maxTurns": "x"}},
        {"sdkConfig": [1]},
    ],
)
def test_ill_typed_claims_are_invalid(overrides: dict[str, Any]) -> None:
    token = sign({"alg": "HS256"}, claims(**overrides))
    with pytest.raises(AuthenticationError, match="Invalid token") as excinfo:
        verify_claims(token, SECRET, now=NOW)
    assert reason(excinfo) == "invalid_token"


def test_optional_and_unknown_claims_are_accepted() -> None:
    # A future nbf is refused now (issue 11): this one has passed.
    payload = claims(iat=None, aud="someone", nbf=NOW - 10_000, jti="1", permissions={"tools": []})
    token = sign({"alg": "HS256", "typ": "JWT", "kid": "k1"}, payload)
    verified = verify_claims(token, SECRET, now=NOW)
    assert verified.iat is None
    assert verified.permissions == TokenPermissions(allowed_tools=[])
    assert verified.to_claims()["aud"] == "someone"


@pytest.mark.parametrize("token", MALFORMED)
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(AuthenticationError, match=r"(?i)token") as excinfo:
        verify_claims(token, SECRET, now=NOW)
    assert reason(excinfo) == "invalid_token"
    assert isinstance(excinfo.value.__cause__, ValidationError)
    assert not verify_token(token, SECRET)


def test_no_pyjwt_exception_escapes() -> None:
    for make in BAD_TOKENS.values():
        with pytest.raises(AuthenticationError) as excinfo:
            verify_claims(make(), SECRET, now=NOW)
        assert not isinstance(excinfo.value, jwt.PyJWTError)


@pytest.mark.parametrize(
    ("token", "now", "leeway", "expired"),
    [
        (sign({"alg": "HS256"}, claims(exp=NOW + 10)), NOW, 0.0, False),
        (sign({"alg": "HS256"}, claims(exp=NOW + 10)), NOW + 10, 0.0, True),
        (sign({"alg": "HS256"}, claims(exp=NOW + 10)), NOW + 11, 0.0, True),
        (sign({"alg": "HS256"}, claims(exp=NOW + 10)), NOW + 11, 30.0, False),
        (sign({"alg": "HS256"}, claims(exp=NOW + 10.5)), NOW + 10, 0.0, False),
        (sign({"alg": "HS256"}, claims(exp=None)), NOW, 0.0, True),
        (sign({"alg": "HS256"}, claims(exp="later")), NOW, 0.0, True),
        (sign({"alg": "HS256"}, claims(exp=True)), 0, 0.0, True),
        (sign({"alg": "HS256"}, claims(exp=10**400)), NOW, 0.0, False),
        ("not.a.token", NOW, 0.0, True),
        ("", NOW, 0.0, True),
    ],
)
def test_is_token_expired(token: str, now: float, leeway: float, expired: bool) -> None:
    assert is_token_expired(token, now=now, leeway=leeway) is expired


def test_is_token_expired_ignores_the_signature_and_uses_the_real_clock() -> None:
    assert is_token_expired(sign({"alg": "none"}, claims(exp=NOW), secret="x"))
    assert not is_token_expired(create_token("u", "p", SECRET, BUDGET))
    assert is_token_expired(create_token("u", "p", SECRET, BUDGET, expires_in=1, now=NOW))


# --- parse_window_start -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-10T12:30:00Z", utc(2024, 3, 10, 12, 30)),
        ("2024-03-10T12:30:00z", utc(2024, 3, 10, 12, 30)),
        ("2024-03-10T12:30:00+00:00", utc(2024, 3, 10, 12, 30)),
        ("2024-03-10T12:30:00+05:30", utc(2024, 3, 10, 7, 0)),
        ("2024-03-10T12:30:00-08:00", utc(2024, 3, 10, 20, 30)),
        ("2024-03-10T12:30:00+0530", utc(2024, 3, 10, 7, 0)),
        ("2024-03-10T12:30:00.123Z", utc(2024, 3, 10, 12, 30, 0, 123000)),
        ("2024-03-10T12:30:00.123456Z", utc(2024, 3, 10, 12, 30, 0, 123456)),
        ("2024-03-10T12:30:00.123456789Z", utc(2024, 3, 10, 12, 30, 0, 123456)),
        ("2024-03-10", utc(2024, 3, 10)),
        ("2024-03-10T12:30:00", utc(2024, 3, 10, 12, 30)),
        ("2024-03-10 12:30", utc(2024, 3, 10, 12, 30)),
        ("2024-03-10T12:30:00+00:00Z", utc(2024, 3, 10, 12, 30)),  # official with aware input
        ("2024-03-10T12:30:00.5+00:00Z", utc(2024, 3, 10, 12, 30, 0, 500000)),
        ("2024-03-10T12:30:00+02:00Z", utc(2024, 3, 10, 10, 30)),
        ("2024-03-10T12:30:00.654321Z", utc(2024, 3, 10, 12, 30, 0, 654321)),
        ("  2024-03-10T12:30:00Z \n", utc(2024, 3, 10, 12, 30)),
    ],
)
def test_parse_window_start_is_lenient(text: str, expected: datetime) -> None:
    parsed = parse_window_start(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Z",
        "yesterday",
        "2024-13-01",
        "2024-02-30T00:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01T00:00:00ZZ",
        "1700000000",
        None,
        1_700_000_000,
    ],
)
def test_parse_window_start_rejects_garbage(text: Any) -> None:
    with pytest.raises(ValidationError, match="windowStart"):
        parse_window_start(text)


# --- window math --------------------------------------------------------------------------------


def budget(window: str, start: str | None = "2024-01-01T06:00:00Z") -> TokenBudget:
    return TokenBudget.model_validate(
        {"ai": 1, "compute": 1, "window": window, "windowStart": start}
    )


@pytest.mark.parametrize(
    ("window", "now", "start", "end"),
    [
        ("hour", utc(2024, 1, 1, 6), utc(2024, 1, 1, 6), utc(2024, 1, 1, 7)),
        ("hour", utc(2024, 1, 1, 6, 59, 59), utc(2024, 1, 1, 6), utc(2024, 1, 1, 7)),
        ("hour", utc(2024, 1, 3, 7), utc(2024, 1, 3, 7), utc(2024, 1, 3, 8)),
        ("day", utc(2024, 1, 1, 5), utc(2024, 1, 1, 6), utc(2024, 1, 2, 6)),  # before start
        ("day", utc(2024, 1, 2, 5, 59), utc(2024, 1, 1, 6), utc(2024, 1, 2, 6)),
        ("day", utc(2024, 1, 2, 6), utc(2024, 1, 2, 6), utc(2024, 1, 3, 6)),
        ("day", utc(2024, 3, 31, 12), utc(2024, 3, 31, 6), utc(2024, 4, 1, 6)),  # no DST in UTC
        ("week", utc(2024, 1, 8, 5), utc(2024, 1, 1, 6), utc(2024, 1, 8, 6)),
        ("week", utc(2024, 1, 8, 6), utc(2024, 1, 8, 6), utc(2024, 1, 15, 6)),
        ("week", utc(2023, 6, 1), utc(2024, 1, 1, 6), utc(2024, 1, 8, 6)),
        ("month", utc(2024, 1, 31), utc(2024, 1, 1, 6), utc(2024, 2, 1, 6)),
        ("month", utc(2024, 2, 1, 5), utc(2024, 1, 1, 6), utc(2024, 2, 1, 6)),
        ("month", utc(2024, 12, 25), utc(2024, 12, 1, 6), utc(2025, 1, 1, 6)),
        ("month", utc(2025, 1, 1, 6), utc(2025, 1, 1, 6), utc(2025, 2, 1, 6)),
    ],
)
def test_window_bounds(window: str, now: datetime, start: datetime, end: datetime) -> None:
    assert window_bounds(budget(window), now) == (start, end)


@pytest.mark.parametrize(
    ("anchor", "now", "start", "end"),
    [
        ("2024-01-31T10:00:00Z", utc(2024, 2, 15), utc(2024, 1, 31, 10), utc(2024, 2, 29, 10)),
        ("2024-01-31T10:00:00Z", utc(2024, 2, 29, 10), utc(2024, 2, 29, 10), utc(2024, 3, 31, 10)),
        ("2024-01-31T10:00:00Z", utc(2024, 3, 31, 9), utc(2024, 2, 29, 10), utc(2024, 3, 31, 10)),
        ("2024-01-31T10:00:00Z", utc(2024, 4, 30, 10), utc(2024, 4, 30, 10), utc(2024, 5, 31, 10)),
        ("2023-01-31T10:00:00Z", utc(2023, 3, 1), utc(2023, 2, 28, 10), utc(2023, 3, 31, 10)),
        (
            "2024-01-15T10:00:00Z",
            utc(2024, 2, 15, 9, 59),
            utc(2024, 1, 15, 10),
            utc(2024, 2, 15, 10),
        ),
        ("2024-01-15T10:00:00Z", utc(2024, 1, 1), utc(2024, 1, 15, 10), utc(2024, 2, 15, 10)),
        ("2024-02-29", utc(2025, 3, 1), utc(2025, 2, 28), utc(2025, 3, 29)),
        ("2024-01-31T10:00:00+02:00", utc(2024, 2, 1), utc(2024, 1, 31, 8), utc(2024, 2, 29, 8)),
    ],
)
def test_month_windows_clamp_to_short_months(
    anchor: str, now: datetime, start: datetime, end: datetime
) -> None:
    assert window_bounds(budget("month", anchor), now) == (start, end)


def test_lifetime_window_never_ends() -> None:
    lifetime = budget("lifetime")
    assert window_bounds(lifetime, utc(2030, 1, 1)) == (utc(2024, 1, 1, 6), None)
    assert window_bounds(lifetime, utc(2020, 1, 1)) == (utc(2024, 1, 1, 6), None)
    assert window_key(lifetime, utc(2030, 1, 1)) == "lifetime:2024-01-01T06:00:00Z"


def test_missing_window_start_uses_issued_at_then_the_epoch() -> None:
    day = budget("day", None)
    iat = int(utc(2024, 1, 1, 6).timestamp())
    assert window_bounds(day, utc(2024, 1, 5, 7), issued_at=iat) == (
        utc(2024, 1, 5, 6),
        utc(2024, 1, 6, 6),
    )
    assert window_bounds(day, utc(2024, 1, 5, 7)) == (utc(2024, 1, 5), utc(2024, 1, 6))
    # windowStart wins over iat
    assert window_bounds(budget("day"), utc(2024, 1, 5, 7), issued_at=0)[0] == utc(2024, 1, 5, 6)


def test_window_bounds_accepts_every_now() -> None:
    hour = budget("hour")
    expected = (utc(2024, 1, 1, 7), utc(2024, 1, 1, 8))
    assert window_bounds(hour, utc(2024, 1, 1, 7, 30)) == expected
    assert window_bounds(hour, datetime(2024, 1, 1, 7, 30)) == expected  # naive = UTC
    eastern = timezone(timedelta(hours=-5))
    assert window_bounds(hour, datetime(2024, 1, 1, 2, 30, tzinfo=eastern)) == expected
    assert window_bounds(hour, utc(2024, 1, 1, 7, 30).timestamp()) == expected
    start, end = window_bounds(hour)
    assert end is not None
    assert start <= datetime.now(UTC) < end + timedelta(seconds=1)


def test_window_key_is_stable_within_a_window() -> None:
    day = budget("day")
    key = window_key(day, utc(2024, 1, 2, 6))
    assert key == "day:2024-01-02T06:00:00Z"
    assert window_key(day, utc(2024, 1, 3, 5, 59, 59)) == key
    assert window_key(day, utc(2024, 1, 3, 6)) != key
    assert window_key(budget("week"), utc(2024, 1, 2, 6)) == "week:2024-01-01T06:00:00Z"
    assert window_key(budget("day", None), utc(2024, 1, 2, 7), 0) == "day:2024-01-02T00:00:00Z"


def test_window_bounds_rejects_bad_budgets() -> None:
    with pytest.raises(ValidationError):
        window_bounds(TokenBudget.model_construct(ai=1, compute=1, window=cast(Any, "year")), NOW)
    bad_start = TokenBudget.model_construct(ai=1, compute=1, window="day", window_start="x")
    with pytest.raises(ValidationError):
        window_bounds(bad_start, NOW)
    far = budget("day", "9999-12-31T00:00:00Z")
    with pytest.raises(ValidationError):
        window_bounds(far, utc(9999, 12, 31, 12))


# --- properties ---------------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(window=st.sampled_from(["hour", "day", "week"]), anchor=moments, now=moments)
def test_fixed_windows_contain_now_and_have_their_length(
    window: str, anchor: datetime, now: datetime
) -> None:
    start, end = window_bounds(budget(window, anchor.isoformat()), now)
    length = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
    assert end == start + length[window]
    if now >= anchor:
        assert start <= now < end
        assert (start - anchor) % length[window] == timedelta(0)
    else:
        assert start == anchor


@given(anchor=moments, now=moments)
def test_month_windows_contain_now_on_the_anchor_day(anchor: datetime, now: datetime) -> None:
    start, end = window_bounds(budget("month", anchor.isoformat()), now)
    assert end is not None
    assert start < end
    if now >= anchor:
        assert start <= now < end
    else:
        assert start == anchor
    for edge in (start, end):
        assert edge.time() == anchor.time()
        assert edge.day == anchor.day or (edge.day < anchor.day and (edge + timedelta(1)).day == 1)


@given(
    user_id=st.text(min_size=1),
    project_id=st.text(min_size=1),
    secret=st.text(min_size=1),
    ai=st.floats(min_value=0, max_value=1e6),
)
def test_create_verify_round_trip(user_id: str, project_id: str, secret: str, ai: float) -> None:
    token = create_token(user_id, project_id, secret, create_budget(ai, 1, now=NOW), now=NOW)
    verified = verify_claims(token, secret, now=NOW)
    assert (verified.sub, verified.iss, verified.budget.ai) == (
        user_id,
        project_id,
        round(ai * 1e6),
    )
    assert decode_token(token).payload["sub"] == user_id


@given(moment=moments)
def test_window_start_format_round_trips(moment: datetime) -> None:
    text = create_budget(1, 1, "day", moment).window_start
    assert text is not None
    assert text.endswith("Z")
    assert parse_window_start(text) == moment
