"""What travels between instances through the broker.

Room pushes travel as they are (the push dataclasses of ``protocol.outgoing``);
the two control events ask the instances holding a user's connections to act on
them. Control events are published to the user's own room, ``user:<id>``, which
every connection of that user is in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from operator import attrgetter
from typing import Any, Final, assert_never, get_args

import msgpack

from protocol.outgoing import (
    Message,
    MessagePush,
    NotificationItem,
    NotificationPush,
    PresencePush,
    ReadPush,
    TypingPush,
)


@dataclass(frozen=True, slots=True)
class UserDisconnect:
    """Close every connection of ``user`` (REST ``disconnect``)."""

    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """``user`` may now join ``room`` (``joined``), or may no longer (``left``)."""

    user: str
    room: str
    joined: bool
    reason: str


Event = (
    MessagePush
    | TypingPush
    | PresencePush
    | ReadPush
    | NotificationPush
    | UserDisconnect
    | MembershipChange
)


# On the wire between instances ------------------------------------------------------------
#
# An event crosses the broker as one msgpack array: [origin, kind, *fields]. ``origin``
# is the publishing instance, so it can skip its own echo (it delivered locally).
# ``kind`` is the event type's place in ``EVENT_TYPES``, the ``Event`` union in order:
# instances of different versions share a broker, so new types go at the end.

EVENT_TYPES: Final[tuple[type[Event], ...]] = get_args(Event)
_KIND: Final[dict[type[Event], int]] = {event: kind for kind, event in enumerate(EVENT_TYPES)}


_ITEM_FIELDS_BEFORE_STATES: Final = 6  # NotificationItem up to ``read``


class EventFormatError(ValueError):
    """Bytes from the broker that are not an event of this version."""


def pack_event(origin: str, event: Event) -> bytes:
    return msgpack.packb([origin, _KIND[type(event)], *_fields(event)], use_bin_type=True)


def unpack_event(data: bytes) -> tuple[str, Event]:
    try:
        origin, kind, *values = msgpack.unpackb(data, raw=False)
        return origin, _event(kind, values)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise EventFormatError(f"not an event: {error}") from None


def _fields(event: Event) -> tuple[object, ...]:
    """An event's fields in order; a push that wraps a record travels as the record's."""
    match event:
        case NotificationPush(item=record) if not (record.seen or record.archived):
            # A new notification is neither: without those two fields it travels as it
            # did before they existed, so instances of both versions read it.
            return _values(record)[:_ITEM_FIELDS_BEFORE_STATES]
        case MessagePush(message=record) | NotificationPush(item=record):
            return _values(record)
        case TypingPush() | PresencePush() | ReadPush() | UserDisconnect() | MembershipChange():
            return _values(event)
        case _:
            assert_never(event)


def _event(kind: object, values: list[Any]) -> Event:
    """The inverse of ``pack_event``'s kind and ``_fields``."""
    if type(kind) is not int or not 0 <= kind < len(EVENT_TYPES):
        raise ValueError(f"unknown kind {kind!r:.20}")
    event_type = EVENT_TYPES[kind]
    if event_type is MessagePush:
        return MessagePush(Message(*values))
    if event_type is NotificationPush:
        return NotificationPush(NotificationItem(*values))
    return event_type(*values)


def _values(record: Any) -> tuple[object, ...]:
    """A dataclass's field values in order (``dataclasses.astuple`` would copy deeply)."""
    values: tuple[object, ...] = _getter(record.__class__)(record)
    return values


@cache
def _getter(record_type: type) -> Callable[[Any], tuple[object, ...]]:
    names = [field.name for field in fields(record_type)]
    if len(names) == 1:  # attrgetter of one name gives the value, not a tuple
        return lambda record: (getattr(record, names[0]),)
    return attrgetter(*names)
