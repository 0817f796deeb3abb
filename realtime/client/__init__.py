"""An asyncio client for the realtime server: ``RealtimeClient``.

    client = RealtimeClient("ws://127.0.0.1:8080/ws", token=token)
    await client.connect()
    room = await client.join("swap:1")
    await room.send({"text": "hi"})
    async for event in client.events(): ...

It reconnects by itself, rejoins every room where it left off, delivers each
room's messages once and in seq order (filling gaps from history), and sends
each message until the server acknowledges it, stored once. See
``docs/python-client.md``.
"""

from .backoff import Backoff
from .client import RealtimeClient
from .events import (
    Ack,
    ClientClosed,
    ClientError,
    Event,
    HistoryPage,
    JoinedEvent,
    LeftEvent,
    Message,
    MessageEvent,
    Notification,
    NotificationEvent,
    NotificationsPage,
    PresenceEvent,
    ReadEvent,
    RecoveryEvent,
    RequestTimeout,
    ServerError,
    State,
    StateEvent,
    TypingEvent,
)
from .room import Room

__all__ = [
    "Ack",
    "Backoff",
    "ClientClosed",
    "ClientError",
    "Event",
    "HistoryPage",
    "JoinedEvent",
    "LeftEvent",
    "Message",
    "MessageEvent",
    "Notification",
    "NotificationEvent",
    "NotificationsPage",
    "PresenceEvent",
    "ReadEvent",
    "RealtimeClient",
    "RecoveryEvent",
    "RequestTimeout",
    "Room",
    "ServerError",
    "State",
    "StateEvent",
    "TypingEvent",
]
