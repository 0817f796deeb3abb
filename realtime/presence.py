"""The Presence seam: which users are in a room, across every instance.

A user is present while at least one of their connections is in the room. ``add``
and ``remove`` say whether the change crossed that line (first connection in,
last one out), which is when a ``presence`` push goes out.

Implementations: ``presence_memory.MemoryPresence`` (one instance) and
``presence_redis.RedisPresence`` (shared, with expiry so a dead instance's
connections drop out by themselves).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

OnChange = Callable[[str, str, str], Awaitable[None]]
"""(room, user, "join" or "leave"): a change the presence found by itself."""


class Presence(Protocol):
    shared: bool
    """True when it spans instances; else each instance counts its own connections."""

    async def start(self, on_change: OnChange) -> None:
        """Begin background work; ``on_change`` announces changes found there
        (users of a dead instance leaving, entries put back after an outage)."""

    async def add(self, room: str, user: str, connection: str) -> bool:
        """Record a connection in a room; True when it is the user's first there."""

    async def remove(self, room: str, user: str, connection: str) -> bool:
        """Forget a connection; True when it was the user's last there."""

    async def users(self, room: str) -> list[str]:
        """Users present in the room, sorted."""

    async def connections(self, room: str) -> int:
        """Connections in the room, of every user, on every live instance."""

    async def close(self) -> None: ...
