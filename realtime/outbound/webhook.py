"""Signed webhooks: each job POSTed as JSON to ``webhook.url``, for the app's backend
to relay (to FCM, APNs, SMS, anything).

Headers: ``X-Realtime-Timestamp`` (Unix seconds), ``X-Realtime-Signature:
v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`` and ``Idempotency-Key``. The
receiver recomputes the HMAC over the raw body and refuses an old timestamp
(docs/notifications.md has the recipe).

Answers: 2xx delivered. 410 GONE: the receiver says this recipient has nowhere to
be reached (no device, account closed); it is not retried and, unlike a failure,
is no dead letter for an operator to look at. 408, 425, 429, 5xx, timeouts and
connection errors are retried. Any other answer (3xx too: a signed request is not
re-sent elsewhere) is a permanent failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import aiohttp

from ..config import WebhookSettings
from ..metrics import Metrics
from .jobs import Job, Outcome
from .payload import encode

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
TRANSIENT_STATUSES = frozenset({408, 425, 429})
DETAIL_BYTES = 200
USER_AGENT = "realtime-webhook/1"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{body}"``."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, body: bytes, key: str, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Realtime-Timestamp": timestamp,
        "X-Realtime-Signature": f"{SIGNATURE_VERSION}={signature(secret, timestamp, body)}",
        "Idempotency-Key": key,
    }


class WebhookSender:
    transport = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        metrics: Metrics,
        http: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._secret = settings.secret.encode()
        self._metrics = metrics
        self._http = http
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    async def send(self, job: Job) -> tuple[Outcome, str]:
        started = time.perf_counter()
        outcome, detail = await self._send(job)
        self._metrics.outbound_done(self.transport, outcome, time.perf_counter() - started)
        return outcome, detail

    async def _send(self, job: Job) -> tuple[Outcome, str]:
        body = encode(job)
        headers = signed_headers(self._secret, body, job.key, self._clock())
        timeout = self._settings.timeout
        try:
            async with (
                asyncio.timeout(timeout),
                self._http.post(
                    self._settings.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as response,
            ):
                status = response.status
                text = (await response.content.read(DETAIL_BYTES)).decode(errors="replace")
        except TimeoutError:
            return Outcome.RETRY, f"no answer within {timeout:g}s"
        except aiohttp.InvalidURL as error:
            return Outcome.FAILED, f"webhook.url cannot be used: {error}"
        except aiohttp.ClientError as error:
            return Outcome.RETRY, f"{type(error).__name__}: {error}"
        answer = f"{status} {' '.join(text.split())}".rstrip()
        if 200 <= status < 300:
            return Outcome.DELIVERED, ""
        if status == 410:
            return Outcome.GONE, answer
        if status >= 500 or status in TRANSIENT_STATUSES:
            return Outcome.RETRY, answer
        log.warning("webhook refused %s for %s: %s", job.key, job.user, answer)
        return Outcome.FAILED, answer
