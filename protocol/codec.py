"""Wire encodings, chosen by WebSocket subprotocol: ``rt1.json`` and ``rt1.msgpack``.

A frame may carry several messages: JSON as newline-separated objects, msgpack as
concatenated objects. Decoding raises only ``FrameError``.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
import orjson

from . import jsonvalue
from .errors import FrameError
from .outgoing import Outgoing

MAX_MESSAGES_PER_FRAME: Final = 100


class Codec:
    """One encoding: how frames decode to messages and how messages encode to frames."""

    subprotocol: str
    binary: bool
    websocket: bool = True
    """Each encoded message is a WebSocket frame; False: written as it is (Engine.IO polling)."""
    ping: bytes | None = None
    """The message that is a ping in this encoding; None: a WebSocket ping frame."""

    def decode(self, data: bytes | str) -> list[object]:
        raise NotImplementedError

    def encode(self, message: Outgoing) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Codec {self.subprotocol}>"


class JsonCodec(Codec):
    subprotocol = "rt1.json"
    binary = False

    def decode(self, data: bytes | str) -> list[object]:
        try:
            return [jsonvalue.loads(data)]
        except ValueError as error:
            lines = _split_lines(data)
            if len(lines) < 2:
                raise FrameError(f"frame is not valid JSON: {error}") from None
        if len(lines) > MAX_MESSAGES_PER_FRAME:
            raise FrameError(f"a frame carries at most {MAX_MESSAGES_PER_FRAME} messages")
        messages: list[object] = []
        for number, line in enumerate(lines, 1):
            try:
                messages.append(jsonvalue.loads(line))
            except ValueError as error:
                raise FrameError(f"line {number} of the frame is not valid JSON: {error}") from None
        return messages

    def encode(self, message: Outgoing) -> bytes:
        # Stored JSON text goes into the frame as it is, never parsed and dumped again.
        return orjson.dumps(message.to_wire(orjson.Fragment))


def _split_lines(data: bytes | str) -> list[bytes]:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return [line for line in raw.split(b"\n") if line.strip()]


class MsgpackCodec(Codec):
    subprotocol = "rt1.msgpack"
    binary = True

    def decode(self, data: bytes | str) -> list[object]:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if not raw:
            raise FrameError("empty frame")
        messages: list[object] = []
        while len(messages) < MAX_MESSAGES_PER_FRAME:
            try:
                messages.append(msgpack.unpackb(raw, raw=False, strict_map_key=False))
                return messages
            except msgpack.ExtraData as extra:
                # The stubs lack ExtraData's fields: the object read and the bytes after it.
                fields: Any = extra
                messages.append(fields.unpacked)
                raw = fields.extra
            # msgpack reports bad input as ValueError subclasses, and as TypeError for
            # a map key that is itself a map or a list.
            except (ValueError, TypeError, msgpack.UnpackException) as error:
                raise FrameError(f"frame is not valid msgpack: {error}") from None
        raise FrameError(f"a frame carries at most {MAX_MESSAGES_PER_FRAME} messages")

    def encode(self, message: Outgoing) -> bytes:
        # Stored JSON text is parsed once, to become msgpack.
        return msgpack.packb(message.to_wire(orjson.loads), use_bin_type=True)


JSON: Final = JsonCodec()
MSGPACK: Final = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
SUBPROTOCOLS: Final = tuple(CODECS)
