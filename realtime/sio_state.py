"""A polling session as one instance hands it to another (``sio_move.py``).

What is needed to rebuild it elsewhere: who it is (user and token expiry; a
session not yet authenticated has neither), whether Socket.IO's main namespace
is connected, its rooms with the seq it has each one up to (None for a room
without history, or one it has no position in yet), the rooms a room token let
it join, and the packets written for it that no GET took yet. Nothing that the
client can replay (an ack it waits for is answered before the move: the client
sends nothing while it upgrades), nothing live (typing, presence) that the joins
on the new instance do not rebuild.

It travels as one msgpack array between instances of one version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass(frozen=True, slots=True)
class MovedSession:
    user: str | None
    expires_at: float
    connected: bool
    rooms: tuple[tuple[str, int | None], ...]
    granted: tuple[str, ...]
    queued: bytes
    """Polling packets, each followed by the separator."""


class MovedFormatError(ValueError):
    """Bytes that are not a moved session of this version."""


def pack_moved(state: MovedSession) -> bytes:
    return msgpack.packb(
        [
            state.user,
            state.expires_at,
            state.connected,
            [list(room) for room in state.rooms],
            list(state.granted),
            state.queued,
        ],
        use_bin_type=True,
    )


def unpack_moved(data: bytes) -> MovedSession:
    try:
        return _moved(*msgpack.unpackb(data, raw=False))
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise MovedFormatError(f"not a moved session: {error}") from None


def _moved(
    user: object,
    expires_at: float,
    connected: bool,
    rooms: list[Any],
    granted: list[Any],
    queued: object,
) -> MovedSession:
    if (user is not None and not isinstance(user, str)) or type(queued) is not bytes:
        raise TypeError("ill-typed moved session")
    return MovedSession(
        user,
        float(expires_at),
        bool(connected),
        tuple((str(room), None if seq is None else int(seq)) for room, seq in rooms),
        tuple(str(room) for room in granted),
        queued,
    )
