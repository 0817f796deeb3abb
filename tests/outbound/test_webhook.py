"""The webhook sender against a local receiver that checks the signature."""

from __future__ import annotations

import socket
import time

import aiohttp
import pytest

from realtime.config import WebhookSettings
from realtime.metrics import Metrics
from realtime.outbound import Outcome
from realtime.outbound.webhook import WebhookSender
from tests.outbound.conftest import WEBHOOK_SECRET
from tests.outbound.support import job, sent
from tests.outbound.webhook_receiver import WebhookReceiver


def sender_for(
    url: str,
    metrics: Metrics,
    http: aiohttp.ClientSession,
    *,
    secret: str = WEBHOOK_SECRET,
    timeout: float = 10.0,
    clock: float | None = None,
) -> WebhookSender:
    settings = WebhookSettings(url=url, secret=secret, timeout=timeout)
    if clock is None:
        return WebhookSender(settings, metrics, http)
    return WebhookSender(settings, metrics, http, clock=lambda: clock)


async def test_a_delivery_is_signed_json_with_its_idempotency_key(
    webhook_receiver: WebhookReceiver, metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    sender = sender_for(webhook_receiver.url, metrics, http)
    assert await sender.send(job("webhook", actors=("bob", None, "carol"))) == (
        Outcome.DELIVERED,
        "",
    )
    assert webhook_receiver.errors == []
    [delivery] = webhook_receiver.deliveries
    assert (
        delivery.key
        == delivery.payload["idempotency_key"]
        == job("webhook", actors=("bob", None, "carol")).key
    )
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.payload["text"] == "carol and bob liked your post"
    assert delivery.payload["delivery_keys"] == ["rt-7", "rt-8", "rt-9"]
    assert [n["actor"] for n in delivery.payload["notifications"]] == ["bob", None, "carol"]
    assert delivery.payload["notifications"][0]["data"] == {"post_id": 42}
    assert sent(metrics, "webhook", "delivered") == 1


async def test_a_repeat_carries_the_same_key_and_the_receiver_keeps_one(
    webhook_receiver: WebhookReceiver, metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    sender = sender_for(webhook_receiver.url, metrics, http)
    for _ in range(2):
        assert (await sender.send(job("webhook")))[0] is Outcome.DELIVERED
    assert webhook_receiver.requests == 2
    assert [d.key for d in webhook_receiver.deliveries] == ["rt-7"]


async def test_a_wrong_secret_or_an_old_timestamp_is_refused_by_the_receiver(
    webhook_receiver: WebhookReceiver, metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    wrong = sender_for(webhook_receiver.url, metrics, http, secret="another-secret-" + "z" * 20)
    outcome, detail = await wrong.send(job("webhook"))
    assert (outcome, detail) == (Outcome.FAILED, "401 signature does not match")
    stale = sender_for(webhook_receiver.url, metrics, http, clock=time.time() - 3600)
    outcome, detail = await stale.send(job("webhook"))
    assert outcome is Outcome.FAILED and detail.startswith("401 stale")
    assert webhook_receiver.deliveries == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (410, Outcome.GONE),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (408, Outcome.RETRY),
        (400, Outcome.FAILED),
        (404, Outcome.FAILED),
        (422, Outcome.FAILED),
        (307, Outcome.FAILED),
    ],
)
async def test_answers_map_to_outcomes(
    webhook_receiver: WebhookReceiver,
    metrics: Metrics,
    http: aiohttp.ClientSession,
    status: int,
    expected: Outcome,
) -> None:
    webhook_receiver.statuses = [status]
    outcome, detail = await sender_for(webhook_receiver.url, metrics, http).send(job("webhook"))
    assert (outcome, detail) == (expected, f"{status} answer {status}")
    assert webhook_receiver.errors == [] and webhook_receiver.requests == 1
    assert sent(metrics, "webhook", expected.value) == 1


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    webhook_receiver: WebhookReceiver, metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    webhook_receiver.stall = True
    sender = sender_for(webhook_receiver.url, metrics, http, timeout=0.3)
    assert await sender.send(job("webhook")) == (Outcome.RETRY, "no answer within 0.3s")
    assert webhook_receiver.requests == 1 and webhook_receiver.deliveries == []


async def test_a_receiver_that_is_not_there_is_retried(
    metrics: Metrics, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome, detail = await sender_for(f"http://127.0.0.1:{port}/x", metrics, http).send(
        job("webhook")
    )
    assert outcome is Outcome.RETRY and detail.startswith("ClientConnectorError")
