"""WebSocket frames built once and written as bytes to any number of sockets.

A server-to-client frame is never masked, so the same bytes are valid on every
connection: fan-out builds a frame once per push and encoding, then writes it.
An encoding that is not framed as WebSocket (Engine.IO's polling packets) gets
its messages as they are, each followed by the payload separator.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

from protocol import Codec
from protocol.engineio import SEPARATOR
from protocol.outgoing import Outgoing


def data_frame(codec: Codec, payload: bytes) -> bytes:
    if not codec.websocket:
        return payload + SEPARATOR
    if codec.binary:
        return Frame(Opcode.BINARY, payload).serialize(mask=False)
    return text_frame(payload)


def text_frame(payload: bytes) -> bytes:
    """An unmasked final text frame (what ``Frame.serialize`` makes, without its checks)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def encode_frame(codec: Codec, message: Outgoing) -> bytes:
    return data_frame(codec, codec.encode(message))


def close_reason(reason: str) -> bytes:
    """A close reason cut to the 123 bytes a close frame allows, on a character boundary."""
    return reason.encode()[:123].decode("utf-8", "ignore").encode()


PING_FRAME = Frame(Opcode.PING, b"").serialize(mask=False)


def ping_frame(codec: Codec) -> bytes:
    """A ping in ``codec``'s encoding: a WebSocket ping, or the encoding's own."""
    return PING_FRAME if codec.ping is None else data_frame(codec, codec.ping)
