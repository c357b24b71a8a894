"""Tokens interoperate both ways with the official client, ``chucky-sdk==0.2.0``.

The official package runs in its own venv (tests/support/official.py); data crosses the process
boundary as JSON on argv and stdout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.official import run_official

from chucky.tokens import (
    TokenBudget,
    create_budget,
    create_token,
    decode_token,
    is_token_expired,
    parse_window_start,
    verify_claims,
    verify_token,
    window_bounds,
)

pytestmark = pytest.mark.conformance

SECRET = "hk_live_938642b649c64cc3975e504c0fbcbbd8"
SHORT_SECRET = "s3cr3t"
WRONG_SECRET = "hk_live_00000000000000000000000000000000"

MINT_SCRIPT = """
import dataclasses, json, sys
from datetime import datetime, timezone
from chucky import create_budget, create_token, decode_token, verify_token, is_token_expired

cases = json.loads(sys.argv[1])
out = []
for case in cases:
    start = case.get("window_start")
    if start is not None:
        start = datetime.fromisoformat(start)
    budget = create_budget(
        ai_dollars=case["ai_dollars"],
        compute_hours=case["compute_hours"],
        window=case["window"],
        window_start=start,
    )
    token = create_token(
        user_id=case["user_id"],
        project_id=case["project_id"],
        secret=case["secret"],
        budget=budget,
        expires_in=case.get("expires_in", 3600),
    )
    out.append({
        "token": token,
        "budget": dataclasses.asdict(budget),
        "decoded": decode_token(token),
        "verified": verify_token(token, case["secret"]),
        "expired": is_token_expired(token),
    })
print(json.dumps(out))
"""

CHECK_SCRIPT = """
import json, sys
from chucky import decode_token, verify_token, is_token_expired

out = []
for case in json.loads(sys.argv[1]):
    token = case["token"]
    out.append({
        "verified": verify_token(token, case["secret"]),
        "verified_with_wrong_secret": verify_token(token, case["wrong_secret"]),
        "decoded": decode_token(token),
        "expired": is_token_expired(token),
    })
print(json.dumps(out))
"""

OFFICIAL_CASES: list[dict[str, Any]] = [
    {
        "user_id": "user-123",
        "project_id": "proj_abc",
        "secret": SECRET,
        "ai_dollars": 1.0,
        "compute_hours": 1,
        "window": "day",
    },
    {  # the official client truncates: 2009999 microdollars, 4067 seconds
        "user_id": "ünïcode user ✓",
        "project_id": "p",
        "secret": SHORT_SECRET,
        "ai_dollars": 2.01,
        "compute_hours": 1.13,
        "window": "month",
        "window_start": "2024-01-31T10:00:00",
    },
    {  # an aware window_start: the official client writes the broken "+00:00Z"
        "user_id": "u",
        "project_id": "p",
        "secret": SECRET,
        "ai_dollars": 12.5,
        "compute_hours": 2,
        "window": "week",
        "window_start": "2024-03-04T05:06:07.123456+00:00",
    },
    {
        "user_id": "u",
        "project_id": "p",
        "secret": SECRET,
        "ai_dollars": 0,
        "compute_hours": 0,
        "window": "hour",
        "expires_in": 60,
    },
]


def run_json(script: str, data: Any) -> Any:
    proc = run_official(script, json.dumps(data))
    assert proc.returncode == 0, f"official script failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def official_minted(official_python: Path) -> list[dict[str, Any]]:
    assert official_python.exists()
    minted = run_json(MINT_SCRIPT, OFFICIAL_CASES)
    assert len(minted) == len(OFFICIAL_CASES)
    return minted  # type: ignore[no-any-return]


def test_official_tokens_verify_with_ours(official_minted: list[dict[str, Any]]) -> None:
    for case, minted in zip(OFFICIAL_CASES, official_minted, strict=True):
        token = minted["token"]
        claims = verify_claims(token, case["secret"])
        assert claims.sub == case["user_id"]
        assert claims.iss == case["project_id"]
        assert claims.iat is not None
        assert claims.exp == claims.iat + case.get("expires_in", 3600)
        assert abs(claims.iat - time.time()) < 600
        assert claims.budget.window == case["window"]
        assert claims.budget.ai == minted["budget"]["ai"]
        assert claims.budget.compute == minted["budget"]["compute"]
        assert claims.budget.window_start == minted["budget"]["window_start"]
        assert verify_token(token, case["secret"])
        assert verify_token(token, [WRONG_SECRET, case["secret"]])
        assert not verify_token(token, WRONG_SECRET)
        assert not is_token_expired(token)
        assert minted["verified"] is True
        assert minted["expired"] is False


def test_official_decode_matches_ours(official_minted: list[dict[str, Any]]) -> None:
    for minted in official_minted:
        ours = decode_token(minted["token"])
        assert ours == minted["decoded"]
        assert dict(ours) == minted["decoded"]
        assert ours["payload"]["sub"] == minted["decoded"]["payload"]["sub"]
        assert ours.claims.budget == TokenBudget.model_validate(
            minted["decoded"]["payload"]["budget"]
        )


def test_official_window_starts_parse_including_the_broken_suffix(
    official_minted: list[dict[str, Any]],
) -> None:
    broken = official_minted[2]["budget"]["window_start"]
    assert broken == "2024-03-04T05:06:07.123456+00:00Z"  # the official client's quirk
    claims = verify_claims(official_minted[2]["token"], SECRET)
    start, end = window_bounds(claims.budget, parse_window_start("2024-03-12T00:00:00Z"))
    assert start == parse_window_start("2024-03-11T05:06:07.123456Z")
    assert end == parse_window_start("2024-03-18T05:06:07.123456Z")
    month = verify_claims(official_minted[1]["token"], SHORT_SECRET).budget
    assert month.window_start == "2024-01-31T10:00:00Z"
    assert window_bounds(month, parse_window_start("2024-02-29T11:00:00Z"))[0] == (
        parse_window_start("2024-02-29T10:00:00Z")
    )
    default = official_minted[0]["budget"]["window_start"]
    assert abs(parse_window_start(default).timestamp() - time.time()) < 600


def test_official_budget_truncates_where_ours_rounds(
    official_minted: list[dict[str, Any]],
) -> None:
    official = official_minted[1]["budget"]
    assert (official["ai"], official["compute"]) == (2_009_999, 4067)
    ours = create_budget(2.01, 1.13)
    assert (ours.ai, ours.compute) == (2_010_000, 4068)
    # the official dataclass, as a mapping, is accepted by our create_token
    token = create_token("u", "p", SECRET, official)
    assert verify_claims(token, SECRET).budget.ai == 2_009_999


def our_tokens() -> list[dict[str, Any]]:
    budget = create_budget(1.29, 2, "week", "2024-01-01T00:00:00+00:00Z")
    return [
        {
            "token": create_token("user-123", "proj", SECRET, budget),
            "secret": SECRET,
        },
        {
            "token": create_token(
                "ünïcode ✓",
                "proj",
                SHORT_SECRET,
                budget,
                expires_in=120,
                permissions={"tools": ["Read"], "maxTurnsPerSession": 3, "model": "m"},
                sdk_config={"systemPrompt": "be nice", "maxTurns": 2},
            ),
            "secret": SHORT_SECRET,
        },
        {
            "token": create_token("u", "p", "sécret-ключ", create_budget(0, 0, "lifetime")),
            "secret": "sécret-ключ",
        },
    ]


def test_our_tokens_verify_and_decode_with_the_official_client(official_python: Path) -> None:
    cases = our_tokens()
    results = run_json(CHECK_SCRIPT, [{**c, "wrong_secret": WRONG_SECRET} for c in cases])
    for case, result in zip(cases, results, strict=True):
        assert result["verified"] is True
        assert result["verified_with_wrong_secret"] is False
        assert result["expired"] is False
        ours = decode_token(case["token"])
        assert result["decoded"] == dict(ours)
    payload = results[1]["decoded"]["payload"]
    assert payload["budget"] == {
        "ai": 1_290_000,
        "compute": 7200,
        "window": "week",
        "windowStart": "2024-01-01T00:00:00Z",
    }
    assert payload["permissions"] == {
        "allowedTools": ["Read"],
        "maxTurns": 3,
        "allowedModels": ["m"],
    }
    assert payload["sdkConfig"] == {"systemPrompt": "be nice", "maxTurns": 2}
    assert payload["exp"] - payload["iat"] == 120


def test_expired_tokens_official_ignores_expiry_ours_does_not(official_python: Path) -> None:
    budget = create_budget(1, 1, now=1_700_000_000)
    token = create_token("u", "p", SECRET, budget, now=1_700_000_000)
    [result] = run_json(CHECK_SCRIPT, [{"token": token, "secret": SECRET, "wrong_secret": "x"}])
    assert result["expired"] is True
    assert result["verified"] is True  # the official verify_token checks only the signature
    assert is_token_expired(token)
    assert not verify_token(token, SECRET)
    assert verify_token(token, SECRET, verify_exp=False)
