"""Web Push (RFC 8030) to every subscription of the user: VAPID (RFC 8292) and
``aes128gcm`` (RFC 8291) through pywebpush.

pywebpush encrypts (``WebPusher.encode``) and py_vapid, its VAPID half, signs; the
POST is ours. pywebpush's own ``send_async`` follows redirects, decodes the whole
answer as text and leaves the response unreleased when that fails: here the answer
is released in every case, at most a few hundred bytes of it are read for the
detail, and one deadline bounds the request.

One job goes to each of the user's subscriptions at once. Per subscription, 2xx is
delivered; 404 and 410 mean the subscription is gone, and it is removed; 408, 429
and 5xx, timeouts and connection errors are transient; any other answer is
permanent. A subscription whose keys cannot be used is removed too. The job is
DELIVERED when one subscription took it (the user has seen it; a retry would show
it again on the others), else RETRY when one failure was transient, else FAILED
when one was permanent, else GONE: none is left.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from py_vapid import VapidException
from pywebpush import WebPusher, WebPushException

from storage import PushSubscription, StorageError, Store

from ..config import WebPushSettings
from ..metrics import Metrics
from .jobs import Job, Outcome
from .payload import encode_within
from .vapid import check_subject, load_vapid_key

log = logging.getLogger(__name__)

GONE_STATUSES = frozenset({404, 410})
TRANSIENT_STATUSES = frozenset({408, 425, 429})
DETAIL_BYTES = 200


@dataclass(frozen=True, slots=True)
class _Tried:
    outcome: Outcome
    detail: str


def _where(endpoint: str) -> str:
    """The push service, not the endpoint: an endpoint is a capability, kept out of logs."""
    return urlsplit(endpoint).netloc or "?"


def encrypt(subscription: PushSubscription, body: bytes) -> bytes:
    """The aes128gcm message for this subscription's keys (ValueError: unusable keys)."""
    info = {
        "endpoint": subscription.endpoint,
        "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth},
    }
    try:
        encrypted: bytes = WebPusher(info).encode(body, "aes128gcm")["body"]
    except (WebPushException, binascii.Error, TypeError, ValueError) as error:
        raise ValueError(f"unusable subscription keys: {error}") from None
    return encrypted


class WebPushSender:
    transport = "webpush"

    def __init__(
        self,
        settings: WebPushSettings,
        store: Store,
        metrics: Metrics,
        http: aiohttp.ClientSession,
    ) -> None:
        """Reads the VAPID key file: build it at start-up."""
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._http = http
        self._key = load_vapid_key(settings.vapid_private_key_file)
        check_subject(self._key, settings.vapid_subject)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    @property
    def public_key(self) -> str:
        return self._key.public_key

    async def send(self, job: Job) -> tuple[Outcome, str]:
        started = time.perf_counter()
        outcome, detail = await self._send(job)
        self._metrics.outbound_done(self.transport, outcome, time.perf_counter() - started)
        return outcome, detail

    async def _send(self, job: Job) -> tuple[Outcome, str]:
        try:
            subscriptions = await self._store.push_subscriptions(job.user)
        except StorageError as error:
            return Outcome.RETRY, f"storage: {error}"
        if not subscriptions:
            return Outcome.GONE, "no push subscriptions"
        body = encode_within(job)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._push(s, body, job)) for s in subscriptions]
        tried = [task.result() for task in tasks]
        return _overall(tried)

    async def _push(self, subscription: PushSubscription, body: bytes, job: Job) -> _Tried:
        where = _where(subscription.endpoint)
        try:
            encrypted = encrypt(subscription, body)
            signed = self._key.headers(subscription.endpoint, self._settings.vapid_subject)
        except (ValueError, VapidException) as error:
            return await self._remove(subscription, f"{where}: {error}")
        headers = {
            **signed,
            "TTL": str(self._settings.ttl),
            "Urgency": self._settings.urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        try:
            async with (
                asyncio.timeout(self._settings.timeout),
                self._http.post(
                    subscription.endpoint,
                    data=encrypted,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as response,
            ):
                status = response.status
                text = (await response.content.read(DETAIL_BYTES)).decode(errors="replace")
        except TimeoutError:
            return _Tried(Outcome.RETRY, f"{where}: no answer within {self._settings.timeout:g}s")
        except (aiohttp.InvalidURL, ValueError) as error:
            return await self._remove(subscription, f"{where}: unusable endpoint: {error}")
        except aiohttp.ClientError as error:
            return _Tried(Outcome.RETRY, f"{where}: {type(error).__name__}: {error}")
        answer = f"{where}: {status} {' '.join(text.split())}".rstrip()
        if 200 <= status < 300:
            return _Tried(Outcome.DELIVERED, "")
        if status in GONE_STATUSES:
            return await self._remove(subscription, answer)
        if status >= 500 or status in TRANSIENT_STATUSES:
            return _Tried(Outcome.RETRY, answer)
        log.warning("push service refused %s for %s: %s", job.key, job.user, answer)
        return _Tried(Outcome.FAILED, answer)

    async def _remove(self, subscription: PushSubscription, why: str) -> _Tried:
        try:
            await self._store.remove_push_subscription(subscription.user, subscription.endpoint)
        except StorageError as error:
            # Still there: the next job finds it again and tries once more.
            return _Tried(Outcome.RETRY, f"{why}; not removed: storage: {error}")
        self._metrics.webpush_subscriptions_removed.inc()
        return _Tried(Outcome.GONE, f"{why}; subscription removed")


def _overall(tried: list[_Tried]) -> tuple[Outcome, str]:
    outcomes = {t.outcome for t in tried}
    detail = "; ".join(t.detail for t in tried if t.detail)
    for outcome in (Outcome.DELIVERED, Outcome.RETRY, Outcome.FAILED):
        if outcome in outcomes:
            return outcome, detail
    return Outcome.GONE, detail
