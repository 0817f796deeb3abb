"""The outbox over a real server, on both stores: signed webhooks to a local receiver
that verifies them, email to a real SMTP server, the unread delay for online users,
retries into dead letters and back, over REST.

Two instances on one PostgreSQL, kill -9 with jobs in flight: tests/cluster/
test_outbox_cluster.py. A PostgreSQL outage: test_outbox_outage.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.client import Client, close_all
from tests.e2e.outbox_support import Services
from tests.e2e.support import assert_error, eventually, metric
from tests.server import Http, ServerProcess, unique

API = "/api/v1"
UNREAD_DELAY = 2.0
DIGEST_WINDOW = 6.0
WITHIN = 60.0  # a generous deadline for anything the outbox does


@pytest.fixture(scope="module")
def services(backend: str) -> Iterator[Services]:
    """Per backend: job ids (and so idempotency keys) start over in each database."""
    running = Services()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(
    backend: str,
    services: Services,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    dsn = ""
    if backend == "postgres":
        dsn = str(request.getfixturevalue("postgres_server").create_database(unique("db_")))
    env = services.env(
        REALTIME_NOTIFICATIONS_UNREAD_DELAY=str(UNREAD_DELAY),
        REALTIME_NOTIFICATIONS_DIGEST_WINDOW=str(DIGEST_WINDOW),
    )
    process = ServerProcess(tmp_path_factory.mktemp("outbox"), dsn=dsn, env=env)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[Http]:
    async with Http(server) as session:
        yield session


async def notify(http: Http, **body: Any) -> None:
    status, reply = await http.call("POST", f"{API}/notifications", body)
    assert status == 202, reply


async def jobs(http: Http, user: str, query: str = "") -> list[dict[str, Any]]:
    status, reply = await http.call("GET", f"{API}/deliveries?user={user}{query}")
    assert status == 200, reply
    found: list[dict[str, Any]] = reply["deliveries"]
    return found


async def settled(
    http: Http, user: str, check: Callable[[dict[str, Any]], bool], count: int = 1
) -> list[dict[str, Any]]:
    """Wait until the user has ``count`` jobs and each passes ``check``; the jobs."""
    found: list[dict[str, Any]] = []

    async def ready() -> bool:
        nonlocal found
        found = await jobs(http, user)
        return len(found) == count and all(check(job) for job in found)

    await eventually(ready, timeout=WITHIN)
    return found


def done(job: dict[str, Any]) -> bool:
    return bool(job["state"] == "done")


async def test_an_offline_recipient_gets_its_signed_webhook_exactly_once(
    services: Services, http: Http
) -> None:
    receiver = services.receiver
    user = unique("u")
    await notify(http, to=[user], type="user_followed", data={"by": "bob"}, actor="bob")
    (job,) = await settled(http, user, done)
    key = f"rt-{job['id']}"
    status, inbox = await http.call("GET", f"{API}/users/{user}/notifications")
    assert status == 200
    (stored,) = inbox["items"]
    payload = receiver.payloads[key]
    assert (payload["user"], payload["type"], payload["count"], payload["text"]) == (
        user,
        "user_followed",
        1,
        "bob started following you",
    )
    assert payload["notifications"][0]["id"] == stored["id"] == job["notification_id"]
    assert payload["notifications"][0]["data"] == {"by": "bob"}
    assert (job["transport"], job["attempts"], job["last_error"]) == ("webhook", 1, None)
    # A few more rounds of the worker: nothing is sent again.
    await asyncio.sleep(1.0)
    assert (receiver.requests[key], receiver.acknowledged[key]) == (1, 1)
    assert receiver.errors == []


async def test_online_users_get_it_offline_only_if_unread_after_the_delay(
    services: Services, server: ServerProcess, http: Http
) -> None:
    reader, waiter = unique("r"), unique("w")
    clients = [await Client.connected(server.ws_url, server.token(u)) for u in (reader, waiter)]
    try:
        await notify(http, to=[reader, waiter], type="user_followed", actor="bob")
        live = await clients[0].push("notification")
        status, _ = await http.call("PUT", f"{API}/users/{reader}/notifications/{live['id']}/read")
        assert status == 204
        (skipped,) = await settled(http, reader, lambda j: j["state"] == "skipped")
        (sent,) = await settled(http, waiter, done)
    finally:
        await close_all(*clients)
    assert skipped["last_error"] == "read or archived"
    assert f"rt-{skipped['id']}" not in services.receiver.requests
    # It waited out the delay (no attempt charged for that), then went.
    assert sent["due_at"] == sent["created_at"] + int(UNREAD_DELAY * 1000)
    assert sent["attempts"] == 1
    assert services.receiver.acknowledged[f"rt-{sent['id']}"] == 1


async def test_failures_are_retried_then_dead_listed_and_requeued(
    services: Services, http: Http
) -> None:
    receiver = services.receiver
    user = unique("u")
    receiver.script[user] = [500, 503, 500]
    await notify(http, to=[user], type="user_followed")
    (dead,) = await settled(http, user, lambda j: j["state"] == "dead")
    key = f"rt-{dead['id']}"
    assert dead["attempts"] == 3 and receiver.requests[key] == 3
    assert dead["last_error"] == "500 answer 500 (gave up after 3 attempts)"
    status, listed = await http.call("GET", f"{API}/deliveries?state=dead&user={user}")
    assert (status, listed) == (200, {"deliveries": [dead]})
    status, text = await http.call("GET", "/metrics")
    assert metric(text, "realtime_outbox_deliveries_total", transport="webhook", result="dead")
    assert metric(text, "realtime_outbox_deliveries_total", transport="webhook", result="retried")

    status, requeued = await http.call("POST", f"{API}/deliveries/{dead['id']}/retry")
    assert status == 200, requeued
    assert (requeued["id"], requeued["state"], requeued["attempts"]) == (dead["id"], "pending", 0)
    (job,) = await settled(http, user, done)
    assert (receiver.requests[key], receiver.acknowledged[key]) == (4, 1)
    assert job["last_error"] == dead["last_error"]  # kept, for the record
    # Only a dead one can be requeued.
    reply = await http.call("POST", f"{API}/deliveries/{dead['id']}/retry")
    assert_error(reply, 404, "not_found")


async def test_the_deliveries_route_checks_its_query(http: Http) -> None:
    for query in ("state=lost", "limit=0", "user=a%20b", "after=-1"):
        assert_error(await http.call("GET", f"{API}/deliveries?{query}"), 400, "bad_request")
    assert_error(await http.call("POST", f"{API}/deliveries/0/retry"), 400, "bad_request")
    assert_error(
        await http.call("POST", f"{API}/deliveries/1/retry", key=None), 401, "unauthorized"
    )


async def test_email_of_one_post_within_the_window_is_one_digest(
    services: Services, http: Http
) -> None:
    user = unique("u")
    address = f"{user}@example.com"
    prefs = {"email": address, "types": {"post_liked": {"push": False}}}
    assert (await http.call("PUT", f"{API}/users/{user}/preferences", prefs))[0] == 200
    for actor in ("ann", "bob", "cat"):
        await notify(http, to=[user], type="post_liked", data={"post_id": 7}, actor=actor)
    await notify(http, to=[user], type="post_liked", data={"post_id": 8}, actor="dan")
    queued = await settled(http, user, done, count=4)
    mails = [m for m in services.smtp.mails if m.recipients == [address]]
    assert sorted(str(m.message["Subject"]) for m in mails) == [
        "cat and 2 others liked your post",
        "dan liked your post",
    ]
    (digest,) = [m for m in mails if "others" in str(m.message["Subject"])]
    first = min(j["id"] for j in queued if j["group_key"] == "7")
    assert str(digest.message["X-Realtime-Idempotency-Key"]).startswith(f"rt-{first}-")
    assert all(j["transport"] == "email" and j["attempts"] == 1 for j in queued)
