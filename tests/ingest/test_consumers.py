"""The ingest consumers in process, against a real Redis, with a notifier that
records what it is asked (the store's part is tested end to end)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from protocol import CommandError, ErrorCode
from realtime.config import Settings, load_settings
from realtime.ingest.handler import Backoff
from realtime.ingest.pubsub import QUEUE_SIZE
from realtime.ingest.service import Ingest
from tests.services import RedisServer

TIMEOUT = 1.0  # broker.timeout: the pub/sub lease lasts 3 s
DEADLINE = 30.0


class Recorder:
    """A ``Notifier`` that remembers each call; ``fail`` may raise instead."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail: Callable[[dict[str, Any]], None] | None = None
        self.gate: asyncio.Event | None = None  # while set and not open, calls wait
        self.entered = 0

    async def notify(self, **call: Any) -> int:
        self.entered += 1
        if self.fail is not None:
            self.fail(call)
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(call)
        return len(call["to"]) if call["to"] is not None else 3

    def dedupe_keys(self) -> list[str]:
        return [call["dedupe_key"] for call in self.calls]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def settings(tmp_path: Path, url: str, rules: str, prefix: str | None = None) -> Settings:
    path = tmp_path / f"{secrets.token_hex(4)}.toml"
    path.write_text(rules + "\n[notifications.types.post_created]\n")
    env = {
        "REALTIME_AUTH_SECRET": "s" * 32,
        "REALTIME_BROKER_URL": url,
        "REALTIME_BROKER_TIMEOUT": str(TIMEOUT),
        "REALTIME_BROKER_PREFIX": prefix or secrets.token_hex(4),
    }
    return load_settings(path, env)


@pytest.fixture
def started() -> Iterator[list[Ingest]]:
    ingests: list[Ingest] = []
    yield ingests
    assert not ingests, "close every Ingest in the test (the fixture cannot await)"


async def start(settings: Settings, notifier: Recorder, consumer: str = "a") -> Ingest:
    ingest = Ingest(settings, notifier, consumer=consumer, registry=CollectorRegistry())
    ingest.start()
    return ingest


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def count(ingest: Ingest, rule: str, outcome: str) -> float:
    value = ingest.metrics.events.labels(rule, outcome)._value.get()
    return float(value)


def consuming(ingest: Ingest) -> bool:
    return all(
        ingest.metrics.connected.labels(c.source)._value.get() == 1 for c in ingest.consumers
    )


def stream_rules(stream: str, **extra: str) -> str:
    settings = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f"""
[[ingest]]
name = "follows"
source = "stream"
stream = "{stream}"
start = "0"
{settings}
match = {{ event = "user.followed" }}
type = "user_followed"
recipients = {{ to = "followed_id" }}
actor = "follower_id"
data = ["follower_id"]

[[ingest]]
name = "likes"
source = "stream"
stream = "{stream}"
start = "0"
{settings}
match = {{ event = "post.liked" }}
type = "post_liked"
recipients = {{ to = "post.author_id" }}
actor = "user_id"
exclude_actor = true
"""


async def add(redis: Redis, stream: str, fields: dict[Any, Any]) -> str:
    entry_id: Any = await redis.xadd(stream, fields)
    return str(entry_id.decode())


def followed(n: int) -> dict[Any, Any]:
    event = {"event": "user.followed", "follower_id": f"f{n}", "followed_id": f"u{n}"}
    return {b"data": orjson.dumps(event)}


async def pending(redis: Redis, stream: str) -> int:
    summary = await redis.xpending(stream, "realtime")
    return int(summary["pending"])


# Streams -------------------------------------------------------------------------------


async def test_stream_entries_become_notifications_keyed_by_entry_and_are_acknowledged(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    ids = [await add(redis, stream, followed(n)) for n in range(3)]
    liked = {"event": "post.liked", "post": {"author_id": "bob"}, "user_id": "amy"}
    ids.append(await add(redis, stream, {b"data": orjson.dumps(liked)}))
    ids.append(await add(redis, stream, {b"event": b"post.shared"}))  # no rule
    ids.append(await add(redis, stream, {b"data": b"{not json"}))  # poison
    self_like = {**liked, "user_id": "bob"}
    ids.append(await add(redis, stream, {b"data": orjson.dumps(self_like)}))
    no_author = {"event": "post.liked", "post": {}, "user_id": "amy"}
    ids.append(await add(redis, stream, {b"data": orjson.dumps(no_author)}))
    notifier = Recorder()
    ingest = await start(settings(tmp_path, redis_server.url, stream_rules(stream)), notifier)
    try:
        await until(lambda: len(notifier.calls) == 4, "four notifications")
        await until(lambda: count(ingest, "likes", "skipped") == 2, "poison counted")
        assert notifier.dedupe_keys() == [f"follows:{i}" for i in ids[:3]] + [f"likes:{ids[3]}"]
        assert notifier.calls[0] == {
            "to": ("u0",),
            "followers_of": None,
            "type": "user_followed",
            "data_json": '{"follower_id":"f0"}',
            "actor": "f0",
            "dedupe_key": f"follows:{ids[0]}",
        }
        assert notifier.calls[3]["to"] == ("bob",)
        assert notifier.calls[3]["actor"] == "amy"
        # every entry acknowledged, the poison too: nothing comes back
        await until_async(pending_is(redis, stream, 0))
        assert [
            count(ingest, "follows", o) for o in ("matched", "notified", "skipped", "failed")
        ] == [
            3,
            3,
            1,  # the entry that is not JSON counts for every rule of the stream
            0,
        ]
        # the self-like matched and reached nobody; the one without an author was skipped
        assert [
            count(ingest, "likes", o) for o in ("matched", "notified", "skipped", "failed")
        ] == [
            2,
            2,
            2,
            0,
        ]
        assert ingest.metrics.recipients.labels("follows")._value.get() == 3
        # new entries are read as they come
        later = await add(redis, stream, followed(9))
        await until(lambda: len(notifier.calls) == 5, "the later entry")
        assert notifier.dedupe_keys()[-1] == f"follows:{later}"
    finally:
        await ingest.close()


async def until_async(check: Callable[[], Any], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def pending_is(redis: Redis, stream: str, expected: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await pending(redis, stream) == expected

    return check


async def test_an_entry_whose_consumer_dies_after_the_commit_comes_back_with_the_same_key(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    """Killed between storing and XACK: redelivered to the same consumer, same dedupe_key."""
    stream = f"events-{secrets.token_hex(4)}"
    ids = [await add(redis, stream, followed(n)) for n in range(5)]
    # One at a time: the entries after the stalled one wait behind it.
    config = settings(tmp_path, redis_server.url, stream_rules(stream, concurrency="1"))
    notifier = Recorder()
    committed = asyncio.Event()
    never = asyncio.Event()

    def stall_third(call: dict[str, Any]) -> None:
        if call["dedupe_key"] == f"follows:{ids[2]}" and not committed.is_set():
            notifier.calls.append(call)  # stored ...
            committed.set()
            notifier.gate = never  # ... and dies before the XACK

    notifier.fail = stall_third
    first = await start(config, notifier, consumer="a")
    try:
        await asyncio.wait_for(committed.wait(), DEADLINE)
    finally:
        await first.close()
    assert await pending(redis, stream) == 3  # the third one and the two after it
    notifier.gate = None
    again = await start(config, notifier, consumer="a")
    try:
        await until_async(pending_is(redis, stream, 0))
    finally:
        await again.close()
    keys = notifier.dedupe_keys()
    assert keys == [f"follows:{i}" for i in (ids[0], ids[1], ids[2], ids[2], ids[3], ids[4])]


async def test_entries_left_pending_by_a_dead_consumer_are_claimed(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    config = settings(tmp_path, redis_server.url, stream_rules(stream, claim_idle="1.0"))
    await redis.xgroup_create(stream, "realtime", id="0", mkstream=True)
    ids = [await add(redis, stream, followed(n)) for n in range(4)]
    # an instance read them and died
    taken: Any = await redis.xreadgroup("realtime", "dead", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 4
    notifier = Recorder()
    ingest = await start(config, notifier, consumer="b")
    try:
        await until(lambda: len(notifier.calls) == 4, "the dead consumer's entries")
        assert sorted(notifier.dedupe_keys()) == sorted(f"follows:{i}" for i in ids)
        await until_async(pending_is(redis, stream, 0))
    finally:
        await ingest.close()


async def test_entries_of_a_read_are_handled_concurrency_at_a_time(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    ids = [await add(redis, stream, followed(n)) for n in range(10)]
    notifier = Recorder()
    notifier.gate = asyncio.Event()  # every store call waits for a commit
    config = settings(tmp_path, redis_server.url, stream_rules(stream, concurrency="4"))
    ingest = await start(config, notifier)
    try:
        await until(lambda: notifier.entered == 4, "four entries in flight")
        await asyncio.sleep(0.2)
        assert notifier.entered == 4  # not a fifth while they wait
        notifier.gate.set()
        await until(lambda: len(notifier.calls) == 10, "all ten")
        assert sorted(notifier.dedupe_keys()) == sorted(f"follows:{i}" for i in ids)
        await until_async(pending_is(redis, stream, 0))
    finally:
        await ingest.close()


async def test_a_store_outage_leaves_the_entry_pending_and_it_is_tried_again(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    ids = [await add(redis, stream, followed(n)) for n in range(2)]
    notifier = Recorder()
    refusals = 0

    def storage_down(call: dict[str, Any]) -> None:
        nonlocal refusals
        if refusals < 2:
            refusals += 1
            raise CommandError(ErrorCode.UNAVAILABLE, "storage unavailable: test")

    notifier.fail = storage_down
    ingest = await start(settings(tmp_path, redis_server.url, stream_rules(stream)), notifier)
    try:
        await until(lambda: len(notifier.calls) == 2, "both entries once the store is back")
        assert notifier.dedupe_keys() == [f"follows:{i}" for i in ids]  # in order, each once
        assert count(ingest, "follows", "failed") == 2
        assert count(ingest, "follows", "notified") == 2
        await until_async(pending_is(redis, stream, 0))
    finally:
        await ingest.close()


@pytest.mark.parametrize(
    "error",
    [CommandError(ErrorCode.BAD_REQUEST, "unknown notification type"), RuntimeError("a bug")],
)
async def test_an_entry_the_notifier_refuses_for_good_is_acknowledged_and_counted(
    tmp_path: Path, redis: Redis, redis_server: RedisServer, error: Exception
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    first = await add(redis, stream, followed(0))
    second = await add(redis, stream, followed(1))
    notifier = Recorder()

    def refuse_first(call: dict[str, Any]) -> None:
        if call["dedupe_key"] == f"follows:{first}":
            raise error

    notifier.fail = refuse_first
    ingest = await start(settings(tmp_path, redis_server.url, stream_rules(stream)), notifier)
    try:
        await until(lambda: len(notifier.calls) == 1, "the second entry")
        assert notifier.dedupe_keys() == [f"follows:{second}"]
        await until_async(pending_is(redis, stream, 0))
        assert count(ingest, "follows", "failed") == 1
    finally:
        await ingest.close()


async def test_entries_trimmed_while_pending_are_acknowledged(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    await redis.xgroup_create(stream, "realtime", id="0", mkstream=True)
    gone = await add(redis, stream, followed(0))
    kept = await add(redis, stream, followed(1))
    await redis.xreadgroup("realtime", "a", {stream: ">"}, count=10)
    await redis.xdel(stream, gone)
    notifier = Recorder()
    ingest = await start(settings(tmp_path, redis_server.url, stream_rules(stream)), notifier)
    try:
        await until(lambda: len(notifier.calls) == 1, "the entry still there")
        assert notifier.dedupe_keys() == [f"follows:{kept}"]
        await until_async(pending_is(redis, stream, 0))
    finally:
        await ingest.close()


# Pub/sub -------------------------------------------------------------------------------

PUBSUB_RULES = """
[[ingest]]
source = "pubsub"
channel = "post.created"
type = "post_created"
recipients = { followers_of = "post.author_id" }
actor = "post.author_id"
data = { post_id = "post.id" }

[[ingest]]
source = "pubsub"
pattern = "post.l*"
match = { event = "post.liked" }
type = "post_liked"
recipients = { to = "post.author_id" }
actor = "user_id"
"""


async def publish_until(
    redis: Redis, channel: str, event: dict[str, Any], done: Callable[[], bool]
) -> None:
    """Publish (again, at most once a second) until ``done``: a subscription may be
    in the making."""
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel} never arrived")
        await redis.publish(channel, orjson.dumps(event))
        try:
            await until(done, "", timeout=1.0)
        except AssertionError:
            continue


async def test_pubsub_channels_and_patterns_make_one_notification_per_event_across_instances(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    config = settings(tmp_path, redis_server.url, PUBSUB_RULES)
    notifiers = [Recorder(), Recorder()]
    ingests = [await start(config, n, consumer=c) for n, c in zip(notifiers, "ab", strict=True)]
    try:
        await until(lambda: sum(consuming(i) for i in ingests) == 1, "one instance subscribed")
        holder = next(i for i, ingest in enumerate(ingests) if consuming(ingest))
        created = {"post": {"id": 7, "author_id": "bob"}}
        await publish_until(redis, "post.created", created, lambda: bool(notifiers[holder].calls))
        liked = {"event": "post.liked", "post": {"id": 7, "author_id": "bob"}, "user_id": "amy"}
        await redis.publish("post.liked", orjson.dumps(liked))
        await redis.publish("post.liked", b"[not an object]")
        await redis.publish("post.lurked", orjson.dumps({"event": "other"}))
        await until(lambda: len(notifiers[holder].calls) >= 2, "the like")
        await until(lambda: count(ingests[holder], "post_liked", "skipped") == 1, "the poison")
        calls = notifiers[holder].calls
        assert calls[-1] == {
            "to": ("bob",),
            "followers_of": None,
            "type": "post_liked",
            "data_json": "null",
            "actor": "amy",
            "dedupe_key": None,
        }
        assert {c["followers_of"] for c in calls[:-1]} == {"bob"}  # maybe published twice
        assert notifiers[1 - holder].calls == []
        assert count(ingests[holder], "post_liked", "matched") == 1
        # the holder shuts down: the other one takes the lease and subscribes
        await ingests[holder].close()
        other = ingests[1 - holder]
        await until(lambda: consuming(other), "the other instance subscribed")
        await publish_until(redis, "post.liked", liked, lambda: bool(notifiers[1 - holder].calls))
    finally:
        for ingest in ingests:
            await ingest.close()


async def test_pubsub_events_beyond_the_queue_are_dropped_and_counted(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    config = settings(tmp_path, redis_server.url, PUBSUB_RULES)
    notifier = Recorder()
    notifier.gate = asyncio.Event()  # the store is slow: nothing is done until it opens
    ingest = await start(config, notifier)
    try:
        await until(lambda: consuming(ingest), "subscribed")
        liked = {"event": "post.liked", "post": {"id": 7, "author_id": "bob"}, "user_id": "amy"}
        await publish_until(redis, "post.liked", liked, lambda: notifier.entered == 1)
        waiting = count(ingest, "post_liked", "matched") - 1  # published again while slow
        extra = 9
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(QUEUE_SIZE + extra):
                pipe.publish("post.liked", orjson.dumps(liked))
            await pipe.execute()
        total = 1 + waiting + QUEUE_SIZE + extra
        await until(lambda: count(ingest, "post_liked", "matched") == total, "every event read")
        # one is with the notifier, QUEUE_SIZE wait, the rest were dropped
        assert count(ingest, "post_liked", "failed") == waiting + extra
        notifier.gate.set()
        await until(lambda: len(notifier.calls) == QUEUE_SIZE + 1, "the queued ones")
    finally:
        await ingest.close()


# Redis outages -------------------------------------------------------------------------


async def test_both_sources_ride_out_a_redis_restart_without_a_busy_loop(tmp_path: Path) -> None:
    stream = f"events-{secrets.token_hex(4)}"
    with RedisServer() as own:
        config = settings(tmp_path, own.url, PUBSUB_RULES + stream_rules(stream))
        notifier = Recorder()
        ingest = await start(config, notifier)
        client = Redis.from_url(own.url)
        try:
            await until(lambda: consuming(ingest), "both sources consuming")
            own.stop()
            await until(
                lambda: (
                    not any(
                        ingest.metrics.connected.labels(c.source)._value.get()
                        for c in ingest.consumers
                    )
                ),
                "both sources noticed",
            )
            errors_at = {
                c.source: ingest.metrics.redis_errors.labels(c.source)._value.get()
                for c in ingest.consumers
            }
            await asyncio.sleep(3)  # Redis stays down; what matters is how often they retry
            for consumer in ingest.consumers:
                retries = ingest.metrics.redis_errors.labels(consumer.source)._value.get()
                # backoff from 0.5 s doubling: a handful; a busy loop would be thousands
                assert retries - errors_at[consumer.source] <= 8, consumer.source
            own.start()
            await until(lambda: consuming(ingest), "both sources back")
            entry = await add(client, stream, followed(1))
            await until(lambda: f"follows:{entry}" in notifier.dedupe_keys(), "the stream entry")
            created = {"post": {"id": 1, "author_id": "bob"}}
            await publish_until(
                client,
                "post.created",
                created,
                lambda: any(c["followers_of"] == "bob" for c in notifier.calls),
            )
        finally:
            await ingest.close()
            await client.aclose()


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 10.0)
    delays = [backoff.next() for _ in range(8)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 8, 10, 10, 10], strict=True):
        assert base * 0.5 <= delay <= base * 1.5
    backoff.reset()
    assert backoff.next() <= 0.75
