"""Presence kept in this process: exact, and gone with it."""

from __future__ import annotations

from .presence import OnChange


class MemoryPresence:
    shared = False

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = {}

    async def start(self, on_change: OnChange) -> None:
        return None

    async def add(self, room: str, user: str, connection: str) -> bool:
        users = self._rooms.setdefault(room, {})
        connections = users.setdefault(user, set())
        first = not connections
        connections.add(connection)
        return first

    async def remove(self, room: str, user: str, connection: str) -> bool:
        users = self._rooms.get(room)
        if users is None or connection not in users.get(user, ()):
            return False
        connections = users[user]
        connections.discard(connection)
        if connections:
            return False
        del users[user]
        if not users:
            del self._rooms[room]
        return True

    async def users(self, room: str) -> list[str]:
        return sorted(self._rooms.get(room, {}))

    async def connections(self, room: str) -> int:
        return sum(len(c) for c in self._rooms.get(room, {}).values())

    async def close(self) -> None:
        self._rooms.clear()
