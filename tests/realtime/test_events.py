"""Events between instances: every type of the ``Event`` union packs and unpacks.

The types are enumerated from the union itself, so a new event without a sample here
(or one that does not survive the broker's wire) fails these tests.
"""

from __future__ import annotations

from typing import get_args

import msgpack
import pytest

from protocol.outgoing import (
    Message,
    MessagePush,
    NotificationItem,
    NotificationPush,
    PresencePush,
    ReadPush,
    TypingPush,
)
from realtime.events import (
    EVENT_TYPES,
    Event,
    EventFormatError,
    MembershipChange,
    UserDisconnect,
    pack_event,
    unpack_event,
)

SAMPLES: dict[type, Event] = {
    MessagePush: MessagePush(Message("swap:1", 7, "alice", '{"n":1}', 1700, "c1")),
    TypingPush: TypingPush("swap:1", "bob", True),
    PresencePush: PresencePush("swap:1", "bob", "leave"),
    ReadPush: ReadPush("swap:1", "bob", 2**63 - 1),
    NotificationPush: NotificationPush(NotificationItem(3, "like", "[]", None, 1800, True)),
    UserDisconnect: UserDisconnect("carol", "disconnected by the server"),
    MembershipChange: MembershipChange("dave", "swap:2", False, "member_removed"),
}


def test_every_event_type_has_a_sample() -> None:
    missing = [t.__name__ for t in get_args(Event) if t not in SAMPLES]
    assert not missing, f"add a sample event for {missing}"


@pytest.mark.parametrize("event_type", get_args(Event), ids=lambda t: t.__name__)
def test_every_event_type_packs_and_unpacks(event_type: type) -> None:
    event = SAMPLES[event_type]
    assert type(event) is event_type
    assert unpack_event(pack_event("instance-a", event)) == ("instance-a", event)


def test_the_wire_kinds_keep_their_numbers() -> None:
    """Instances of different versions share a broker: new event types go at the end."""
    assert [t.__name__ for t in EVENT_TYPES[:7]] == [
        "MessagePush",
        "TypingPush",
        "PresencePush",
        "ReadPush",
        "NotificationPush",
        "UserDisconnect",
        "MembershipChange",
    ]
    packed = msgpack.unpackb(pack_event("a", SAMPLES[MessagePush]))
    assert packed == ["a", 0, "swap:1", 7, "alice", '{"n":1}', 1700, "c1"]
    # A notification push keeps its fields from before seen and archived existed.
    packed = msgpack.unpackb(pack_event("a", SAMPLES[NotificationPush]))
    assert packed == ["a", 4, 3, "like", "[]", None, 1800, True]
    marked = NotificationPush(NotificationItem(3, "like", "[]", None, 1800, True, seen=True))
    assert msgpack.unpackb(pack_event("a", marked))[-2:] == [True, False]
    assert unpack_event(pack_event("a", marked)) == ("a", marked)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb("not a list"),
        msgpack.packb(["a"]),
        msgpack.packb(["a", len(EVENT_TYPES)]),
        msgpack.packb(["a", -1, "u", "reason"]),
        msgpack.packb(["a", True, "u", "reason"]),
        msgpack.packb(["a", "0", "u", "reason"]),
        msgpack.packb(["a", 5, "u"]),
        msgpack.packb(["a", 5, "u", "reason", "extra"]),
    ],
)
def test_what_is_not_an_event_is_an_event_format_error(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        unpack_event(data)
