"""WebSocket frames built once and written as bytes to any number of sockets.

A server-to-client frame is never masked, so the same bytes are valid on every
connection: fan-out builds a frame once per push and encoding, then writes it.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

from protocol import Codec
from protocol.outgoing import Outgoing


def data_frame(codec: Codec, payload: bytes) -> bytes:
    opcode = Opcode.BINARY if codec.binary else Opcode.TEXT
    return Frame(opcode, payload).serialize(mask=False)


def encode_frame(codec: Codec, message: Outgoing) -> bytes:
    return data_frame(codec, codec.encode(message))


def close_reason(reason: str) -> bytes:
    """A close reason cut to the 123 bytes a close frame allows, on a character boundary."""
    return reason.encode()[:123].decode("utf-8", "ignore").encode()


PING_FRAME = Frame(Opcode.PING, b"").serialize(mask=False)
