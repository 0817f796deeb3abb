"""Store records as the protocol's messages, and the names derived from ids."""

from __future__ import annotations

import time

from protocol.outgoing import Message, NotificationItem
from storage import Notification, StoredMessage


def now_ms() -> int:
    return int(time.time() * 1000)


def to_message(stored: StoredMessage) -> Message:
    return Message(stored.room, stored.seq, stored.user, stored.body, stored.ts, stored.client_id)


def to_item(notification: Notification) -> NotificationItem:
    return NotificationItem(
        notification.id,
        notification.type,
        notification.data,
        notification.actor,
        notification.ts,
        notification.read,
        notification.seen,
        notification.archived,
    )


def user_room(user: str) -> str:
    """A user's own room: their notifications, and the instances' control events."""
    return f"user:{user}"
