"""The realtime wire protocol, version 1: pure code, no I/O.

Bytes go in (``decode_commands``), typed commands come out; typed replies and pushes
go in (``Codec.encode``), bytes come out. Nothing here imports asyncio or touches a
socket, so every rule can be tested and fuzzed without a server.
"""

from __future__ import annotations

from .codec import CODECS, JSON, MSGPACK, SUBPROTOCOLS, Codec
from .commands import Command, Rejected, parse_command
from .errors import CloseCode, CommandError, ErrorCode, FrameError, ProtocolError
from .rooms import RoomName, parse_room


def decode_commands(codec: Codec, data: bytes | str) -> list[Command | Rejected]:
    """Decode one frame into its commands; raises ``FrameError`` if it is not a message."""
    return [parse_command(message) for message in codec.decode(data)]


__all__ = [
    "CODECS",
    "JSON",
    "MSGPACK",
    "SUBPROTOCOLS",
    "CloseCode",
    "Codec",
    "Command",
    "CommandError",
    "ErrorCode",
    "FrameError",
    "ProtocolError",
    "Rejected",
    "RoomName",
    "decode_commands",
    "parse_command",
    "parse_room",
]
