"""A Web Push service on loopback that checks every request as a real one must.

Each push is checked: the VAPID token (RFC 8292: ``Authorization: vapid t=<JWT>,k=<key>``,
ES256 under the server's public key, ``aud`` the endpoint's origin, ``exp`` within 24
hours, a ``sub``), ``TTL`` and ``Content-Encoding: aes128gcm``, and the body is
decrypted (RFC 8291) with the browser keys the service made for the subscription.
A push that fails a check is answered 400/401/403 and recorded in ``errors``.

Tests tell an endpoint how to answer (``answer``) or to hold its answer until the
service closes (``stall``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

MAX_BODY = 4096
MAX_TOKEN_LIFETIME = 24 * 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Browser:
    """One subscription, as a browser holds it: the keys to decrypt with."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    @property
    def auth_text(self) -> str:
        return b64url(self.auth)

    def subscription(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives a page."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": self.auth_text},
        }


@dataclass
class Received:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    claims: dict[str, Any]


@dataclass
class PushService:
    vapid_public_key: str
    """The server's public key, base64url: tokens must be signed with its private half."""
    received: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    stalled: set[str] = field(default_factory=set)
    requests: int = 0

    def __post_init__(self) -> None:
        self._browsers: dict[str, Browser] = {}
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push/{token}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def browser(self) -> Browser:
        """A new subscription on this service, with fresh browser keys."""
        token = secrets.token_urlsafe(16)
        browser = Browser(
            token,
            f"{self.origin}/push/{token}",
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
        )
        self._browsers[token] = browser
        return browser

    def answer(self, browser: Browser, status: int) -> None:
        self.answers[browser.token] = status

    def stall(self, browser: Browser) -> None:
        self.stalled.add(browser.token)

    def payloads(self, browser: Browser) -> list[dict[str, Any]]:
        return [r.payload for r in self.received if r.token == browser.token]

    async def _push(self, request: web.Request) -> web.Response:
        self.requests += 1
        token = request.match_info["token"]
        browser = self._browsers.get(token)
        if browser is None:
            return web.Response(status=404, text="no such subscription")
        body = await request.read()
        try:
            claims = self._check_vapid(request.headers.get("Authorization", ""))
            self._check_headers(request, body)
            plain = http_ece.decrypt(
                body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
            )
            payload = orjson.loads(plain)
        except _Refused as error:
            self.errors.append(f"{token}: {error}")
            return web.Response(status=error.status, text=str(error))
        except Exception as error:  # any failure to decrypt is what the test finds
            self.errors.append(f"{token}: cannot decrypt: {type(error).__name__}: {error}")
            return web.Response(status=400, text="cannot decrypt")
        if token in self.stalled:
            await self._release.wait()
        status = self.answers.get(token, 201)
        if 200 <= status < 300:
            self.received.append(Received(token, dict(request.headers), payload, claims))
        return web.Response(status=status, text="" if status < 300 else f"answer {status}")

    def _check_vapid(self, authorization: str) -> dict[str, Any]:
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise _Refused(401, f"Authorization is not vapid: {authorization!r:.60}")
        params = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        if params.get("k") != self.vapid_public_key:
            raise _Refused(403, "k is not the server's VAPID public key")
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b64url_decode(params["k"])
        )
        try:
            claims: dict[str, Any] = jwt.decode(
                params.get("t", ""),
                key,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as error:
            raise _Refused(403, f"VAPID token: {error}") from None
        if claims["exp"] > time.time() + MAX_TOKEN_LIFETIME:
            raise _Refused(403, "VAPID exp more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            raise _Refused(403, f"VAPID sub {claims['sub']!r}")
        return claims

    @staticmethod
    def _check_headers(request: web.Request, body: bytes) -> None:
        if request.headers.get("Content-Encoding") != "aes128gcm":
            raise _Refused(400, "Content-Encoding must be aes128gcm")
        if not request.headers.get("TTL", "").isdigit():
            raise _Refused(400, "TTL must be a number of seconds")
        if len(body) > MAX_BODY:
            raise _Refused(413, f"{len(body)} bytes: over {MAX_BODY}")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
