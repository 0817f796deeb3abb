"""A polling session's send buffer (``sio.py``): what the next GET takes."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from protocol.engineio import SEPARATOR

MAX_PACKETS_PER_POLL: Final = 16
"""Packets in one polling response: python-engineio's client refuses more."""


class PollingSink:
    """A polling session's send buffer: packets, each followed by the separator.

    It remembers where each write ends: a GET takes whole writes when it can. A
    write ends with the recovery offset when it moved the connection on
    (``EngineSocket._tail``), so a client that loses the connection between two
    GETs holds an offset that covers every message it got, and its recovery
    brings nothing twice. Only a single write of more packets than one response
    takes is cut inside.
    """

    __slots__ = ("_buffer", "_ready", "_writes", "closed", "getting", "posting")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._writes: deque[tuple[int, int]] = deque()
        """(bytes, packets) of each write still buffered, oldest first."""
        self._ready = asyncio.Event()
        self.closed = False
        self.getting = False
        self.posting = False

    def write(self, data: bytes) -> None:
        self._buffer += data
        self._writes.append((len(data), data.count(SEPARATOR)))
        self._ready.set()

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def abort(self) -> None:
        self.closed = True
        self._ready.set()

    def finish(self, data: bytes) -> None:
        """The last packets, written even past the limits; nothing follows them."""
        self.closed = True
        self.write(data)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        self._writes.clear()
        self._ready.clear()
        return data

    async def take(self, wait: float) -> bytes:
        """Up to ``MAX_PACKETS_PER_POLL`` buffered packets, as a payload; waits up to
        ``wait`` seconds when nothing is buffered."""
        buffer = self._buffer
        if not buffer and not self.closed:
            self._ready.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._ready.wait()
            except TimeoutError:
                pass
        writes = self._writes
        size = packets = 0
        while writes and packets + writes[0][1] <= MAX_PACKETS_PER_POLL:
            length, count = writes.popleft()
            size += length
            packets += count
        if not packets and writes:  # one write too large for a response: cut it
            length, count = writes[0]
            size = -1
            for _ in range(MAX_PACKETS_PER_POLL):
                size = buffer.find(SEPARATOR, size + 1)
            size += len(SEPARATOR)
            writes[0] = (length - size, count - MAX_PACKETS_PER_POLL)
        data = bytes(buffer[:size])
        del buffer[:size]
        if not buffer:
            self._ready.clear()
        return data[: -len(SEPARATOR)]  # every packet ends with one
