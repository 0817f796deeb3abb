"""One suite for every Broker: in-process, Redis, and Redis Cluster (sharded pub/sub)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from protocol.outgoing import Message, MessagePush, NotificationItem, NotificationPush, TypingPush
from realtime.broker import Broker, BrokerUnavailable
from realtime.broker_memory import MemoryBroker
from realtime.config import load_settings
from realtime.events import Event, MembershipChange, UserDisconnect, pack_event, unpack_event
from realtime.redis_seams import create_redis_seams
from tests.services import RedisServer

BACKENDS = ["memory", "redis", "redis-cluster"]


class Recorder:
    """A BrokerHandler that remembers what reached it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []
        self.direct: list[bytes] = []
        self.resyncs = 0
        self.arrived = asyncio.Event()

    def on_event(self, room: str, event: Event) -> None:
        self.events.append((room, event))
        self.arrived.set()

    def on_resync(self) -> None:
        self.resyncs += 1

    def on_direct(self, data: bytes) -> None:
        self.direct.append(data)
        self.arrived.set()

    async def wait_for_direct(self, count: int, timeout: float = 5.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.direct) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.direct

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, Event]]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


def message(room: str, seq: int) -> MessagePush:
    return MessagePush(Message(room, seq, "u", f'{{"n":{seq}}}', 1000 + seq, None))


async def connected(broker: Broker, timeout: float = 15.0) -> None:
    """Wait until the broker's subscriptions are up (``ping`` says so)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await broker.ping()
                return
            except BrokerUnavailable:
                await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _settings(url: str) -> Any:
    return load_settings(
        None,
        {
            "REALTIME_AUTH_SECRET": "s" * 32,
            "REALTIME_BROKER_URL": url,
            "REALTIME_BROKER_TIMEOUT": "1",
        },
    )


@pytest.fixture(params=BACKENDS)
def make_broker(request: pytest.FixtureRequest) -> Callable[[str], Broker]:
    """Brokers of one backend; each call is another instance (or the same, in memory)."""
    kind = request.param
    if kind == "memory":
        shared = MemoryBroker()
        return lambda owner: shared
    if kind == "redis":
        url = request.getfixturevalue("redis").url
    else:
        url = request.getfixturevalue("redis_cluster").url

    def make(owner: str) -> Broker:
        broker, _ = create_redis_seams(_settings(url), owner)
        return broker

    return make


@pytest.fixture
async def pair(
    make_broker: Callable[[str], Broker],
) -> AsyncIterator[list[tuple[Broker, Recorder]]]:
    """Two instances' brokers, started (one broker twice for the in-process kind)."""
    started: list[tuple[Broker, Recorder]] = []
    for owner in ("a", "b"):
        broker = make_broker(owner)
        recorder = Recorder()
        if not any(broker is b for b, _ in started):
            await broker.start(recorder)
        else:
            recorder = started[0][1]
        started.append((broker, recorder))
    for broker, _ in started:
        await connected(broker)
    yield started
    for broker in {id(b): b for b, _ in started}.values():
        await broker.close()


async def test_a_subscriber_gets_events_of_its_rooms_only(
    pair: list[tuple[Broker, Recorder]],
) -> None:
    (a, _), (b, received) = pair
    await b.subscribe("swap:1")
    await asyncio.sleep(0.1)
    await a.publish("swap:2", message("swap:2", 1))
    await a.publish("swap:1", message("swap:1", 1))
    events = await received.wait_for(1)
    await asyncio.sleep(0.1)
    assert [room for room, _ in events] == ["swap:1"]
    assert events[0][1] == message("swap:1", 1)


async def test_a_publisher_gets_its_own_publication_once(
    pair: list[tuple[Broker, Recorder]],
) -> None:
    (a, received), _ = pair
    await a.subscribe("swap:own")
    await asyncio.sleep(0.1)
    await a.publish("swap:own", message("swap:own", 1))
    await received.wait_for(1)
    await asyncio.sleep(0.2)  # an echo through Redis would arrive by now
    assert [r for r, _ in received.events if r == "swap:own"] == ["swap:own"]


async def test_every_kind_of_event_crosses(pair: list[tuple[Broker, Recorder]]) -> None:
    (a, _), (b, received) = pair
    await b.subscribe("user:z")
    await asyncio.sleep(0.1)
    events: list[Event] = [
        message("user:z", 3),
        TypingPush("user:z", "u", True),
        NotificationPush(NotificationItem(9, "like", '{"p":1}', "v", 5, False)),
        UserDisconnect("z", "bye"),
        MembershipChange("z", "swap:9", True, "member_added"),
    ]
    for event in events:
        await a.publish("user:z", event)
    got = await received.wait_for(len(events))
    assert [event for _, event in got] == events


async def test_publish_many_reaches_many_rooms(pair: list[tuple[Broker, Recorder]]) -> None:
    (a, _), (b, received) = pair
    rooms = [f"user:m{i}" for i in range(50)]
    for room in rooms:
        await b.subscribe(room)
    await asyncio.sleep(0.2)
    await a.publish_many([(room, message(room, 1)) for room in rooms])
    got = await received.wait_for(50)
    assert sorted(room for room, _ in got) == sorted(rooms)


async def test_unsubscribe_stops_delivery(pair: list[tuple[Broker, Recorder]]) -> None:
    (a, _), (b, received) = pair
    await b.subscribe("swap:u")
    await b.unsubscribe("swap:u")
    await asyncio.sleep(0.1)
    await a.publish("swap:u", message("swap:u", 1))
    await asyncio.sleep(0.3)
    assert received.events == []


async def test_ping(pair: list[tuple[Broker, Recorder]]) -> None:
    for broker, _ in pair:
        await broker.ping()


# Direct messages: to the one instance at an address ------------------------------------


async def test_a_direct_message_reaches_the_instance_at_its_address(
    pair: list[tuple[Broker, Recorder]],
) -> None:
    (a, sent), (b, received) = pair
    if a is not b:
        assert a.address != b.address and a.shared and b.shared
    assert await a.send_direct(b.address, b"to b") is True
    assert await received.wait_for_direct(1) == [b"to b"]
    assert received.events == []
    if a is not b:
        assert sent.direct == []


async def test_an_instance_gets_its_own_direct_message_once(
    pair: list[tuple[Broker, Recorder]],
) -> None:
    (a, received), _ = pair
    assert await a.send_direct(a.address, b"me") is True
    assert received.direct == [b"me"]  # at once: no round trip through the broker
    await asyncio.sleep(0.2)  # an echo through Redis would arrive by now
    assert received.direct == [b"me"]


async def test_nobody_listens_at_an_unknown_address(pair: list[tuple[Broker, Recorder]]) -> None:
    (a, received), _ = pair
    assert await a.send_direct("nobody-listens-here", b"lost") is False
    await asyncio.sleep(0.1)
    assert received.direct == []


def test_the_memory_broker_reaches_no_other_instance() -> None:
    broker = MemoryBroker()
    assert broker.shared is False and broker.address
    assert MemoryBroker().address != broker.address


def test_events_pack_and_unpack() -> None:
    event = MembershipChange("u", "swap:1", False, "member_removed")
    assert unpack_event(pack_event("me", event)) == ("me", event)


# Redis only: outages -------------------------------------------------------------------


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_an_outage_fails_publish_then_heals_with_a_resync(own_redis: RedisServer) -> None:
    settings = _settings(own_redis.url)
    a, _ = create_redis_seams(settings, "a")
    b, _ = create_redis_seams(settings, "b")
    local, remote = Recorder(), Recorder()
    await a.start(local)
    await b.start(remote)
    try:
        await b.subscribe("swap:o")
        await a.subscribe("swap:o")
        await asyncio.sleep(0.3)
        before = (local.resyncs, remote.resyncs)
        own_redis.stop()
        with pytest.raises(BrokerUnavailable):
            await a.publish("swap:o", message("swap:o", 1))
        # delivered locally all the same: one instance keeps serving its clients
        assert [event for _, event in local.events] == [message("swap:o", 1)]
        await b.subscribe("swap:late")  # wanted while down: subscribed on reconnect
        own_redis.start()
        async with asyncio.timeout(15):
            while local.resyncs == before[0] or remote.resyncs == before[1]:
                await asyncio.sleep(0.05)
        await a.publish("swap:late", message("swap:late", 1))
        got = await remote.wait_for(1)
        assert got == [("swap:late", message("swap:late", 1))]
    finally:
        await a.close()
        await b.close()


async def test_direct_messages_fail_in_an_outage_heal_after_it_and_stop_with_the_instance(
    own_redis: RedisServer,
) -> None:
    settings = _settings(own_redis.url)
    a, _ = create_redis_seams(settings, "da")
    b, _ = create_redis_seams(settings, "db")
    received = Recorder()
    await a.start(Recorder())
    await b.start(received)
    try:
        await connected(a)
        await connected(b)
        own_redis.stop()
        with pytest.raises(BrokerUnavailable):
            await a.send_direct(b.address, b"in the outage")
        own_redis.start()
        # b subscribes its address again when it reconnects
        async with asyncio.timeout(15):
            while not await _sent(a, b.address, b"after"):
                await asyncio.sleep(0.05)
        assert (await received.wait_for_direct(1))[-1] == b"after"
        await b.close()
        assert await a.send_direct(b.address, b"to a closed instance") is False
    finally:
        await a.close()
        await b.close()


async def _sent(broker: Broker, address: str, data: bytes) -> bool:
    try:
        return await broker.send_direct(address, data)
    except BrokerUnavailable:
        return False
