"""Notifications from other services' events, end to end: a real server, a real Redis,
events published the way the app's services publish them (``redis.publish(channel,
json)`` and ``XADD``), and the notifications read back over REST and the socket."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.client import Client, close_all
from tests.e2e.support import eventually, metric
from tests.server import Http, ServerProcess, unique
from tests.services import PostgresServer, RedisServer

API = "/api/v1"
DEADLINE = 60.0

TYPES = """
[notifications.types.post_created]
channels = ["in_app"]
group = ""
critical = false
"""

PUBSUB_RULES = """
[[ingest]]
source = "pubsub"
channel = "post.created"
type = "post_created"
recipients = { followers_of = "post.author_id" }
actor = "post.author_id"
data = { post_id = "post.id", title = "post.title" }

[[ingest]]
source = "pubsub"
channel = "post.liked"
type = "post_liked"
recipients = { to = "post.author_id" }
actor = "user_id"
exclude_actor = true
data = { post_id = "post.id" }

[[ingest]]
source = "pubsub"
channel = "user.followed"
type = "user_followed"
recipients = { to = "followed_id" }
actor = "follower_id"
data = ["follower_id"]
"""

STREAM_RULES = """
[[ingest]]
name = "created"
source = "stream"
stream = "{stream}"
start = "0"
claim_idle = {claim_idle}
match = {{ event = "post.created" }}
type = "post_created"
recipients = {{ followers_of = "post.author_id" }}
actor = "post.author_id"
data = {{ post_id = "post.id" }}

[[ingest]]
name = "liked"
source = "stream"
stream = "{stream}"
start = "0"
claim_idle = {claim_idle}
match = {{ event = "post.liked" }}
type = "post_liked"
recipients = {{ to = "post.author_id" }}
actor = "user_id"
exclude_actor = true
data = {{ post_id = "post.id" }}

[[ingest]]
name = "followed"
source = "stream"
stream = "{stream}"
start = "0"
claim_idle = {claim_idle}
match = {{ event = "user.followed" }}
type = "user_followed"
recipients = {{ to = "followed_id" }}
actor = "follower_id"
data = {{ post_id = "n" }}
"""


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def server_for(
    servers: list[ServerProcess],
    workdir: Path,
    broker_url: str,
    rules: str,
    *,
    name: str = "server",
    dsn: str = "",
    prefix: str,
    **env: str,
) -> ServerProcess:
    server = ServerProcess(
        workdir / name,
        dsn=dsn,
        broker_url=broker_url,
        config_text=TYPES + rules,
        name=name,
        env={"REALTIME_BROKER_PREFIX": prefix, "REALTIME_BROKER_TIMEOUT": "1", **env},
    )
    servers.append(server)
    server.start()
    return server


async def metrics(http: Http) -> str:
    status, text = await http.call("GET", "/metrics", key=None)
    assert status == 200
    return str(text)


async def consuming(http: Http) -> float:
    """How many ingest sources this instance reads."""
    return metric(await metrics(http), "realtime_ingest_connected")


async def inbox(http: Http, user: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await http.call(
            "GET", f"{API}/users/{user}/notifications?after={after}&limit=200"
        )
        assert status == 200, page
        if not page["items"]:
            return items
        items.extend(page["items"])
        after = page["items"][-1]["id"]


def what(items: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    return [(item["type"], item["actor"], item["data"]) for item in items]


# Pub/sub ---------------------------------------------------------------------------------


async def test_the_apps_pubsub_events_notify_the_right_users(
    servers: list[ServerProcess], tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    prefix = unique("p")
    server = server_for(servers, tmp_path, redis_server.url, PUBSUB_RULES, prefix=prefix)
    author, liker, stranger = unique("author"), unique("liker"), unique("stranger")
    fans = sorted(unique("fan") for _ in range(3))
    async with Http(server) as http:
        for fan in fans:
            assert (await http.call("PUT", f"{API}/users/{fan}/following/{author}"))[0] == 204
        await eventually(lambda: _is(consuming(http), 1), timeout=DEADLINE)
        live = await Client.connected(server.ws_url, server.token(fans[0]))
        author_live = await Client.connected(server.ws_url, server.token(author))

        # As the app's post service does.
        post = {"id": 7, "author_id": author, "title": "Hello", "body": "..."}
        await redis.publish("post.created", json.dumps({"post": post}))
        push = await live.push("notification")
        assert (push["type"], push["actor"], push["data"]) == (
            "post_created",
            author,
            {"post_id": 7, "title": "Hello"},
        )
        for fan in fans:
            await eventually(partial(_has, http, fan, 1), timeout=DEADLINE)
            assert what(await inbox(http, fan)) == [
                ("post_created", author, {"post_id": 7, "title": "Hello"})
            ]

        liked = {"post": {"id": 7, "author_id": author}, "user_id": liker}
        await redis.publish("post.liked", json.dumps(liked))
        push = await author_live.push("notification")
        assert (push["type"], push["actor"], push["data"]) == ("post_liked", liker, {"post_id": 7})

        # The author likes their own post: nobody is told. Then a follow, which the
        # same connection delivers after it (one subscriber, in order).
        own = {"post": {"id": 7, "author_id": author}, "user_id": author}
        await redis.publish("post.liked", json.dumps(own))
        await redis.publish(
            "user.followed", json.dumps({"follower_id": liker, "followed_id": author})
        )
        push = await author_live.push("notification")
        assert (push["type"], push["actor"], push["data"]) == (
            "user_followed",
            liker,
            {"follower_id": liker},
        )
        assert what(await inbox(http, author)) == [
            ("post_liked", liker, {"post_id": 7}),
            ("user_followed", liker, {"follower_id": liker}),
        ]
        for user in (liker, stranger):
            assert await inbox(http, user) == []
        # A message that is not JSON is skipped and counted; the server carries on.
        await redis.publish("post.liked", b"\xff not json")
        await eventually(
            lambda: _metric_is(
                http, "realtime_ingest_events_total", 1, rule="post_liked", outcome="skipped"
            ),
            timeout=DEADLINE,
        )
        text = await metrics(http)
        assert (
            metric(text, "realtime_ingest_events_total", rule="post_liked", outcome="matched") == 2
        )
        assert (
            metric(text, "realtime_ingest_events_total", rule="post_liked", outcome="notified") == 2
        )
        assert metric(text, "realtime_ingest_recipients_total", rule="post_created") == 3
        assert metric(text, "realtime_ingest_recipients_total", rule="post_liked") == 1
        await close_all(live, author_live)


async def test_two_instances_make_one_notification_per_pubsub_event_and_one_takes_over(
    servers: list[ServerProcess],
    tmp_path: Path,
    redis: Redis,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    prefix = unique("p")
    dsn = postgres_server.create_database(unique("db_"))
    pair = [
        server_for(
            servers, tmp_path, redis_server.url, PUBSUB_RULES, name=name, dsn=dsn, prefix=prefix
        )
        for name in ("one", "two")
    ]
    follower, followed = unique("a"), unique("b")
    https = [Http(server) for server in pair]
    try:
        await eventually(lambda: _sum_is([consuming(h) for h in https], 1), timeout=DEADLINE)
        holder = 0 if await consuming(https[0]) == 1 else 1
        event = json.dumps({"follower_id": follower, "followed_id": followed})
        await redis.publish("user.followed", event)
        await eventually(lambda: _has(https[1 - holder], followed, 1), timeout=DEADLINE)
        # the standby instance did not make a second one
        await redis.publish(
            "user.followed", json.dumps({"follower_id": "x", "followed_id": "marker"})
        )
        await eventually(lambda: _has(https[0], "marker", 1), timeout=DEADLINE)
        assert len(await inbox(https[0], followed)) == 1
        # the holder dies; the other one takes the lease over and subscribes
        pair[holder].kill()
        other = https[1 - holder]
        await eventually(lambda: _is(consuming(other), 1), timeout=DEADLINE)
        late = unique("late")
        await redis.publish(
            "user.followed", json.dumps({"follower_id": follower, "followed_id": late})
        )
        await eventually(lambda: _has(other, late, 1), timeout=DEADLINE)
    finally:
        for http in https:
            await http.__aexit__()


async def test_readyz_does_not_depend_on_the_ingest_redis(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    with RedisServer() as events:
        rules = PUBSUB_RULES.replace(
            'source = "pubsub"', f'source = "pubsub"\nredis_url = "{events.url}"'
        )
        server = server_for(servers, tmp_path, "", rules, prefix=unique("p"))
        client = Redis.from_url(events.url)
        async with Http(server) as http:
            try:
                await eventually(lambda: _is(consuming(http), 1), timeout=DEADLINE)
                events.stop()
                await eventually(lambda: _is(consuming(http), 0), timeout=DEADLINE)
                status, body = await http.call("GET", "/readyz", key=None)
                assert status == 200, body
                events.start()
                await eventually(lambda: _is(consuming(http), 1), timeout=DEADLINE)
                user = unique("u")
                await client.publish(
                    "user.followed", json.dumps({"follower_id": "a", "followed_id": user})
                )
                await eventually(lambda: _has(http, user, 1), timeout=DEADLINE)
                assert server.process is not None and server.process.poll() is None
            finally:
                await client.aclose()


# Streams ---------------------------------------------------------------------------------


def stream_events(
    count: int, tag: str
) -> tuple[list[dict[str, Any]], Counter[tuple[str, str, Any]]]:
    """``count`` events of the three kinds, and what each user must get, exactly once."""
    authors = [f"{tag}-author{i}" for i in range(5)]
    followers = {author: [f"{author}-fan{j}" for j in range(3)] for author in authors}
    events: list[dict[str, Any]] = []
    expected: Counter[tuple[str, str, Any]] = Counter()
    for n in range(count):
        author = authors[n % len(authors)]
        if n % 3 == 0:
            events.append({"event": "post.created", "post": {"id": n, "author_id": author}})
            for fan in followers[author]:
                expected[fan, "post_created", n] += 1
        elif n % 3 == 1:
            liker = f"{tag}-liker{n % 7}"
            events.append(
                {"event": "post.liked", "post": {"id": n, "author_id": author}, "user_id": liker}
            )
            expected[author, "post_liked", n] += 1
        else:
            events.append(
                {
                    "event": "user.followed",
                    "follower_id": author,
                    "followed_id": f"{tag}-u{n}",
                    "n": n,
                }
            )
            expected[f"{tag}-u{n}", "user_followed", n] += 1
    return events, expected


async def follow_all(http: Http, tag: str) -> None:
    calls = [
        http.call("PUT", f"{API}/users/{tag}-author{i}-fan{j}/following/{tag}-author{i}")
        for i in range(5)
        for j in range(3)
    ]
    assert {status for status, _ in await asyncio.gather(*calls)} == {204}


async def received(http: Http, users: set[str]) -> Counter[tuple[str, str, Any]]:
    got: Counter[tuple[str, str, Any]] = Counter()
    for user in sorted(users):
        for item in await inbox(http, user):
            got[user, item["type"], item["data"]["post_id"]] += 1
    return got


async def stream_done(redis: Redis, stream: str, last_id: bytes) -> bool:
    """Every entry delivered to the group and acknowledged."""
    groups: Any = await redis.xinfo_groups(stream)
    (group,) = groups
    return bool(group["last-delivered-id"] == last_id and group["pending"] == 0)


async def add_all(redis: Redis, stream: str, events: list[dict[str, Any]]) -> bytes:
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(stream, {"data": json.dumps(event)})
        ids = await pipe.execute()
    return bytes(ids[-1])


async def notified(http: Http) -> float:
    text = await metrics(http)
    return sum(
        metric(text, "realtime_ingest_events_total", rule=rule, outcome="notified")
        for rule in ("created", "liked", "followed")
    )


async def test_stream_events_are_notified_exactly_once_across_kill_9_and_restarts(
    servers: list[ServerProcess], tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream, tag = f"events-{secrets.token_hex(4)}", unique("t")
    rules = STREAM_RULES.format(stream=stream, claim_idle="60.0")
    server = server_for(servers, tmp_path, redis_server.url, rules, prefix=unique("p"))
    events, expected = stream_events(900, tag)
    async with Http(server) as http:
        await follow_all(http, tag)
    last = await add_all(redis, stream, events)
    interrupted = 0
    for _ in range(2):  # killed twice, at different points
        async with Http(server) as http:
            target = await notified(http) + 50
            await eventually(partial(_notified_at_least, http, target), timeout=DEADLINE)
        server.kill()
        if not await stream_done(redis, stream, last):
            interrupted += 1
        server.start()  # the same instance id: the same consumer, its pending re-read
    assert interrupted, "the kills never landed mid-stream"
    await eventually(lambda: stream_done(redis, stream, last), timeout=DEADLINE * 3)
    async with Http(server) as http:
        got = await received(http, {user for user, _, _ in expected})
    assert got == expected  # nothing lost, nothing doubled


def as_posted(event: dict[str, Any], entry_id: str) -> dict[str, Any]:
    """The POST /notifications a rule makes of ``event``, with the rule's dedupe_key."""
    post = event.get("post", {})
    if event["event"] == "post.created":
        rule, body = "created", {"followers_of": post["author_id"], "type": "post_created"}
        body["actor"] = post["author_id"]
    elif event["event"] == "post.liked":
        rule, body = "liked", {"to": [post["author_id"]], "type": "post_liked"}
        body["actor"] = event["user_id"]
    else:
        rule, body = "followed", {"to": [event["followed_id"]], "type": "user_followed"}
        body["actor"] = event["follower_id"]
    post_id = post.get("id", event.get("n"))
    return {**body, "data": {"post_id": post_id}, "dedupe_key": f"{rule}:{entry_id}"}


async def test_a_dead_instances_stream_entries_are_claimed_by_another_exactly_once(
    servers: list[ServerProcess],
    tmp_path: Path,
    redis: Redis,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    stream, tag = f"events-{secrets.token_hex(4)}", unique("t")
    rules = STREAM_RULES.format(stream=stream, claim_idle="1.0")
    dsn = postgres_server.create_database(unique("db_"))
    prefix = unique("p")
    events, expected = stream_events(600, tag)
    await redis.xgroup_create(stream, "realtime", id="0", mkstream=True)
    last = await add_all(redis, stream, events)
    # An instance read ten entries, stored the notifications of six, and died before
    # acknowledging any: whoever claims them must not store those six again.
    ghost: Any = await redis.xreadgroup("realtime", "ghost", {stream: ">"}, count=10)
    taken = [(entry_id.decode(), json.loads(fields[b"data"])) for entry_id, fields in ghost[0][1]]
    setup = server_for(
        servers, tmp_path, redis_server.url, "", name="setup", dsn=dsn, prefix=prefix
    )
    async with Http(setup) as http:
        await follow_all(http, tag)
        for entry_id, event in taken[:6]:
            status, reply = await http.call(
                "POST", f"{API}/notifications", as_posted(event, entry_id)
            )
            assert status == 202 and reply["recipients"] >= 1, reply
    setup.kill()
    first = server_for(
        servers, tmp_path, redis_server.url, rules, name="one", dsn=dsn, prefix=prefix
    )
    async with Http(first) as http:
        await eventually(lambda: _above(notified(http), 50), timeout=DEADLINE)
    first.kill()  # for good: its pending entries wait for someone to claim them
    second = server_for(
        servers, tmp_path, redis_server.url, rules, name="two", dsn=dsn, prefix=prefix
    )
    await eventually(lambda: stream_done(redis, stream, last), timeout=DEADLINE * 3)
    consumers: Any = await redis.xinfo_consumers(stream, "realtime")
    assert {c["name"] for c in consumers} >= {b"ghost", b"one", b"two"}
    async with Http(second) as http:
        got = await received(http, {user for user, _, _ in expected})
    assert got == expected  # the ghost's six once, nothing lost


# Polling helpers ----------------------------------------------------------------------------


async def _is(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def _above(value: Any, threshold: float) -> bool:
    return bool(await value >= threshold)


async def _sum_is(values: list[Any], expected: float) -> bool:
    return bool(sum(await asyncio.gather(*values)) == expected)


async def _notified_at_least(http: Http, count: float) -> bool:
    return await notified(http) >= count


async def _has(http: Http, user: str, count: int) -> bool:
    return len(await inbox(http, user)) >= count


async def _metric_is(http: Http, name: str, expected: float, **labels: str) -> bool:
    return metric(await metrics(http), name, **labels) == expected
