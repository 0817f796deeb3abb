"""Socket.IO version 5, pure: packets, binary attachments, and our ops as events.

A packet is the data of an Engine.IO message: a type digit; for a binary packet
the count of attachments and ``-``; a namespace and ``,`` unless it is ``/``; an
ack id; then JSON. ``0`` CONNECT, ``1`` DISCONNECT, ``2`` EVENT
(``["name", args...]``), ``3`` ACK (``[args...]``), ``4`` CONNECT_ERROR, ``5``
BINARY_EVENT and ``6`` BINARY_ACK: their bytes travel as the binary messages that
follow, each standing where the JSON has ``{"_placeholder": true, "num": n}``.

Our server side: every op of the protocol is an event of the same name whose
first argument is the op's arguments (``event_command``); a reply is the ack
(``SocketIOCodec``); a push is an event named like the push, with the push's
fields. Decoding raises only ``SocketIOError`` (a ``FrameError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import orjson

from . import jsonvalue
from .codec import Codec
from .commands import Command, Connect, Rejected, parse_command
from .errors import ErrorCode, FrameError
from .outgoing import ErrorReply, OkReply, Outgoing
from .rooms import is_room_name

MAX_ATTACHMENTS: Final = 16
MAX_ACK_ID: Final = 2**53 - 1
"""JavaScript's largest exact integer: a client's ack ids stay below it."""
MAX_NAMESPACE: Final = 128
MAX_OFFSET_ROOMS: Final = 100
MAIN: Final = "/"
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
"""Names socket.io-client refuses in an event (it would drop the connection)."""


class PacketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_BINARY: Final = (PacketType.BINARY_EVENT, PacketType.BINARY_ACK)


class SocketIOError(FrameError):
    """Text or bytes that are not a Socket.IO packet."""


@dataclass(frozen=True, slots=True)
class Packet:
    type: PacketType
    namespace: str = MAIN
    data: object = None
    """The JSON payload, attachments in place (bytes); None when there is none."""
    id: int | None = None


# Decoding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    packet: Packet
    attachments: int


def _parse_text(text: str) -> _Header:
    if not text:
        raise SocketIOError("empty Socket.IO packet")
    if not "0" <= text[0] <= "6":
        raise SocketIOError(f"unknown Socket.IO packet type {text[:1]!r}")
    packet_type = PacketType(ord(text[0]) - 48)
    position = 1
    attachments = 0
    if packet_type in _BINARY:
        dash = text.find("-", position)
        count = text[position:dash]
        if dash < 0 or not count.isascii() or not count.isdigit() or len(count) > 3:
            raise SocketIOError("a binary packet starts with its attachment count and '-'")
        attachments = int(count)
        if attachments > MAX_ATTACHMENTS:
            raise SocketIOError(f"a packet carries at most {MAX_ATTACHMENTS} attachments")
        position = dash + 1
    namespace = MAIN
    if text.startswith("/", position):
        comma = text.find(",", position)
        end = comma if comma >= 0 else len(text)
        namespace = text[position:end]
        if len(namespace) > MAX_NAMESPACE:
            raise SocketIOError(f"a namespace is at most {MAX_NAMESPACE} characters")
        position = end + 1 if comma >= 0 else end
    digits = position
    while digits < len(text) and "0" <= text[digits] <= "9":
        digits += 1
    ack_id = int(text[position:digits]) if 0 < digits - position <= 16 else None
    if digits - position > 16 or (ack_id is not None and ack_id > MAX_ACK_ID):
        raise SocketIOError(f"an ack id is at most {MAX_ACK_ID}")
    data: object = None
    if digits < len(text):
        try:
            data = jsonvalue.loads(text[digits:])
        except (ValueError, RecursionError) as error:
            raise SocketIOError(f"packet data is not JSON: {error}") from None
    _check_payload(packet_type, data, ack_id)
    return _Header(Packet(packet_type, namespace, data, ack_id), attachments)


def _check_payload(packet_type: PacketType, data: object, ack_id: int | None) -> None:
    """What socket.io-parser accepts for each type."""
    match packet_type:
        case PacketType.CONNECT:
            valid = data is None or isinstance(data, dict)
        case PacketType.DISCONNECT:
            valid = data is None
        case PacketType.CONNECT_ERROR:
            valid = isinstance(data, str | dict)
        case PacketType.EVENT | PacketType.BINARY_EVENT:
            valid = (
                isinstance(data, list)
                and bool(data)
                and (
                    (isinstance(data[0], str) and data[0] not in RESERVED_EVENTS)
                    or (type(data[0]) is int)
                )
            )
        case PacketType.ACK | PacketType.BINARY_ACK:
            valid = isinstance(data, list) and ack_id is not None
    if not valid:
        raise SocketIOError(f"invalid payload for a {packet_type.name} packet")


class Decoder:
    """Reassembles packets from Engine.IO messages: text, then any attachments.

    Feed every message of one connection in order; each call returns the packet
    completed by that message, or None while attachments are awaited.
    """

    __slots__ = ("_attachments", "_waiting")

    def __init__(self) -> None:
        self._waiting: _Header | None = None
        self._attachments: list[bytes] = []

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def text(self, text: str) -> Packet | None:
        if self._waiting is not None:
            raise SocketIOError("a text packet came while attachments were awaited")
        header = _parse_text(text)
        if header.attachments == 0:
            return (
                _reconstruct(header.packet, []) if header.packet.type in _BINARY else header.packet
            )
        self._waiting = header
        return None

    def binary(self, data: bytes) -> Packet | None:
        header = self._waiting
        if header is None:
            raise SocketIOError("an attachment came with no binary packet before it")
        self._attachments.append(data)
        if len(self._attachments) < header.attachments:
            return None
        attachments, self._attachments = self._attachments, []
        self._waiting = None
        return _reconstruct(header.packet, attachments)


def _reconstruct(packet: Packet, attachments: list[bytes]) -> Packet:
    """Put the attachments where their placeholders are (iteratively: JSON nests deep)."""
    used: set[int] = set()

    def resolve(value: object) -> object:
        if isinstance(value, dict) and value.get("_placeholder") is True and "num" in value:
            number = value["num"]
            if type(number) is not int or not 0 <= number < len(attachments):
                raise SocketIOError(f"placeholder {number!r:.20} names no attachment")
            used.add(number)
            return attachments[number]
        if isinstance(value, dict | list):
            pending.append(value)
        return value

    pending: list[list[object] | dict[object, object]] = []
    data = resolve(packet.data)
    while pending:
        container = pending.pop()
        if isinstance(container, list):
            for index, item in enumerate(container):
                container[index] = resolve(item)
        else:
            for key, item in container.items():
                container[key] = resolve(item)
    if len(used) != len(attachments):
        raise SocketIOError("an attachment has no placeholder")
    return Packet(packet.type, packet.namespace, data, packet.id)


# Encoding --------------------------------------------------------------------------------


def encode(packet: Packet) -> list[str | bytes]:
    """The Engine.IO messages of a packet: its text, then its attachments.

    Bytes anywhere in the data make an EVENT a BINARY_EVENT (an ACK a BINARY_ACK).
    """
    attachments: list[bytes] = []
    data = _deconstruct(packet.data, attachments)
    packet_type = packet.type
    if attachments and packet_type is PacketType.EVENT:
        packet_type = PacketType.BINARY_EVENT
    elif attachments and packet_type is PacketType.ACK:
        packet_type = PacketType.BINARY_ACK
    head = str(packet_type.value)
    if packet_type in _BINARY:
        head += f"{len(attachments)}-"
    if packet.namespace != MAIN:
        head += packet.namespace + ","
    if packet.id is not None:
        head += str(packet.id)
    if data is not None:
        head += orjson.dumps(data).decode()
    return [head, *attachments]


def _deconstruct(data: object, attachments: list[bytes]) -> object:
    if isinstance(data, bytes):
        attachments.append(data)
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, list):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def connect_error(message: str, code: ErrorCode | None = None, namespace: str = MAIN) -> str:
    """``44{message, data: {code}}``: a refused CONNECT, as socket.io's middleware errors."""
    data: dict[str, object] = {"message": message}
    if code is not None:
        data["data"] = {"code": str(code)}
    text = encode(Packet(PacketType.CONNECT_ERROR, namespace, data))[0]
    assert isinstance(text, str)
    return text


def connected(sid: str, pid: str | None) -> str:
    """``40{sid, pid}``: the main namespace's CONNECT answered."""
    data: dict[str, object] = {"sid": sid}
    if pid is not None:
        data["pid"] = pid
    return "0" + orjson.dumps(data).decode()


# Our ops as events ------------------------------------------------------------------------

ALIASES: Final = {"message": "send"}
"""Event names taken as another op: the app's ``message`` is ``send``."""


def event_command(packet: Packet) -> Command | Rejected:
    """The command an EVENT asks for: ``[op, args?]`` with the ack id, if any.

    Command ids are the ack id plus one (ack ids start at 0, command ids at 1), so
    a reply is the ack of ``id - 1``. A room op's arguments may be the room name
    alone (``emit("join", "swap:1")``).
    """
    data = packet.data
    assert isinstance(data, list) and data, "decoded EVENT packets carry [name, ...]"
    command_id = None if packet.id is None else packet.id + 1
    name = data[0]
    op = ALIASES.get(name, name) if isinstance(name, str) else str(name)
    if op == Connect.op:
        return Rejected(command_id, op, ErrorCode.BAD_REQUEST, "connect is the CONNECT packet")
    args = data[1:]
    if len(args) > 1:
        return Rejected(command_id, op, ErrorCode.BAD_REQUEST, f"{op}: one argument (an object)")
    arg = args[0] if args else {}
    if isinstance(arg, str) and is_room_name(arg):
        arg = {"room": arg}
    if not isinstance(arg, dict):
        return Rejected(command_id, op, ErrorCode.BAD_REQUEST, f"{op}: the argument is an object")
    return parse_command({**arg, "op": op, "id": command_id})


class SocketIOCodec(Codec):
    """Replies and pushes as Socket.IO packets of the main namespace.

    A push ``{"push": "message", ...}`` is the event ``42["message",{...}]``; a
    reply to command ``n`` is the ack ``43<n-1>[ok]`` (or ``[{"error": ...}]``).
    ``websocket``: each packet is a WebSocket text frame; else a polling packet,
    written with the separator after it. Decoding is ``Decoder``'s job.
    """

    binary = False

    def __init__(self, *, websocket: bool) -> None:
        self.websocket = websocket
        self.subprotocol = "socket.io" if websocket else "socket.io (polling)"
        self.ping = b"2"

    def decode(self, data: bytes | str) -> list[object]:
        raise FrameError("Socket.IO packets are decoded by protocol.socketio.Decoder")

    def encode(self, message: Outgoing) -> bytes:
        if isinstance(message, OkReply):
            ok = message.result.to_wire(orjson.Fragment)
            return b"43%d" % (message.id - 1) + orjson.dumps([ok])
        if isinstance(message, ErrorReply):
            error = {"error": {"code": str(message.code), "message": message.message}}
            return b"43%d" % (message.id - 1) + orjson.dumps([error])
        wire = message.to_wire(orjson.Fragment)
        name = wire.pop("push", "message")
        return b"42" + orjson.dumps([name, wire])


SIO_WEBSOCKET: Final = SocketIOCodec(websocket=True)
SIO_POLLING: Final = SocketIOCodec(websocket=False)


# Recovery offsets --------------------------------------------------------------------------
#
# The offset a socket.io-client keeps (the last string argument of the last event) is
# where the connection stands in each of its rooms: "room=seq room=seq ...". Room names
# hold no space or '=', so the text is its own format.


def encode_offset(positions: dict[str, int]) -> str:
    return " ".join(f"{room}={seq}" for room, seq in positions.items())


def decode_offset(text: object) -> dict[str, int]:
    """The rooms and seqs of an offset; raises ``SocketIOError`` when it is not one."""
    if not isinstance(text, str) or len(text) > MAX_OFFSET_ROOMS * 220:
        raise SocketIOError("an offset is a string of room=seq pairs")
    positions: dict[str, int] = {}
    for part in text.split():
        room, equals, seq = part.rpartition("=")
        if not equals or not is_room_name(room) or not seq.isascii() or not seq.isdigit():
            raise SocketIOError(f"bad offset entry {part[:40]!r}")
        if len(seq) > 19 or len(positions) >= MAX_OFFSET_ROOMS:
            raise SocketIOError("offset too large")
        positions[room] = int(seq)
    return positions
