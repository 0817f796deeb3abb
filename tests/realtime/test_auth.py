"""Token claims, without a server: types and ranges PyJWT alone lets through."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from realtime.auth import MAX_NUMERIC_DATE, Authenticator, AuthError
from realtime.config import AuthSettings

SECRET = "a-secret-for-unit-tests-" + "z" * 16
AUTH = Authenticator(AuthSettings(secret=SECRET))


def token(**claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("claims", "claim"),
    [
        ({"exp": "1999999999"}, "exp"),
        ({"exp": 2**64}, "exp"),
        ({"exp": MAX_NUMERIC_DATE + 1}, "exp"),
        ({"exp": 1e300}, "exp"),
        ({"iat": True}, "iat"),
        ({"iat": "1"}, "iat"),
        ({"nbf": "1"}, "nbf"),
        ({"nbf": -5}, "nbf"),
        ({"iat": 2**64}, "iat"),  # in the future, so PyJWT refuses it first
    ],
)
def test_time_claims_must_be_numbers_in_range(claims: dict[str, Any], claim: str) -> None:
    with pytest.raises(AuthError) as refused:
        AUTH.verify_user(token(**claims))
    assert f"'{claim}'" in refused.value.message or f"({claim})" in refused.value.message


@pytest.mark.parametrize("exp", [MAX_NUMERIC_DATE, MAX_NUMERIC_DATE - 0.5])
def test_the_last_second_of_the_year_9999_is_a_valid_exp(exp: float) -> None:
    assert AUTH.verify_user(token(exp=exp)).expires_at == exp


@pytest.mark.parametrize("room", [["swap:1"], {"room": "swap:1"}, 1, None])
def test_a_room_claim_that_is_not_a_string_is_refused(room: object) -> None:
    with pytest.raises(AuthError, match="must be a room name"):
        AUTH.verify_room(token(room=room), "alice", "swap:1")


def test_a_room_token_for_the_room_is_accepted() -> None:
    AUTH.verify_room(token(room="swap:1"), "alice", "swap:1")
