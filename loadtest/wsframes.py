"""WebSocket framing for a client, pure: bytes in, messages out; messages in, bytes out.

``FrameReader`` turns the bytes a server sends into complete messages and control
frames: several frames per read, frames split across reads, 7/16/64-bit lengths,
fragmented messages reassembled. Server frames are never masked, so reading is
short. ``client_frame`` builds the masked frames a client must send.

``receiver.py`` has its own copy of the header arithmetic in its hot loop and calls
``FrameReader.frame`` for every frame it does not count itself; the frame tests run
against both.
"""

from __future__ import annotations

import random

from websockets.utils import apply_mask

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)
_FIN = 0x80

Frame = tuple[int, bytes]
"""(opcode, payload): a complete text or binary message, or a control frame."""


class FrameError(Exception):
    """The server broke the framing rules; the connection closes with 1002."""


def header(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(payload start, payload end) of the frame at ``pos``, or None if incomplete."""
    end = len(data)
    if end - pos < 2:
        return None
    length = data[pos + 1]
    if length < 126:
        start = pos + 2
    elif length == 126:
        if end - pos < 4:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 4
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start = pos + 10
    else:
        raise FrameError("the server sent a masked frame")
    stop = start + length
    return None if stop > end else (start, stop)


class FrameReader:
    """Complete frames from a stream of server bytes."""

    __slots__ = ("_buffer", "_fragments", "_opcode")

    def __init__(self) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._opcode = 0  # of the fragmented message in progress, 0 if none

    def feed(self, data: bytes, skip: tuple[bytes, ...] = ()) -> list[Frame]:
        """The messages and control frames completed by ``data``; final text frames
        whose payload starts with one of ``skip`` are dropped unread."""
        buffer = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        pos = 0
        while (bounds := header(buffer, pos)) is not None:
            start, stop = bounds
            if skip and buffer[pos] == _FIN | TEXT and buffer.startswith(skip, start):
                pos = stop
                continue
            frame = self.frame(buffer[pos], buffer[start:stop])
            if frame is not None:
                frames.append(frame)
            pos = stop
        self._buffer = buffer[pos:]
        return frames

    def take_buffer(self) -> bytes:
        """The bytes of an incomplete frame, for another reader to go on from."""
        buffer, self._buffer = self._buffer, b""
        return buffer

    def frame(self, first: int, payload: bytes) -> Frame | None:
        """One whole frame, from its first byte: a message or control frame, or None
        while a fragmented message is still incomplete."""
        if first & 0x70:
            raise FrameError("reserved bits set: no extension was negotiated")
        opcode = first & 0x0F
        final = first & _FIN
        if opcode in _CONTROL:
            if not final or len(payload) > 125:
                raise FrameError("a control frame must be final and at most 125 bytes")
            return opcode, payload
        if opcode in _DATA:
            if self._opcode:
                raise FrameError("a new message began inside a fragmented one")
            if final:
                return opcode, payload
            self._opcode = opcode
            self._fragments.append(payload)
            return None
        if opcode != CONTINUATION:
            raise FrameError(f"unknown opcode {opcode}")
        if not self._opcode:
            raise FrameError("a continuation frame without a message to continue")
        self._fragments.append(payload)
        if not final:
            return None
        message = b"".join(self._fragments)
        opcode, self._opcode = self._opcode, 0
        self._fragments.clear()
        return opcode, message


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 requires clients to mask)."""
    length = len(payload)
    if length < 126:
        head = bytes((_FIN | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((_FIN | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((_FIN | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    return head + mask + apply_mask(payload, mask)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; 1005 when it has none."""
    if len(payload) < 2:
        return 1005, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")
