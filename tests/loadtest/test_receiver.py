"""The subscriber's hot loop counts exactly what the slow path would: seqs (lost,
duplicated, reordered), latencies into the same buckets, whatever the reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from loadtest.receiver import CountingConnection, Receiver, SendTimes
from loadtest.sioclient import IGNORED as SOCKETIO_IGNORED
from loadtest.stats import Histogram, SeqCheck
from loadtest.subscribers import (
    realtime_prefix,
    realtime_recorder,
    socketio_prefixes,
)
from loadtest.wsclient import RealtimeClient
from loadtest.wsframes import PONG, TEXT

from .support import Subscribers, opened, server_frame, transport_of

NOW = 1_763_900_000_000_000_000
ROOM = "swap:lt-test"
LATENCIES = [0, 1, 5, 127, 128, 129, 255, 256, 1000, 4321, 123_456, 9_999_999, 10**11]


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: NOW)


def push(seq: int, micros: int, room: str = ROOM, **extra: object) -> bytes:
    body = orjson.Fragment(b'{"t":%d,"p":"xxxxxxxxxx"}' % (NOW - micros * 1000))
    message = {"push": "message", "room": room, "seq": seq, "user": "pub", "body": body}
    return orjson.dumps({**message, "ts": 1, **extra})


Make = Callable[..., Subscribers]


@pytest.fixture
def subscribers() -> Iterator[Make]:
    """``subscribers(latency, prefix)``: a receiver and its subscribers, closed after."""
    made: list[Subscribers] = []

    def make(
        latency: Histogram, prefix: bytes | tuple[bytes, ...] = b"", skip: tuple[bytes, ...] = ()
    ) -> Subscribers:
        receiver = Receiver(latency, SendTimes(), prefix or realtime_prefix(ROOM), skip)
        made.append(Subscribers(receiver))
        return made[-1]

    yield make
    for group in made:
        group.close()


def expected(latencies: list[int]) -> Histogram:
    histogram = Histogram()
    for micros in latencies:
        histogram.add(micros)
    return histogram


SEQS = [1, 2, 3, 5, 4, 4, 7, 2, 10, 9, 8]


def latency_of(seq: int) -> int:
    """A message's latency (the same message every time its seq is delivered)."""
    return LATENCIES[seq % len(LATENCIES)]


def frames_of(seqs: list[int]) -> bytes:
    return b"".join(server_frame(TEXT, push(seq, latency_of(seq))) for seq in seqs)


def reference_check(seqs: list[int]) -> SeqCheck:
    check = SeqCheck()
    for seq in seqs:
        check.add(seq)
    return check


@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
async def test_counts_like_the_reference(chunk: int | None, subscribers: Make) -> None:
    latency = Histogram()
    group = subscribers(latency)
    connection = group.add(room=ROOM)
    data = frames_of(SEQS)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        group.send(0, piece)
    reference = reference_check(SEQS)
    assert connection.check == reference
    assert connection.check.lost(12) == 3
    want = expected([latency_of(seq) for seq in SEQS])
    assert latency == want


async def test_subscribers_share_send_times_and_histogram(subscribers: Make) -> None:
    latency = Histogram()
    group = subscribers(latency)
    connections = [group.add(room=ROOM) for _ in range(3)]
    data = frames_of(list(range(1, 40)))
    for index, connection in enumerate(connections):
        group.send(index, data)
        assert connection.check.last == 39 and not connection.check.missing
    assert latency.total == 3 * 39
    want = expected([latency_of(seq) for seq in range(1, 40)] * 3)
    assert latency == want


async def test_unusual_frames_take_the_slow_path_and_count_the_same(subscribers: Make) -> None:
    latency = Histogram()
    group = subscribers(latency)
    connection = group.add(room=ROOM)
    packed = push(1, 10) + b"\n" + push(2, 20)
    reordered_keys = orjson.dumps(
        {
            "push": "message",
            "body": orjson.Fragment(b'{"t":%d}' % (NOW - 30_000)),
            "room": ROOM,
            "seq": 3,
        }
    )
    other_room = push(4, 40, room="swap:other")
    presence = b'{"push":"presence","room":"swap:lt-test","user":"u","event":"join"}'
    fragmented = push(4, 50)
    data = (
        server_frame(TEXT, packed)
        + server_frame(TEXT, reordered_keys)
        + server_frame(TEXT, other_room)
        + server_frame(TEXT, presence)
        + server_frame(TEXT, fragmented[:20], fin=False)
        + server_frame(0, fragmented[20:])
        + server_frame(TEXT, push(5, 60))
    )
    group.send(0, data)
    assert connection.check == SeqCheck(last=5)
    assert latency == expected([10, 20, 30, 50, 60])


async def test_a_packed_frame_does_not_use_a_cached_send_time(subscribers: Make) -> None:
    latency = Histogram()
    group = subscribers(latency)
    group.add(room=ROOM)
    second = group.add(room=ROOM)
    group.send(0, server_frame(TEXT, push(1, 100)))
    group.send(1, server_frame(TEXT, push(1, 100) + b"\n" + push(2, 200)))
    assert second.check.last == 2
    assert latency == expected([100, 100, 200])


async def test_messages_before_start_count_after_the_joins_seq() -> None:
    latency = Histogram()
    connection = opened(CountingConnection)
    client = RealtimeClient(connection)
    client.on_push = realtime_recorder(connection, ROOM)
    connection.data_received(frames_of([7, 8, 9]))
    assert latency.total == 0
    connection.start(latency, 7)
    connection.data_received(frames_of([10]))
    assert connection.check == SeqCheck(last=10)
    assert latency.total == 3  # 8, 9, 10


async def test_socketio_messages_and_pings(subscribers: Make) -> None:
    latency = Histogram()
    group = subscribers(latency, socketio_prefixes(ROOM), SOCKETIO_IGNORED)
    connection = group.add(client="socketio")
    room = orjson.dumps(ROOM)

    def event(seq: int, micros: int, push: bytes = b"") -> bytes:
        body = b'{"t":%d,"p":"x"}' % (NOW - micros * 1000)
        data = b'%s"room":%s,"seq":%d,"user":"u","body":%s,"ts":1' % (push, room, seq, body)
        return server_frame(TEXT, b'42["message",{%s}]' % data)

    # The push's fields (with or without "push"), the seq first, or spaced out: all counted.
    pushed = event(3, 30, b'"push":"message",')
    old = server_frame(TEXT, b'42["message",{"seq":4,"body":{"t":%d}}]' % (NOW - 40_000))
    spaced = server_frame(TEXT, b'42["message", {"body": {"t": %d}, "seq": 5}]' % (NOW - 5_000_000))
    # realtime's /socket.io/ follows a write with the connection's recovery offset:
    # dropped unread, never handed to the generic path.
    offset = server_frame(TEXT, b'42["offset","%s=2"]' % ROOM.encode())
    generic: list[bytes] = []
    frame = connection.frame

    def spy(first: int, payload: bytes) -> bool:
        generic.append(payload)
        return frame(first, payload)

    connection.frame = spy  # type: ignore[method-assign]
    group.send(0, event(1, 10) + server_frame(TEXT, b"2") + event(2, 20) + offset)
    group.send(0, pushed + old + spaced + offset)
    assert not [payload for payload in generic if b"offset" in payload]
    assert connection.check == SeqCheck(last=5)
    assert latency == expected([10, 20, 30, 40, 5000])
    assert transport_of(connection).take() == [(TEXT, b"3")]
    assert PONG not in [op for op, _ in transport_of(connection).take()]


async def test_a_real_clock_gives_sane_latencies(
    monkeypatch: pytest.MonkeyPatch, subscribers: Make
) -> None:
    monkeypatch.undo()
    latency = Histogram()
    group = subscribers(latency)
    group.add(room=ROOM)
    body = orjson.Fragment(b'{"t":%d,"p":""}' % time.time_ns())
    frame = orjson.dumps({"push": "message", "room": ROOM, "seq": 1, "body": body})
    group.send(0, server_frame(TEXT, frame))
    assert latency.total == 1 and latency.maximum < 1_000_000


async def test_a_read_interval_lets_frames_queue_up(
    subscribers: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()
    latency = Histogram()
    group = subscribers(latency)
    group.add(room=ROOM)
    group.receiver.attach(asyncio.get_running_loop(), interval=0.3)

    def write(seq: int) -> None:
        body = orjson.Fragment(b'{"t":%d,"p":""}' % time.time_ns())
        message = orjson.dumps({"push": "message", "room": ROOM, "seq": seq, "body": body})
        group.write(0, server_frame(TEXT, message))

    write(1)
    await asyncio.sleep(0.1)
    assert latency.total == 1 and group.receiver.reads == 1  # read at once
    write(2)
    write(3)
    await asyncio.sleep(0.05)
    assert latency.total == 1  # the reader waits out the interval
    await asyncio.sleep(0.4)
    assert latency.total == 3 and group.receiver.reads == 2  # both in one read
