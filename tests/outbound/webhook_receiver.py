"""A webhook receiver on loopback that checks each request's signature the way
docs/notifications.md tells an app's backend to (written here on its own, not with
the sender's code), and deduplicates by ``Idempotency-Key``.

Tests script its answers (``statuses``: one per request, then 200) or make it hold
the answer until it closes (``stall``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TOLERANCE = 300


def verify(secret: bytes, headers: Any, body: bytes, now: float) -> str | None:
    """None when the request is genuine, else why not."""
    timestamp = headers.get("X-Realtime-Timestamp", "")
    signature = headers.get("X-Realtime-Signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE:
        return f"stale or missing timestamp {timestamp!r}"
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    given = [part[3:] for part in signature.split(",") if part.strip().startswith("v1=")]
    if not any(hmac.compare_digest(expected, candidate.strip()) for candidate in given):
        return "signature does not match"
    return None


@dataclass
class Delivery:
    key: str
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class WebhookReceiver:
    secret: bytes
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    stall: bool = False
    requests: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._seen: set[str] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/realtime"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/realtime", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        problem = verify(self.secret, request.headers, body, time.time())
        if problem is not None:
            self.errors.append(problem)
            return web.Response(status=401, text=problem)
        if self.stall:
            await self._release.wait()
        if self.statuses:
            status = self.statuses.pop(0)
            if status >= 300:
                return web.Response(status=status, text=f"answer {status}")
        key = request.headers["Idempotency-Key"]
        if key not in self._seen:  # a repeat is acknowledged, not processed again
            self._seen.add(key)
            self.deliveries.append(Delivery(key, dict(request.headers), orjson.loads(body)))
        return web.Response(status=204)
