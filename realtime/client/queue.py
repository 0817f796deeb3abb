"""The queue of events between the client and the app, bounded by ``limit``.

What happens when the app falls behind and the queue is full depends on the event:

- messages never wait and are never lost: the room stops queueing them, and
  queues them again, in seq order, from what it kept or from history, as the
  app takes events (see ``room.py``);
- typing events are dropped (they are stale a few seconds later anyway);
- presence, read, notification, joined and left events wait for room with
  ``put``: the socket is not read meanwhile, which is TCP backpressure on the
  server (it may close a connection that stays that slow; the client then
  reconnects and recovers);
- state and recovery events are few (one per room per reconnect, at most) and are
  always queued (``push``), so the app learns of them even when it is behind.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .events import Event


class EventQueue:
    """One consumer (``get``), many producers; ``close`` ends it once it is drained."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the event queue needs room for at least one event")
        self.limit = limit
        self._items: deque[Event] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self.dropped = 0
        """Typing events dropped because the queue was full."""

    def __len__(self) -> int:
        return len(self._items)

    def has_room(self) -> bool:
        return len(self._items) < self.limit

    def push(self, event: Event) -> None:
        """Queue ``event`` now, even past the limit (for the few events that must not wait)."""
        self._items.append(event)
        self._readable.set()
        if not self.has_room():
            self._room.clear()

    def offer(self, event: Event) -> bool:
        """Queue ``event`` if there is room; False (and counted as dropped) otherwise."""
        if not self.has_room():
            self.dropped += 1
            return False
        self.push(event)
        return True

    async def put(self, event: Event) -> None:
        """Queue ``event`` once there is room."""
        while not self.has_room():
            await self._room.wait()
        self.push(event)

    async def get(self) -> Event | None:
        """The next event; None once the queue is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        event = self._items.popleft()
        if self.has_room():
            self._room.set()
        return event

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._room.set()  # producers stop waiting; what they queue after this is not read

    @property
    def closed(self) -> bool:
        return self._closed
