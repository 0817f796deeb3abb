"""Engine.IO v4 and Socket.IO v5 packets, pure: what ``--protocol socketio`` speaks.

Over the websocket transport one WebSocket text frame carries one Engine.IO
packet: a type digit, then data. ``0{json}`` open, ``1`` close, ``2`` ping (the
client answers ``3`` pong), ``4…`` a Socket.IO packet, ``6`` noop. A Socket.IO
packet is a type digit, an optional ``/namespace,``, an optional ack id, then
JSON: ``0`` connect, ``1`` disconnect, ``2`` event ``["name", args…]``, ``3``
ack, ``4`` connect error. Binary packets (``5``, ``6``) are not supported.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson


class Kind(enum.Enum):
    OPEN = "open"
    CLOSE = "close"
    PING = "ping"
    PONG = "pong"
    NOOP = "noop"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    EVENT = "event"
    ACK = "ack"
    CONNECT_ERROR = "connect_error"


_ENGINE = {ord("0"): Kind.OPEN, ord("1"): Kind.CLOSE, ord("2"): Kind.PING, ord("3"): Kind.PONG}
_ENGINE[ord("6")] = Kind.NOOP
_SOCKET = {
    ord("0"): Kind.CONNECT,
    ord("1"): Kind.DISCONNECT,
    ord("2"): Kind.EVENT,
    ord("3"): Kind.ACK,
    ord("4"): Kind.CONNECT_ERROR,
}
_MESSAGE = ord("4")

CONNECT = b"40"
"""Connect to the default namespace (``connect_packet`` with auth)."""
PONG = b"3"
CLOSE = b"1"


class PacketError(ValueError):
    """Not an Engine.IO / Socket.IO packet this client understands."""


@dataclass(frozen=True, slots=True)
class Packet:
    kind: Kind
    data: Any = None
    """Open: the handshake dict; event: ``[name, args…]``; ack: the args list."""
    namespace: str = "/"
    ack: int | None = None

    @property
    def event(self) -> str | None:
        if self.kind is Kind.EVENT and self.data and isinstance(self.data[0], str):
            name: str = self.data[0]
            return name
        return None

    @property
    def args(self) -> list[Any]:
        return list(self.data[1:]) if self.kind is Kind.EVENT and self.data else []


def parse(payload: bytes) -> Packet:
    """One Engine.IO packet (a whole text frame)."""
    if not payload:
        raise PacketError("empty packet")
    kind = _ENGINE.get(payload[0])
    if kind is Kind.OPEN:
        return Packet(kind, _json(payload[1:]))
    if kind is not None:
        return Packet(kind, payload[1:].decode() or None)
    if payload[0] != _MESSAGE:
        raise PacketError(f"unknown Engine.IO packet type {payload[:1]!r}")
    return _parse_socket(payload[1:])


def _parse_socket(packet: bytes) -> Packet:
    if not packet:
        raise PacketError("empty Socket.IO packet")
    kind = _SOCKET.get(packet[0])
    if kind is None:
        raise PacketError(f"unsupported Socket.IO packet type {packet[:1]!r}")
    position = 1
    namespace = "/"
    if packet[position : position + 1] == b"/":
        comma = packet.find(b",", position)
        end = comma if comma >= 0 else len(packet)
        namespace = packet[position:end].decode()
        position = end + 1 if comma >= 0 else end
    digits = position
    while digits < len(packet) and 48 <= packet[digits] <= 57:
        digits += 1
    ack = int(packet[position:digits]) if digits > position else None
    data = _json(packet[digits:]) if digits < len(packet) else None
    if kind is Kind.EVENT and not (isinstance(data, list) and data):
        raise PacketError("an event carries a non-empty JSON array")
    return Packet(kind, data, namespace, ack)


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise PacketError(f"bad JSON in packet: {error}") from None


def connect_packet(auth: dict[str, Any] | None = None) -> bytes:
    """``40{auth}``: connect to the default namespace, with socket.io-client's ``auth``."""
    return CONNECT + orjson.dumps(auth) if auth else CONNECT


def event(name: str, *args: Any, ack: int | None = None) -> bytes:
    """``42[ack]["name",args…]``: an event to the default namespace."""
    head = b"42" if ack is None else b"42%d" % ack
    return head + orjson.dumps([name, *args])
