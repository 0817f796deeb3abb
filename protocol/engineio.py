"""Engine.IO version 4, pure: the packets under Socket.IO, and its handshake rules.

A packet is a type digit, then its data: ``0`` open (the handshake JSON), ``1``
close, ``2`` ping, ``3`` pong, ``4`` message (a Socket.IO packet), ``5`` upgrade,
``6`` noop. Over WebSocket one frame is one packet; a binary frame is a binary
message (no type byte). Over HTTP long-polling a request or response body is a
*payload*: packets separated by ``\\x1e``, a binary message written as ``b`` and
its base64.

Decoding raises only ``EngineIOError`` (a ``FrameError``: the peer is closed);
anything else escaping this module is a bug. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

import orjson

from .errors import FrameError

PROTOCOL: Final = "4"
SEPARATOR: Final = b"\x1e"
MAX_PACKETS_PER_PAYLOAD: Final = 1000
MAX_SID: Final = 128


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class EngineIOError(FrameError):
    """Bytes that are not an Engine.IO packet or payload."""


@dataclass(frozen=True, slots=True)
class Packet:
    type: PacketType
    data: str | bytes = ""
    """Text for every type; bytes only for a binary message."""


_TYPES: Final = {str(t.value): t for t in PacketType}


# WebSocket: one packet per frame ----------------------------------------------------------


def decode_packet(data: str | bytes) -> Packet:
    """A WebSocket message: ``str`` for a text frame, ``bytes`` for a binary one."""
    if isinstance(data, bytes):
        return Packet(PacketType.MESSAGE, data)
    if not data:
        raise EngineIOError("empty Engine.IO packet")
    packet_type = _TYPES.get(data[0])
    if packet_type is None:
        raise EngineIOError(f"unknown Engine.IO packet type {data[:1]!r}")
    return Packet(packet_type, data[1:])


def encode_packet(packet: Packet) -> str | bytes:
    """The WebSocket message for a packet (binary messages go as binary frames)."""
    if isinstance(packet.data, bytes):
        return packet.data
    return f"{packet.type.value}{packet.data}"


# Polling: payloads --------------------------------------------------------------------------


def decode_payload(body: bytes) -> list[Packet]:
    """The packets of a polling request body."""
    if not body:
        raise EngineIOError("empty payload")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise EngineIOError("payload is not UTF-8") from None
    parts = text.split("\x1e")
    if len(parts) > MAX_PACKETS_PER_PAYLOAD:
        raise EngineIOError(f"a payload carries at most {MAX_PACKETS_PER_PAYLOAD} packets")
    return [_decode_polled(part) for part in parts]


def _decode_polled(part: str) -> Packet:
    if part[:1] == "b":
        try:
            return Packet(PacketType.MESSAGE, base64.b64decode(part[1:], validate=True))
        except (binascii.Error, ValueError):
            raise EngineIOError("a binary packet is not valid base64") from None
    return decode_packet(part)


def encode_polled(packet: Packet) -> bytes:
    """One packet as it goes in a payload (without the separator)."""
    if isinstance(packet.data, bytes):
        return b"b" + base64.b64encode(packet.data)
    return f"{packet.type.value}{packet.data}".encode()


def encode_payload(packets: Sequence[Packet]) -> bytes:
    return SEPARATOR.join(encode_polled(packet) for packet in packets)


# The handshake -------------------------------------------------------------------------------


def open_packet(
    sid: str,
    *,
    upgrades: Sequence[str],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
) -> Packet:
    """``0{...}``: the session's id and timing (seconds here, milliseconds on the wire)."""
    handshake = {
        "sid": sid,
        "upgrades": list(upgrades),
        "pingInterval": round(ping_interval * 1000),
        "pingTimeout": round(ping_timeout * 1000),
        "maxPayload": max_payload,
    }
    return Packet(PacketType.OPEN, orjson.dumps(handshake).decode())


class RequestError(IntEnum):
    """Engine.IO's HTTP errors: answered 400 (403 for FORBIDDEN) with ``error_body``."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def status(self) -> int:
        return 403 if self is RequestError.FORBIDDEN else 400


_MESSAGES: Final = {
    RequestError.UNKNOWN_TRANSPORT: "Transport unknown",
    RequestError.UNKNOWN_SID: "Session ID unknown",
    RequestError.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    RequestError.BAD_REQUEST: "Bad request",
    RequestError.FORBIDDEN: "Forbidden",
    RequestError.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


def error_body(error: RequestError) -> bytes:
    return orjson.dumps({"code": error.value, "message": error.message})


Transport = Literal["polling", "websocket"]


@dataclass(frozen=True, slots=True)
class Request:
    """What an Engine.IO request's query asks for."""

    transport: Transport
    sid: str | None


class RequestRefused(Exception):
    """The query is not an Engine.IO v4 request; answer ``error``."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(error.message)
        self.error = error


def parse_request(query: Mapping[str, str]) -> Request:
    """Check ``EIO``, ``transport`` and ``sid``; raises ``RequestRefused``."""
    if query.get("EIO") != PROTOCOL:
        raise RequestRefused(RequestError.UNSUPPORTED_PROTOCOL_VERSION)
    transport = _TRANSPORTS.get(query.get("transport", ""))
    if transport is None:
        raise RequestRefused(RequestError.UNKNOWN_TRANSPORT)
    sid = query.get("sid")
    if sid is not None and not 0 < len(sid) <= MAX_SID:
        raise RequestRefused(RequestError.UNKNOWN_SID)
    return Request(transport, sid)


_TRANSPORTS: Final[dict[str, Transport]] = {"polling": "polling", "websocket": "websocket"}
