"""Room names: ``namespace:key``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import bad_request

ROOM_PATTERN = r"[a-z_]+:[A-Za-z0-9_.:-]{1,128}"
_ROOM = re.compile(ROOM_PATTERN)
MAX_ROOM_LENGTH = 64 + 1 + 128


@dataclass(frozen=True, slots=True)
class RoomName:
    namespace: str
    key: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.key}"


def parse_room(name: object) -> RoomName:
    """Split a room name, or raise a ``bad_request`` that says what a name looks like."""
    if not isinstance(name, str) or len(name) > MAX_ROOM_LENGTH or not _ROOM.fullmatch(name):
        raise bad_request(
            f"room must be 'namespace:key' like 'swap:123' ({ROOM_PATTERN}), got {_show(name)}"
        )
    namespace, _, key = name.partition(":")
    return RoomName(namespace, key)


def is_room_name(name: str) -> bool:
    return len(name) <= MAX_ROOM_LENGTH and _ROOM.fullmatch(name) is not None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
