"""Who is calling: user and room tokens (JWT) and REST service keys.

The key used to check a token is chosen by the algorithm the configuration allows,
never by what the token claims alone: an HS token is checked only against the
secret, an RS/ES token only against the public key or JWKS, and ``none`` or any
algorithm not configured is refused before any key is touched.
"""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from protocol import CommandError, ErrorCode

from .config import AuthSettings

USER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_NUMERIC_DATE = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest ``exp``, ``iat`` or ``nbf`` a token may carry."""
TIME_CLAIMS = ("exp", "iat", "nbf")


class AuthError(CommandError):
    """A token or key was refused; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    expires_at: float
    """Unix time (seconds) after which the connection must refresh or close with 4010."""


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._algorithms = list(settings.algorithms)
        self._public_key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if settings.public_key_file:
            self._public_key = Path(settings.public_key_file).read_text()
        if settings.jwks_file:
            self._jwks = jwt.PyJWKSet.from_json(Path(settings.jwks_file).read_text())
        self._service_keys = [key.encode() for key in settings.service_keys]

    # Tokens ------------------------------------------------------------------------

    def verify_user(self, token: str) -> Identity:
        claims = self._decode(token)
        user = claims["sub"]
        if "room" in claims:
            raise AuthError("a room token cannot authenticate a connection")
        return Identity(user=user, expires_at=float(claims["exp"]))

    def verify_room(self, token: str, user: str, room: str) -> None:
        """Check a room token: signed like user tokens, ``sub`` = user, ``room`` = room."""
        claims = self._decode(token)
        if claims["sub"] != user:
            raise AuthError("room token was issued to another user")
        granted = claims.get("room")
        if not isinstance(granted, str):
            raise AuthError("room token's 'room' must be a room name (a string)")
        if granted != room:
            raise AuthError(f"room token is not for room {room}")

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthError(f"malformed token: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthError(f"token algorithm {algorithm!r} is not allowed")
        key = self._key_for(algorithm, header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._settings.audience or None,
                issuer=self._settings.issuer or None,
                leeway=self._settings.leeway,
                # ``aud`` is checked only when an audience is configured; PyJWT
                # would otherwise refuse every token that carries one.
                options={"require": ["exp", "sub"], "verify_aud": bool(self._settings.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token has expired") from None
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not USER_ID.fullmatch(subject):
            raise AuthError("token 'sub' must be a user id matching [A-Za-z0-9_.:-]{1,128}")
        # PyJWT reads these with int(), which takes "1700000000", true and 2**64; the
        # connect reply carries exp, so it must be a number that any encoding can carry.
        for name in TIME_CLAIMS:
            if name in claims and not _is_numeric_date(claims[name]):
                raise AuthError(
                    f"token '{name}' must be a number of seconds since 1970 up to the year"
                    f" 9999, got {claims[name]!r:.40}"
                )
        return claims

    def _key_for(self, algorithm: str, header: dict[str, Any]) -> Any:
        if algorithm.startswith("HS"):
            return self._settings.secret
        if self._jwks is not None:
            kid = header.get("kid")
            candidates = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            for candidate in candidates:
                if candidate.algorithm_name in (algorithm, None):
                    return candidate.key
            raise AuthError(f"no key in the JWKS for kid {kid!r} and algorithm {algorithm}")
        return self._public_key

    def mint(self, user: str, *, room: str | None = None, ttl: int | None = None) -> str:
        """Sign a token with the configured secret (for trying things out and tests)."""
        algorithm = next((a for a in self._algorithms if a.startswith("HS")), None)
        if algorithm is None or not self._settings.secret:
            raise AuthError("minting needs an HS algorithm and auth.secret")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + (ttl or self.token_ttl)}
        if room is not None:
            claims["room"] = room
        if self._settings.issuer:
            claims["iss"] = self._settings.issuer
        if self._settings.audience:
            claims["aud"] = self._settings.audience
        return jwt.encode(claims, self._settings.secret, algorithm=algorithm)

    @property
    def token_ttl(self) -> int:
        return self._settings.token_ttl

    # Service keys ------------------------------------------------------------------

    def is_service_key(self, authorization: str | None) -> bool:
        """True when an ``Authorization: Bearer <key>`` header carries a configured key."""
        if not authorization or not self._service_keys:
            return False
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return False
        candidate = key.strip().encode()
        # Compare with every key, without stopping early, so timing says nothing.
        matches = [hmac.compare_digest(candidate, known) for known in self._service_keys]
        return any(matches)


def _is_numeric_date(value: object) -> bool:
    """Seconds since 1970 as a number (not a string, not a bool), up to the year 9999."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= MAX_NUMERIC_DATE  # false for NaN too
