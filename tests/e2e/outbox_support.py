"""The outbox's end-to-end surroundings: a webhook receiver and an SMTP server that run
in a thread of their own (so that a test blocking on a server process never keeps
them from answering), and the settings that point servers at them.

The receiver checks every signature as docs/notifications.md tells an app's backend
to (``tests/outbound/webhook_receiver.verify``) and counts, per idempotency key, the
requests it got and the ones it acknowledged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tests.outbound.smtp_server import SmtpServer
from tests.outbound.webhook_receiver import verify

T = TypeVar("T")
SECRET = "outbox-webhook-secret-" + "w" * 16
START_TIMEOUT = 30.0


class LoopThread:
    """An event loop in a daemon thread, for services the test talks to from outside."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="services", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(START_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT)
        self.loop.close()


class Receiver:
    """A webhook endpoint: verifies, counts, optionally answers slowly or with errors.

    ``script[user]``: statuses to answer for that user's requests, one each, then 204.
    ``delay``: seconds to hold every acknowledged answer after counting it (a receiver
    that processed the call but is slow to say so).
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.requests: Counter[str] = Counter()
        self.acknowledged: Counter[str] = Counter()
        self.payloads: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.script: dict[str, list[int]] = {}
        self.delay = 0.0
        self.holding = 0
        self.first_at: float | None = None  # time.monotonic() of the first acknowledged
        self.last_at: float | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = verify(self.secret, request.headers, body, time.time())
        if problem is not None:
            self.errors.append(problem)
            return web.Response(status=401, text=problem)
        key = request.headers["Idempotency-Key"]
        payload = orjson.loads(body)
        if payload.get("idempotency_key") != key:
            self.errors.append(f"body key {payload.get('idempotency_key')!r} is not {key!r}")
        self.requests[key] += 1
        statuses = self.script.get(payload["user"])
        if statuses:
            status = statuses.pop(0)
            return web.Response(status=status, text=f"answer {status}")
        self.acknowledged[key] += 1
        self.payloads[key] = payload
        self.last_at = time.monotonic()
        if self.first_at is None:
            self.first_at = self.last_at
        if self.delay:
            self.holding += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.holding -= 1
        return web.Response(status=204)


class Services:
    """The receiver and an SMTP server, on one loop thread."""

    def __init__(self) -> None:
        self.thread = LoopThread()
        self.receiver = Receiver()
        self.smtp = SmtpServer()
        try:
            self.thread.run(self.receiver.start())
            self.thread.run(self._start_smtp())
        except BaseException:
            self.close()
            raise

    async def _start_smtp(self) -> None:
        await self.smtp.start()

    def env(self, **extra: str) -> dict[str, str]:
        """Server settings: webhook and email on, the outbox quick to look and retry."""
        return {
            "REALTIME_WEBHOOK_URL": self.receiver.url,
            "REALTIME_WEBHOOK_SECRET": SECRET,
            "REALTIME_EMAIL_SMTP_HOST": "127.0.0.1",
            "REALTIME_EMAIL_SMTP_PORT": str(self.smtp.port),
            "REALTIME_EMAIL_STARTTLS": "false",
            "REALTIME_EMAIL_SENDER": "Realtime <rt@example.com>",
            "REALTIME_OUTBOX_POLL_INTERVAL": "0.1",
            "REALTIME_OUTBOX_BACKOFF_BASE": "0.05",
            "REALTIME_OUTBOX_BACKOFF_MAX": "0.2",
            "REALTIME_OUTBOX_MAX_ATTEMPTS": "3",
            **extra,
        }

    def close(self) -> None:
        try:
            self.thread.run(self.receiver.close())
            self.thread.run(self.smtp.close())
        finally:
            self.thread.close()
