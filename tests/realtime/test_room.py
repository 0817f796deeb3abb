"""Room ordering rules, without a loop or a socket: fake connections record frames."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgpack
import orjson

from protocol import JSON, MSGPACK, Codec
from protocol.outgoing import Message, MessagePush, TypingPush
from realtime.auth import Identity
from realtime.connection import Connection, Outbox
from realtime.room import Room as RealRoom


class FakeTransport:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.buffered = 0

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.frames.append(data)


CLOSES: dict[str, list[tuple[int, str]]] = {}
CONNECTIONS: list[Any] = []
OUTBOX = Outbox(schedule=lambda flush: None)  # no loop here: tests flush by hand


def Room(name: str, recent: int) -> RealRoom:  # stands in for the class in these tests
    return RealRoom(name, recent, OUTBOX)


def conn(user: str = "u", codec: Codec = JSON) -> Any:
    closes = CLOSES[user] = []
    transport = FakeTransport()
    c = Connection(
        user,
        cast(asyncio.Transport, transport),
        codec,
        1000,
        lambda code, why: closes.append((code, why)),
        OUTBOX,
    )
    c.identity = Identity(user, 0)
    CONNECTIONS.append(c)
    return c


def flushed(*connections: Any) -> None:
    """Write what was queued this 'iteration' (there is no event loop here)."""
    OUTBOX.flush()


def push(seq: int) -> MessagePush:
    return MessagePush(Message("swap:1", seq, "a", f'{{"n":{seq}}}', 0))


def frames(c: Any) -> list[bytes]:
    """The payloads of every frame the connection wrote (writes may hold several)."""
    OUTBOX.flush()
    data = b"".join(c._transport.frames)
    payloads = []
    while data:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        payloads.append(data[start : start + length])
        data = data[start + length :]
    return payloads


def seqs(c: Any) -> list[int]:
    out = []
    for payload in frames(c):
        message = orjson.loads(payload) if c.codec is JSON else msgpack.unpackb(payload)
        if message.get("push") == "message":
            out.append(message["seq"])
    return out


def test_in_order_and_out_of_order_messages_are_delivered_in_seq_order() -> None:
    room = Room("swap:1", 8)
    a = conn()
    assert room.attach(a, 0) == []
    room.offer(push(2))
    room.offer(push(3))
    assert seqs(a) == [] and room.first_ahead() == 2
    room.offer(push(1))
    assert seqs(a) == [1, 2, 3] and room.first_ahead() is None
    room.offer(push(2))  # a duplicate
    assert seqs(a) == [1, 2, 3]


def test_the_first_attach_sets_the_room_seq_and_flushes_what_came_early() -> None:
    room = Room("swap:1", 8)
    room.offer(push(4))  # arrived between subscribe and the store read
    room.offer(push(6))
    a = conn()
    assert room.attach(a, 4) == []
    assert seqs(a) == [] and room.first_ahead() == 6
    room.offer(push(5))
    assert seqs(a) == [5, 6]


def test_a_joiner_ahead_of_the_room_waits_and_gets_nothing_twice() -> None:
    room = Room("swap:1", 8)
    a = conn("a")
    room.attach(a, 3)
    b = conn("b")
    assert room.attach(b, 5) == []  # the store already had 4 and 5
    room.deliver(TypingPush("swap:1", "a", True))
    for seq in (4, 5, 6):
        room.offer(push(seq))
    assert seqs(a) == [4, 5, 6]
    assert seqs(b) == [6]
    assert len(frames(b)) == 2  # the typing push reached the waiting joiner


def test_a_joiner_behind_the_room_gets_the_recent_messages_to_catch_up() -> None:
    room = Room("swap:1", 2)
    a = conn("a")
    room.attach(a, 0)
    for seq in (1, 2, 3):
        room.offer(push(seq))
    b = conn("b")
    assert [m.seq for m in room.attach(b, 1) or []] == [2, 3]
    assert room.attach(conn("c"), 0) is None  # recent keeps only 2: read the store
    room.offer(push(4))
    assert seqs(b) == [4]


def test_skip_to_moves_past_messages_the_store_no_longer_has() -> None:
    room = Room("swap:1", 8)
    a = conn()
    room.attach(a, 0)
    room.offer(push(5))
    room.skip_to(4)
    assert seqs(a) == [5] and room.first_ahead() is None


def test_each_encoding_gets_one_frame_built_once() -> None:
    room = Room("swap:1", 8)
    json_conns = [conn(f"j{i}") for i in range(3)]
    pack_conns = [conn(f"m{i}", MSGPACK) for i in range(2)]
    for c in json_conns + pack_conns:
        room.attach(c, 0)
    room.offer(push(1))
    flushed(*json_conns, *pack_conns)
    json_frames = {id(c._transport.frames[0]) for c in json_conns}
    pack_frames = {id(c._transport.frames[0]) for c in pack_conns}
    assert len(json_frames) == 1 and len(pack_frames) == 1
    assert seqs(pack_conns[0]) == [1]


def test_a_slow_reader_is_closed_and_others_still_get_the_push() -> None:
    room = Room("swap:1", 8)
    slow, fast = conn("s"), conn("f")
    room.attach(slow, 0)
    room.attach(fast, 0)
    slow._transport.buffered = 10_000
    room.offer(push(1))
    flushed(slow, fast)
    assert CLOSES["s"] == [(4009, "send buffer full: reading too slowly")]
    assert seqs(fast) == [1]
    assert seqs(slow) == []
    room.offer(push(2))  # a closing connection takes nothing more
    assert seqs(slow) == [] and seqs(fast) == [1, 2]


def test_pushes_of_one_iteration_leave_in_one_write() -> None:
    room = Room("swap:1", 8)
    a = conn("a")
    room.attach(a, 0)
    for seq in (1, 2, 3):
        room.offer(push(seq))
    room.deliver(TypingPush("swap:1", "b", True))
    flushed(a)
    assert len(a._transport.frames) == 1
    assert seqs(a) == [1, 2, 3] and len(frames(a)) == 4


def test_typing_skips_the_typist() -> None:
    room = Room("swap:1", 8)
    a, b = conn("a"), conn("b")
    room.attach(a, 0)
    room.attach(b, 0)
    assert room.deliver(TypingPush("swap:1", "a", True), skip_user="a") == 1
    assert frames(a) == [] and len(frames(b)) == 1


class HalfClosedTransport(FakeTransport):
    """A transport after ``write_eof``: every write raises, as asyncio's does."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes) -> None:
        raise RuntimeError("Cannot call write() after write_eof()")

    def abort(self) -> None:
        self.aborted = True


def test_a_failing_write_drops_that_connection_and_the_others_are_still_written() -> None:
    room = Room("swap:1", 8)
    conns = [conn(f"i{i}") for i in range(5)]
    broken = conns[2]
    broken._transport = HalfClosedTransport()
    for c in conns:
        room.attach(c, 0)
    room.offer(push(1))
    flushed()
    assert broken._transport.aborted and broken.closing
    room.offer(push(2))
    for c in conns:
        if c is not broken:
            assert seqs(c) == [1, 2]
