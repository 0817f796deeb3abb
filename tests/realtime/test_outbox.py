"""Connection and Outbox write rules, in process: fake transports record every write."""

from __future__ import annotations

import asyncio
from typing import cast

from protocol import JSON
from protocol.outgoing import Message, MessagePush, OkReply
from realtime.auth import Identity
from realtime.connection import Connection, Outbox
from realtime.frames import encode_frame

LIMIT = 1000
TOO_SLOW = (4009, "send buffer full: reading too slowly")
# What the frames stand for: only a degraded connection looks at it.
PUSH = MessagePush(Message("swap:1", 1, "a", "{}", 0))


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        assert not self.closing, "write on a closing transport"
        self.writes.append(data)


class Peer:
    """A connection, its transport, and the closes it asked for."""

    def __init__(self, outbox: Outbox, name: str = "c") -> None:
        self.transport = FakeTransport()
        self.closes: list[tuple[int, str]] = []
        self.conn = Connection(
            name,
            cast(asyncio.Transport, self.transport),
            JSON,
            LIMIT,
            lambda code, reason: self.closes.append((code, reason)),
            outbox,
        )
        self.conn.identity = Identity(name, 0)


def manual() -> tuple[Outbox, list[object]]:
    """An outbox flushed by hand; the list holds the flushes it asked to schedule."""
    scheduled: list[object] = []
    return Outbox(schedule=scheduled.append), scheduled


def test_frames_of_one_iteration_leave_in_one_write_in_order() -> None:
    outbox, scheduled = manual()
    a = Peer(outbox)
    assert a.conn.send_frame(b"1") and a.conn.send_frame(b"2") and a.conn.send_frame(b"3")
    assert a.transport.writes == []
    assert len(scheduled) == 1  # one flush per iteration, however many frames
    outbox.flush()
    assert a.transport.writes == [b"123"]
    a.conn.send_frame(b"4")
    assert len(scheduled) == 2
    outbox.flush()
    assert a.transport.writes == [b"123", b"4"]


def test_one_flush_writes_every_connection_once() -> None:
    outbox, scheduled = manual()
    peers = [Peer(outbox, f"c{i}") for i in range(3)]
    for i, peer in enumerate(peers):
        for _ in range(i + 1):
            peer.conn.send_frame(b"x")
    assert len(scheduled) == 1
    outbox.flush()
    assert [p.transport.writes for p in peers] == [[b"x"], [b"xx"], [b"xxx"]]
    outbox.flush()  # nothing left
    assert [len(p.transport.writes) for p in peers] == [1, 1, 1]


async def test_by_default_the_flush_runs_at_the_end_of_the_loop_iteration() -> None:
    outbox = Outbox()
    a = Peer(outbox)
    a.conn.send_frame(b"1")
    a.conn.send_frame(b"2")
    assert a.transport.writes == []
    await asyncio.sleep(0)
    assert a.transport.writes == [b"12"]


def test_broadcast_queues_for_many_and_counts_who_took_it() -> None:
    outbox, scheduled = manual()
    plain, busy, held, closed = (Peer(outbox, n) for n in ("plain", "busy", "held", "closed"))
    busy.conn.send_frame(b"before;")
    held.conn.hold()
    closed.conn.close(1000, "bye")
    count = outbox.broadcast(
        [p.conn for p in (plain, busy, held, closed)], b"push;", PUSH, "swap:1"
    )
    assert count == 3  # not the closing one
    outbox.broadcast([plain.conn, busy.conn], b"again;", PUSH, "swap:1")
    assert len(scheduled) == 1
    outbox.flush()
    assert plain.transport.writes == [b"push;again;"]
    assert busy.transport.writes == [b"before;push;again;"]
    assert held.transport.writes == [] and closed.transport.writes == []
    held.conn.release()
    outbox.flush()
    assert held.transport.writes == [b"push;"]


def test_a_reply_goes_out_ahead_of_held_pushes() -> None:
    outbox, _ = manual()
    a = Peer(outbox)
    a.conn.hold()
    assert a.conn.send_frame(b"push1;") and a.conn.send_frame(b"push2;")
    assert a.conn.reply(OkReply(1))
    outbox.flush()
    reply = encode_frame(JSON, OkReply(1))
    assert a.transport.writes == [reply]
    a.conn.send_frame(b"push3;")  # still held
    a.conn.release()
    outbox.flush()
    assert a.transport.writes == [reply, b"push1;push2;push3;"]
    a.conn.send_frame(b"push4;")  # released: straight through
    outbox.flush()
    assert a.transport.writes[-1] == b"push4;"


def test_held_pushes_over_the_buffer_limit_close_4009() -> None:
    outbox, _ = manual()
    a = Peer(outbox)
    a.conn.hold()
    assert a.conn.send_frame(b"x" * (LIMIT // 2))
    assert not a.conn.send_frame(b"y" * (LIMIT // 2 + 1))
    assert a.closes == [TOO_SLOW]
    assert a.conn.closing
    assert not a.conn.send_frame(b"z")
    a.conn.release()
    outbox.flush()
    assert a.transport.writes == []


def test_a_full_send_buffer_closes_4009_and_writes_nothing_more() -> None:
    outbox, _ = manual()
    slow, fast = Peer(outbox, "slow"), Peer(outbox, "fast")
    slow.transport.buffered = LIMIT + 1  # the reader stopped reading
    outbox.broadcast([slow.conn, fast.conn], b"push;", PUSH, "swap:1")
    outbox.flush()
    assert slow.closes == [TOO_SLOW] and slow.transport.writes == []
    assert fast.closes == [] and fast.transport.writes == [b"push;"]
    assert outbox.broadcast([slow.conn, fast.conn], b"next;", PUSH, "swap:1") == 1
    outbox.flush()
    assert slow.transport.writes == [] and fast.transport.writes == [b"push;", b"next;"]
    assert slow.closes == [TOO_SLOW]  # once


def test_a_buffer_at_the_limit_is_not_full() -> None:
    outbox, _ = manual()
    a = Peer(outbox)
    a.transport.buffered = LIMIT
    a.conn.send_frame(b"push;")
    outbox.flush()
    assert a.closes == [] and a.transport.writes == [b"push;"]


def test_a_closing_transport_is_skipped_and_others_in_the_flush_are_written() -> None:
    outbox, _ = manual()
    first, gone, last = Peer(outbox, "first"), Peer(outbox, "gone"), Peer(outbox, "last")
    for peer in (first, gone, last):
        peer.conn.send_frame(b"push;")
    gone.transport.closing = True  # TCP went away before the flush
    outbox.flush()
    assert first.transport.writes == last.transport.writes == [b"push;"]
    assert gone.transport.writes == [] and gone.closes == []
    gone.transport.closing = False
    outbox.flush()
    assert gone.transport.writes == []  # what was pending then is dropped, not kept


def test_close_writes_what_was_queued_then_takes_nothing() -> None:
    outbox, _ = manual()
    a = Peer(outbox)
    a.conn.send_frame(b"last words;")
    a.conn.close(1000, "bye")
    assert a.transport.writes == [b"last words;"]  # ahead of the close frame
    assert a.closes == [(1000, "bye")]
    a.conn.close(4009, "again")
    assert a.closes == [(1000, "bye")]  # idempotent
    assert not a.conn.send_frame(b"more")
    assert not a.conn.reply(OkReply(2))
    outbox.flush()
    assert a.transport.writes == [b"last words;"]
