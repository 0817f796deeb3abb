"""The hub in process: subscriptions against the in-memory broker, gap fills from a fake
store read, resync and catch-up. Connections write to fake transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import cast

import orjson
import pytest

from protocol import JSON
from protocol.outgoing import Message, MessagePush, TypingPush
from realtime.auth import Identity
from realtime.broker import BrokerUnavailable
from realtime.broker_memory import MemoryBroker
from realtime.config import DeliverySettings
from realtime.connection import Connection
from realtime.hub import FILL_BATCH, FILL_CONCURRENCY, Hub
from realtime.metrics import Metrics
from storage import StorageUnavailable

ROOM = "swap:1"
GAP_TIMEOUT = 0.01
WITHIN = 10.0  # a generous bound for what happens within milliseconds


class RecordingBroker(MemoryBroker):
    """The in-memory broker, remembering calls; the gates hold calls back."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.unsubscribe_gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    @property
    def subscribed(self) -> set[str]:
        return set(self._rooms)

    async def subscribe(self, room: str) -> None:
        self.calls.append(("subscribe", room))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        await super().subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        self.calls.append(("unsubscribe", room))
        if self.unsubscribe_gate is not None:
            await self.unsubscribe_gate.wait()
        await super().unsubscribe(room)


class FakeStore:
    """What the hub reads: messages per room; ``down`` makes reads fail."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.reads: list[tuple[str, int, int]] = []
        self.down = 0  # how many reads fail before they work again

    def put(self, room: str, *seqs: int) -> None:
        self.messages.setdefault(room, []).extend(message(room, s) for s in seqs)

    async def fetch(self, room: str, after: int, limit: int) -> list[Message]:
        self.reads.append((room, after, limit))
        if self.down:
            self.down -= 1
            raise StorageUnavailable("down")
        stored = sorted(self.messages.get(room, []), key=lambda m: m.seq or 0)
        return [m for m in stored if (m.seq or 0) > after][:limit]


class FakeTransport:
    def __init__(self) -> None:
        self.data = b""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.data += data


def message(room: str, seq: int) -> Message:
    return Message(room, seq, "a", f'{{"n":{seq}}}', 0)


def push(seq: int, room: str = ROOM) -> MessagePush:
    return MessagePush(message(room, seq))


def payloads(conn: Connection) -> list[dict[str, object]]:
    """Every message the connection's transport got (unmasked frames, short ones)."""
    data = cast(FakeTransport, conn._transport).data
    out = []
    while data:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        out.append(orjson.loads(data[start : start + length]))
        data = data[start + length :]
    return out


def seqs(conn: Connection) -> list[object]:
    return [p["seq"] for p in payloads(conn) if p.get("push") == "message"]


async def eventually(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WITHIN):
            while not check():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN}s: {what}") from None


@pytest.fixture
def broker() -> RecordingBroker:
    return RecordingBroker()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def hub(broker: RecordingBroker, store: FakeStore) -> AsyncIterator[Hub]:
    made = Hub(broker, store.fetch, DeliverySettings(gap_timeout=GAP_TIMEOUT), Metrics())
    yield made
    await made.close()


def connection(hub: Hub, user: str = "u") -> Connection:
    conn = Connection(
        user,
        cast(asyncio.Transport, FakeTransport()),
        JSON,
        1 << 20,
        lambda code, reason: None,
        hub.outbox,
    )
    conn.identity = Identity(user, 0)
    return conn


async def joined(hub: Hub, conn: Connection, name: str = ROOM, seq: int = 0) -> None:
    """What a join does: hold the room, attach at the store's seq, release."""
    room = await hub.hold(name)
    try:
        assert room.attach(conn, seq) == []
    finally:
        hub.release(room)


async def settled(hub: Hub) -> None:
    """Let broker calls chained in the background run, and pending writes flush."""
    for _ in range(5):
        await asyncio.sleep(0)


# Subscriptions ---------------------------------------------------------------------------


async def test_hold_subscribes_before_it_returns(hub: Hub, broker: RecordingBroker) -> None:
    broker.gate = asyncio.Event()
    holding = asyncio.create_task(hub.hold(ROOM))
    await settled(hub)
    assert not holding.done(), "held before the broker confirmed the subscription"
    assert broker.calls == [("subscribe", ROOM)]
    broker.gate.set()
    room = await holding
    assert ROOM in broker.subscribed and hub.rooms[ROOM] is room
    hub.release(room)


async def test_a_second_hold_waits_for_the_same_subscribe(
    hub: Hub, broker: RecordingBroker
) -> None:
    broker.gate = asyncio.Event()
    first = asyncio.create_task(hub.hold(ROOM))
    second = asyncio.create_task(hub.hold(ROOM))
    await settled(hub)
    assert not first.done() and not second.done()
    broker.gate.set()
    room1, room2 = await first, await second
    assert room1 is room2 and room1.holds == 2
    assert broker.calls == [("subscribe", ROOM)]
    hub.release(room1)
    hub.release(room2)


async def test_release_without_a_connection_drops_the_room_and_unsubscribes(
    hub: Hub, broker: RecordingBroker
) -> None:
    room = await hub.hold(ROOM)
    hub.release(room)
    assert ROOM not in hub.rooms
    await settled(hub)
    assert broker.calls == [("subscribe", ROOM), ("unsubscribe", ROOM)]
    assert broker.subscribed == set()


async def test_the_room_stays_while_a_connection_is_in_it(
    hub: Hub, broker: RecordingBroker
) -> None:
    a, b = connection(hub, "a"), connection(hub, "b")
    await joined(hub, a)
    await joined(hub, b)
    assert hub.detach(a, ROOM) is True
    assert hub.detach(a, ROOM) is False  # not in it any more
    await settled(hub)
    assert ROOM in hub.rooms and broker.subscribed == {ROOM}
    assert hub.detach(b, ROOM) is True
    assert ROOM not in hub.rooms
    await settled(hub)
    assert broker.calls == [("subscribe", ROOM), ("unsubscribe", ROOM)]
    assert hub.detach(b, "swap:none") is False


async def test_a_hold_keeps_a_room_its_last_connection_left(
    hub: Hub, broker: RecordingBroker
) -> None:
    a = connection(hub)
    await joined(hub, a)
    room = await hub.hold(ROOM)  # another join under way
    hub.detach(a, ROOM)
    assert hub.rooms.get(ROOM) is room
    hub.release(room)
    assert ROOM not in hub.rooms


async def test_leave_and_join_again_reach_the_broker_in_order(
    hub: Hub, broker: RecordingBroker
) -> None:
    """Subscribe and unsubscribe are chained per room: the last one wins."""
    first = await hub.hold(ROOM)
    broker.unsubscribe_gate = asyncio.Event()
    hub.release(first)  # the room goes: an unsubscribe, slow to finish
    again = asyncio.create_task(hub.hold(ROOM))  # a join right after
    await settled(hub)
    assert broker.calls == [("subscribe", ROOM), ("unsubscribe", ROOM)]
    assert not again.done(), "the join did not wait for its subscribe"
    broker.unsubscribe_gate.set()
    second = await again
    assert second is not first and hub.rooms[ROOM] is second
    assert broker.calls == [("subscribe", ROOM), ("unsubscribe", ROOM), ("subscribe", ROOM)]
    assert broker.subscribed == {ROOM}
    hub.release(second)


async def test_a_failed_subscribe_fails_the_hold_and_drops_the_room(
    hub: Hub, broker: RecordingBroker
) -> None:
    broker.fail = BrokerUnavailable("redis is down")
    with pytest.raises(BrokerUnavailable):
        await hub.hold(ROOM)
    assert ROOM not in hub.rooms
    await settled(hub)
    assert broker.calls == [("subscribe", ROOM), ("unsubscribe", ROOM)]
    broker.fail = None
    room = await hub.hold(ROOM)
    assert broker.subscribed == {ROOM}
    hub.release(room)


# Delivery and gap fills -------------------------------------------------------------------


async def test_messages_in_order_go_straight_through(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    for seq in (1, 2, 3):
        hub.offer(ROOM, push(seq))
    await settled(hub)
    assert seqs(a) == [1, 2, 3]
    assert store.reads == []
    hub.offer("swap:elsewhere", push(1, "swap:elsewhere"))  # no such room here: ignored


async def test_a_gap_is_filled_from_the_store_after_the_gap_timeout(
    hub: Hub, store: FakeStore
) -> None:
    a = connection(hub)
    await joined(hub, a)
    hub.offer(ROOM, push(1))
    store.put(ROOM, 1, 2, 3, 4)
    hub.offer(ROOM, push(4))  # 2 and 3 lost on the way
    await settled(hub)
    assert seqs(a) == [1]
    await eventually(lambda: seqs(a) == [1, 2, 3, 4], "the gap filled")
    assert store.reads == [(ROOM, 1, FILL_BATCH)]


async def test_a_gap_that_closes_by_itself_reads_nothing(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    hub.offer(ROOM, push(2))
    hub.offer(ROOM, push(1))  # late, not lost
    await asyncio.sleep(GAP_TIMEOUT * 5)
    assert seqs(a) == [1, 2]
    # the timer may have fired, but finds the room in order
    assert all(after >= 2 for _, after, _ in store.reads)


async def test_a_failed_fill_is_retried_until_the_store_answers(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    store.put(ROOM, 1, 2)
    store.down = 2
    hub.offer(ROOM, push(2))
    await eventually(lambda: seqs(a) == [1, 2], "the gap filled once the store is back")
    assert len(store.reads) == 3


async def test_what_retention_removed_is_skipped(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    store.put(ROOM, 6)  # 1 to 5 are gone from the store
    hub.offer(ROOM, push(6))
    await eventually(lambda: seqs(a) == [6], "the room moved past what is gone")
    hub.offer(ROOM, push(7))
    await settled(hub)
    assert seqs(a) == [6, 7]


async def test_after_a_retention_gap_what_the_store_still_has_is_delivered(
    hub: Hub, store: FakeStore
) -> None:
    a = connection(hub)
    await joined(hub, a)
    store.put(ROOM, 5, 6)  # 1 to 4 are gone from the store
    hub.offer(ROOM, push(6))
    await eventually(lambda: 6 in seqs(a), "the room moved past what is gone")
    assert seqs(a) == [5, 6]


async def test_a_long_gap_is_read_in_batches(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    total = FILL_BATCH + 20
    store.put(ROOM, *range(1, total + 1))
    hub.offer(ROOM, push(total))
    await eventually(lambda: len(seqs(a)) == total, "every missed message")
    assert seqs(a) == list(range(1, total + 1))
    assert [after for _, after, _ in store.reads] == [0, FILL_BATCH]


async def test_resync_reads_every_sequenced_room_at_once(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a, ROOM)
    await joined(hub, a, "swap:2")
    await joined(hub, a, "swap:3", seq=7)
    assert sorted(hub.sequenced_rooms()) == [ROOM, "swap:2", "swap:3"]
    store.put(ROOM, 1, 2)  # published while the broker was away
    store.put("swap:3", 8)
    hub.resync()
    await eventually(lambda: len(store.reads) == 3, "a read per room")
    await eventually(lambda: seqs(a) == [1, 2, 8], "what the broker lost")
    assert sorted(store.reads) == [
        (ROOM, 0, FILL_BATCH),
        ("swap:2", 0, FILL_BATCH),
        ("swap:3", 7, FILL_BATCH),
    ]


async def test_catch_up_reads_only_rooms_that_are_behind(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a, ROOM, seq=3)
    await joined(hub, a, "swap:2", seq=5)
    store.put(ROOM, 4)
    hub.catch_up({ROOM: 4, "swap:2": 5, "swap:unknown": 9})
    await eventually(lambda: seqs(a) == [4], "the missed tail")
    await asyncio.sleep(GAP_TIMEOUT * 5)
    assert store.reads == [(ROOM, 3, FILL_BATCH)]


async def test_a_room_dropped_during_its_fill_takes_nothing(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    await joined(hub, a)
    store.put(ROOM, 1, 2)
    hub.offer(ROOM, push(2))
    hub.detach(a, ROOM)  # gone before the gap timeout
    await asyncio.sleep(GAP_TIMEOUT * 5)
    assert seqs(a) == [] and ROOM not in hub.rooms
    assert store.reads == []


async def test_other_pushes_reach_the_room(hub: Hub) -> None:
    a, b = connection(hub, "a"), connection(hub, "b")
    await joined(hub, a)
    await joined(hub, b)
    hub.deliver(ROOM, TypingPush(ROOM, "a", True), skip_user="a")
    hub.deliver("swap:none", TypingPush("swap:none", "a", True))
    await settled(hub)
    assert payloads(a) == []
    assert [p["push"] for p in payloads(b)] == ["typing"]


async def test_close_cancels_pending_fills_and_broker_calls(
    broker: RecordingBroker, store: FakeStore
) -> None:
    hub = Hub(broker, store.fetch, DeliverySettings(gap_timeout=60), Metrics())
    a = connection(hub)
    await joined(hub, a)
    hub.offer(ROOM, push(3))  # a fill in 60 s
    broker.gate = asyncio.Event()
    holding = asyncio.create_task(hub.hold("swap:2"))  # a subscribe that never returns
    await settled(hub)
    await hub.close()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert store.reads == []


# Connections and users ---------------------------------------------------------------------


async def test_connections_and_users(hub: Hub) -> None:
    a1, a2, b = connection(hub, "a"), connection(hub, "a"), connection(hub, "b")
    for conn in (a1, a2, b):
        hub.add_connection(conn)
    assert [hub.add_user(a1), hub.add_user(a2), hub.add_user(b)] == [1, 2, 1]
    assert set(hub.user_connections("a")) == {a1, a2}
    waiting = asyncio.create_task(hub.wait_empty())
    hub.remove_connection(a1)
    hub.remove_connection(b)
    await settled(hub)
    assert not waiting.done()
    assert hub.user_connections("a") == [a2] and hub.user_connections("b") == []
    hub.remove_connection(a2)
    async with asyncio.timeout(WITHIN):
        await waiting
    assert hub.users == {} and hub.connections == set()


async def test_a_resync_of_many_rooms_reads_a_few_at_a_time(hub: Hub, store: FakeStore) -> None:
    a = connection(hub)
    rooms = [f"swap:{i}" for i in range(3 * FILL_CONCURRENCY)]
    for room in rooms:
        await joined(hub, a, room)
        store.put(room, 1)
    gate = asyncio.Event()
    reading = most = 0
    fetch = store.fetch

    async def held_fetch(room: str, after: int, limit: int) -> list[Message]:
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        try:
            await gate.wait()
            return await fetch(room, after, limit)
        finally:
            reading -= 1

    hub._fetch = held_fetch
    hub.resync()
    await eventually(lambda: reading == FILL_CONCURRENCY, "the first reads under way")
    await asyncio.sleep(GAP_TIMEOUT * 5)  # the others wait for a slot meanwhile
    assert reading == FILL_CONCURRENCY
    gate.set()
    await eventually(lambda: len(seqs(a)) == len(rooms), "every room's missed message")
    assert most == FILL_CONCURRENCY
