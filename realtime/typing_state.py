"""Who is typing where: the one place typing state lives.

A user types in a room until they say they stopped, leave the room, or the
typing timeout passes; each of those publishes ``typing`` with ``active: false``
once. State is per (room, user), whichever of the user's connections said it.
"""

from __future__ import annotations

import asyncio
import time

from protocol import CommandError, ErrorCode
from protocol.outgoing import TypingPush

from .config import Settings
from .connection import Connection
from .policy import Policy
from .publisher import Publisher


class Typing:
    def __init__(self, settings: Settings, policy: Policy, publisher: Publisher) -> None:
        self._timeout = settings.delivery.typing_timeout
        self._policy = policy
        self._publisher = publisher
        self._deadlines: dict[tuple[str, str], float] = {}

    async def set(self, conn: Connection, room: str, active: bool) -> None:
        """The ``typing`` command."""
        _, namespace = self._policy.resolve(room)
        if not namespace.typing:
            raise CommandError(ErrorCode.BAD_REQUEST, f"typing is off in {room}")
        if not conn.in_room(room):
            raise CommandError(ErrorCode.FORBIDDEN, f"join {room} before typing in it")
        key = (room, conn.user)
        if active:
            self._deadlines[key] = time.monotonic() + self._timeout
        else:
            self._deadlines.pop(key, None)
        await self._publisher.publish(room, TypingPush(room, conn.user, active))

    async def left(self, room: str, user: str) -> None:
        """``user`` left ``room``: stop their typing there, if they were."""
        if self._deadlines.pop((room, user), None) is not None:
            await self._publisher.publish(room, TypingPush(room, user, False))

    async def expire(self) -> None:
        """The expiry loop (owned by the node)."""
        while True:
            await asyncio.sleep(min(1.0, self._timeout / 2))
            now = time.monotonic()
            expired = [key for key, deadline in self._deadlines.items() if deadline <= now]
            for key in expired:
                # A stop or leave may have taken it while we published the one before.
                if self._deadlines.get(key, now + 1) <= now:
                    del self._deadlines[key]
                    room, user = key
                    await self._publisher.publish(room, TypingPush(room, user, False))
