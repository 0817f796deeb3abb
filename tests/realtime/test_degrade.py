"""Degrade before disconnect, without a loop or a socket (fake transports of test_room)."""

from __future__ import annotations

from typing import Any

import orjson

from protocol.outgoing import PresencePush, TypingPush
from tests.realtime.test_room import CLOSES, OUTBOX, Room, conn, flushed, frames, push, seqs


def pushes(c: Any) -> list[dict[str, Any]]:
    return [orjson.loads(payload) for payload in frames(c)]


def test_past_the_soft_mark_typing_goes_first_then_the_room_stops_with_one_lagged_push() -> None:
    room = Room("swap:1", 8)
    slow, fast = conn("slow"), conn("fast")  # hard mark 1000, soft mark 500
    room.attach(slow, 0)
    room.attach(fast, 0)
    dropped = OUTBOX.metrics.pushes_dropped.labels("typing")
    before = dropped._value.get()
    slow._transport.buffered = 600
    room.offer(push(1))  # written: this write is what passes the soft mark
    flushed()
    room.deliver(TypingPush("swap:1", "fast", True))
    room.deliver(PresencePush("swap:1", "x", "join"))
    assert dropped._value.get() == before + 1
    room.offer(push(2))
    room.offer(push(3))
    flushed()
    assert [p["push"] for p in pushes(slow)] == ["message", "lagged"]
    assert pushes(slow)[-1] == {"push": "lagged", "room": "swap:1", "seq": 1}
    assert slow not in room and not slow.closing and CLOSES["slow"] == []
    assert seqs(fast) == [1, 2, 3]

    # Drained, it joins again from seq 1: the room hands back what it missed.
    slow._transport.buffered = 0
    assert [m.seq for m in room.attach(slow, 1) or []] == [2, 3]
    room.offer(push(4))
    room.deliver(TypingPush("swap:1", "fast", False))
    assert seqs(slow) == [1, 4]
    assert pushes(slow)[-1]["push"] == "typing"


def test_below_the_soft_mark_again_nothing_is_left_out() -> None:
    room = Room("swap:1", 8)
    a = conn("a")
    room.attach(a, 0)
    a._transport.buffered = 600
    room.offer(push(1))
    flushed()
    assert a.degraded
    a._transport.buffered = 100
    room.deliver(TypingPush("swap:1", "b", True))
    room.offer(push(2))
    assert not a.degraded
    assert [p["push"] for p in pushes(a)] == ["message", "typing", "message"]


def test_the_hard_mark_still_closes_with_4009_and_counts_a_slow_consumer() -> None:
    room = Room("swap:1", 8)
    a = conn("a")
    room.attach(a, 0)
    before = OUTBOX.metrics.slow_consumers._value.get()
    a._transport.buffered = 1100
    room.offer(push(1))
    flushed()
    assert CLOSES["a"] == [(4009, "send buffer full: reading too slowly")]
    assert OUTBOX.metrics.slow_consumers._value.get() == before + 1
