"""What travels between instances through the broker.

Room pushes travel as they are (the push dataclasses of ``protocol.outgoing``);
the two control events ask the instances holding a user's connections to act on
them. Control events are published to the user's own room, ``user:<id>``, which
every connection of that user is in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

_MESSAGE, _TYPING, _PRESENCE, _READ, _NOTIFICATION, _DISCONNECT, _MEMBERSHIP = range(7)


class EventFormatError(ValueError):
    """Bytes from the broker that are not an event of this version."""


def pack_event(origin: str, event: Event) -> bytes:
    fields: list[object]
    if isinstance(event, MessagePush):
        m = event.message
        fields = [_MESSAGE, m.room, m.seq, m.user, m.body_json, m.ts, m.client_id]
    elif isinstance(event, TypingPush):
        fields = [_TYPING, event.room, event.user, event.active]
    elif isinstance(event, PresencePush):
        fields = [_PRESENCE, event.room, event.user, event.event]
    elif isinstance(event, ReadPush):
        fields = [_READ, event.room, event.user, event.seq]
    elif isinstance(event, NotificationPush):
        n = event.item
        fields = [_NOTIFICATION, n.id, n.type, n.data_json, n.actor, n.ts, n.read]
    elif isinstance(event, UserDisconnect):
        fields = [_DISCONNECT, event.user, event.reason]
    else:
        fields = [_MEMBERSHIP, event.user, event.room, event.joined, event.reason]
    return msgpack.packb([origin, *fields], use_bin_type=True)


def unpack_event(data: bytes) -> tuple[str, Event]:
    try:
        origin, kind, *fields = msgpack.unpackb(data, raw=False)
        return origin, _BUILDERS[kind](*fields)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as error:
        raise EventFormatError(f"not an event: {error}") from None


def _message(
    room: str, seq: int | None, user: str | None, body: str, ts: int, client_id: str | None
) -> Event:
    return MessagePush(Message(room, seq, user, body, ts, client_id))


def _notification(id: int, type: str, data: str, actor: str | None, ts: int, read: bool) -> Event:
    return NotificationPush(NotificationItem(id, type, data, actor, ts, read))


_BUILDERS: dict[int, Callable[..., Event]] = {
    _MESSAGE: _message,
    _TYPING: TypingPush,
    _PRESENCE: PresencePush,
    _READ: ReadPush,
    _NOTIFICATION: _notification,
    _DISCONNECT: UserDisconnect,
    _MEMBERSHIP: MembershipChange,
}
