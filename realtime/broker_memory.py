"""In-process broker: one instance, nothing external. Never loses or reorders."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from .broker import BrokerHandler
from .events import Event


class MemoryBroker:
    shared = False

    def __init__(self, address: str | None = None) -> None:
        self.address = address or secrets.token_hex(4)
        self._handler: BrokerHandler | None = None
        self._rooms: set[str] = set()

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None
        self._rooms.clear()

    async def subscribe(self, room: str) -> None:
        self._rooms.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)

    async def publish(self, room: str, event: Event) -> None:
        if self._handler is not None and room in self._rooms:
            self._handler.on_event(room, event)

    async def publish_confirmed(self, room: str, event: Event) -> None:
        await self.publish(room, event)

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        for room, event in events:
            await self.publish(room, event)

    async def ping(self) -> None:
        return None

    async def send_direct(self, address: str, data: bytes) -> bool:
        if address != self.address or self._handler is None:
            return False  # no other instance exists
        self._handler.on_direct(data)
        return True
