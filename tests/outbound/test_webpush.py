"""The Web Push sender against the local push service: real VAPID, real aes128gcm."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from realtime.config import WebPushSettings
from realtime.metrics import Metrics
from realtime.outbound import Outcome
from realtime.outbound.vapid import VapidKeyError, generate_key_file
from realtime.outbound.webpush import WebPushSender
from storage import SqliteStore
from tests.outbound.push_service import Browser, PushService
from tests.outbound.support import job, sent

SUBJECT = "mailto:ops@example.com"


def sender_for(
    vapid_file: tuple[Path, str],
    store: SqliteStore,
    metrics: Metrics,
    http: aiohttp.ClientSession,
    **settings: object,
) -> WebPushSender:
    options: dict[str, object] = {
        "vapid_private_key_file": str(vapid_file[0]),
        "vapid_subject": SUBJECT,
        "allow_http_endpoints": True,
        "ttl": 3600,
        "urgency": "high",
        **settings,
    }
    return WebPushSender(WebPushSettings(**options), store, metrics, http)  # type: ignore[arg-type]


@pytest.fixture
def sender(
    vapid_file: tuple[Path, str], store: SqliteStore, metrics: Metrics, http: aiohttp.ClientSession
) -> WebPushSender:
    return sender_for(vapid_file, store, metrics, http)


async def subscribe(store: SqliteStore, browser: Browser, user: str = "alice") -> None:
    await store.add_push_subscription(
        user, browser.endpoint, browser.p256dh, browser.auth_text, keep=10
    )


async def endpoints(store: SqliteStore, user: str = "alice") -> list[str]:
    return [s.endpoint for s in await store.push_subscriptions(user)]


async def test_a_push_arrives_signed_encrypted_and_readable(
    sender: WebPushSender, store: SqliteStore, push_service: PushService, metrics: Metrics
) -> None:
    browser = push_service.browser()
    await subscribe(store, browser)
    assert await sender.send(job("webpush")) == (Outcome.DELIVERED, "")
    assert push_service.errors == []
    [received] = push_service.received
    assert received.payload == {
        "idempotency_key": "rt-7",
        "delivery_keys": ["rt-7"],
        "user": "alice",
        "type": "post_liked",
        "count": 1,
        "text": "bob liked your post",
        "notifications": [
            {
                "id": 100,
                "type": "post_liked",
                "data": {"post_id": 42},
                "actor": "bob",
                "ts": 1_796_000_000_000,
            }
        ],
    }
    assert (received.headers["TTL"], received.headers["Urgency"]) == ("3600", "high")
    assert received.claims["aud"] == push_service.origin
    assert received.claims["sub"] == SUBJECT
    assert sent(metrics, "webpush", "delivered") == 1


async def test_a_digest_goes_to_every_subscription_of_the_user(
    sender: WebPushSender, store: SqliteStore, push_service: PushService
) -> None:
    phone, laptop, other = push_service.browser(), push_service.browser(), push_service.browser()
    await subscribe(store, phone)
    await subscribe(store, laptop)
    await subscribe(store, other, user="carol")
    digest = job("webpush", actors=("bob", "dave", "bob", "eve", "fay"))
    assert await sender.send(digest) == (Outcome.DELIVERED, "")
    assert push_service.errors == []
    assert push_service.payloads(other) == []
    for browser in (phone, laptop):
        [payload] = push_service.payloads(browser)
        assert payload["text"] == "fay and 3 others liked your post"
        assert payload["count"] == 5 and len(payload["notifications"]) == 5
        assert payload["idempotency_key"] == digest.key
        assert payload["delivery_keys"] == [f"rt-{i}" for i in range(7, 12)]


@pytest.mark.parametrize("status", [404, 410])
async def test_a_subscription_the_push_service_forgot_is_removed(
    sender: WebPushSender,
    store: SqliteStore,
    push_service: PushService,
    metrics: Metrics,
    status: int,
) -> None:
    gone, alive = push_service.browser(), push_service.browser()
    await subscribe(store, gone)
    await subscribe(store, alive)
    push_service.answer(gone, status)
    outcome, detail = await sender.send(job("webpush"))
    assert outcome is Outcome.DELIVERED
    assert f"127.0.0.1:{push_service.port}: {status}" in detail and "removed" in detail
    assert gone.endpoint not in detail  # an endpoint is a capability: never in last_error
    assert await endpoints(store) == [alive.endpoint]
    assert len(push_service.payloads(alive)) == 1
    # The last one gone too: nobody is left.
    push_service.answer(alive, status)
    outcome, _ = await sender.send(job("webpush", first_id=8))
    assert outcome is Outcome.GONE
    assert await endpoints(store) == []
    assert await sender.send(job("webpush", first_id=9)) == (
        Outcome.GONE,
        "no push subscriptions",
    )
    assert metrics.webpush_subscriptions_removed._value.get() == 2
    assert sent(metrics, "webpush", "gone") == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (400, Outcome.FAILED),
        (413, Outcome.FAILED),
        (403, Outcome.FAILED),
        (301, Outcome.FAILED),
    ],
)
async def test_other_answers_keep_the_subscription(
    sender: WebPushSender,
    store: SqliteStore,
    push_service: PushService,
    status: int,
    expected: Outcome,
) -> None:
    browser = push_service.browser()
    await subscribe(store, browser)
    push_service.answer(browser, status)
    outcome, detail = await sender.send(job("webpush"))
    assert (outcome, push_service.errors) == (expected, [])
    assert f": {status} answer {status}" in detail
    assert await endpoints(store) == [browser.endpoint]


async def test_one_transient_failure_and_no_delivery_is_retried(
    sender: WebPushSender, store: SqliteStore, push_service: PushService
) -> None:
    broken, refusing = push_service.browser(), push_service.browser()
    await subscribe(store, broken)
    await subscribe(store, refusing)
    push_service.answer(broken, 502)
    push_service.answer(refusing, 400)
    outcome, detail = await sender.send(job("webpush"))
    assert outcome is Outcome.RETRY
    assert ": 502" in detail and ": 400" in detail


async def test_a_push_service_that_does_not_answer_in_time_is_retried(
    vapid_file: tuple[Path, str],
    store: SqliteStore,
    metrics: Metrics,
    http: aiohttp.ClientSession,
    push_service: PushService,
) -> None:
    sender = sender_for(vapid_file, store, metrics, http, timeout=0.3)
    browser = push_service.browser()
    await subscribe(store, browser)
    push_service.stall(browser)
    outcome, detail = await sender.send(job("webpush"))
    assert (outcome, detail) == (
        Outcome.RETRY,
        f"127.0.0.1:{push_service.port}: no answer within 0.3s",
    )
    assert push_service.requests == 1 and push_service.errors == []
    assert await endpoints(store) == [browser.endpoint]
    assert sent(metrics, "webpush", "retry") == 1


async def test_a_push_service_that_refuses_connections_is_retried(
    sender: WebPushSender, store: SqliteStore, push_service: PushService
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    browser = push_service.browser()
    browser.endpoint = f"http://127.0.0.1:{closed_port}/push/{browser.token}"
    await subscribe(store, browser)
    outcome, detail = await sender.send(job("webpush"))
    assert outcome is Outcome.RETRY
    assert detail.startswith(f"127.0.0.1:{closed_port}: ClientConnectorError")


async def test_a_digest_too_large_for_one_push_is_cut_to_the_newest(
    sender: WebPushSender, store: SqliteStore, push_service: PushService
) -> None:
    browser = push_service.browser()
    await subscribe(store, browser)
    big = '{"comment":"' + "x" * 600 + '"}'
    actors = tuple(f"user{i}" for i in range(12))
    digest = job("webpush", type="post_commented", actors=actors, data=big)
    assert await sender.send(digest) == (Outcome.DELIVERED, "")
    assert push_service.errors == []
    [payload] = push_service.payloads(browser)
    assert payload["truncated"] is True and payload["count"] == 12
    assert payload["text"] == "user11 and 11 others commented on your post"
    assert [n["actor"] for n in payload["notifications"]] == ["user11"]


async def test_a_subscription_whose_keys_cannot_be_used_is_removed(
    sender: WebPushSender, store: SqliteStore, push_service: PushService
) -> None:
    browser = push_service.browser()
    # The shape of a P-256 key (what registration checks), but no point on the curve.
    not_a_point = "B" + "A" * 85 + "E"
    await store.add_push_subscription(
        "alice", browser.endpoint, not_a_point, browser.auth_text, keep=10
    )
    outcome, detail = await sender.send(job("webpush"))
    assert outcome is Outcome.GONE
    assert "unusable subscription keys" in detail and "removed" in detail
    assert push_service.requests == 0
    assert await endpoints(store) == []


def test_a_missing_or_bad_key_file_stops_the_sender_with_its_name(
    tmp_path: Path, store: SqliteStore, metrics: Metrics
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    for path, words in (
        (tmp_path / "missing.pem", "No such file"),
        (bad, "not an unencrypted PEM"),
    ):
        settings = WebPushSettings(vapid_private_key_file=str(path), vapid_subject=SUBJECT)
        with pytest.raises(VapidKeyError, match=words) as caught:
            WebPushSender(settings, store, metrics, None)  # type: ignore[arg-type]
        assert str(path) in str(caught.value)


async def test_the_push_service_refuses_another_servers_key_and_wrong_browser_keys(
    tmp_path: Path,
    store: SqliteStore,
    metrics: Metrics,
    http: aiohttp.ClientSession,
    push_service: PushService,
) -> None:
    """The stand-in checks for real: what a real push service or browser would refuse,
    it refuses too."""
    other_key = tmp_path / "other.pem"
    impostor = sender_for((other_key, generate_key_file(other_key)), store, metrics, http)
    browser = push_service.browser()
    await subscribe(store, browser)
    outcome, detail = await impostor.send(job("webpush"))
    assert (outcome, push_service.errors) == (
        Outcome.FAILED,
        [f"{browser.token}: k is not the server's VAPID public key"],
    )
    assert ": 403" in detail
    # Encrypted for another browser's keys: it cannot be read.
    stranger = push_service.browser()
    await store.add_push_subscription(
        "bob", browser.endpoint, stranger.p256dh, stranger.auth_text, keep=10
    )
    push_service.errors.clear()
    sender = sender_for(
        (tmp_path / "vapid.pem", push_service.vapid_public_key), store, metrics, http
    )
    outcome, _ = await sender.send(job("webpush", user="bob"))
    assert outcome is Outcome.FAILED
    assert [e.split(": ", 1)[1].split(":")[0] for e in push_service.errors] == ["cannot decrypt"]
    assert push_service.received == []
