"""Pure helpers for the generator's tests: server frames, a transport that records
writes, and connections opened over it with a real handshake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from typing import Any, TypeVar

from websockets.utils import apply_mask

from loadtest.fastws import FastConnection
from loadtest.receiver import CountingConnection, Receiver
from loadtest.sioclient import SocketIOClient
from loadtest.subscribers import realtime_recorder, socketio_recorder
from loadtest.wsclient import RealtimeClient

C = TypeVar("C", bound=FastConnection)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(
    opcode: int, payload: bytes, *, fin: bool = True, length: str = "auto", rsv: int = 0
) -> bytes:
    """An unmasked server frame; ``length`` forces the 7, 16 or 64-bit form."""
    size = len(payload)
    form = length if length != "auto" else ("7" if size < 126 else "16" if size < 65536 else "64")
    first = bytes([(0x80 if fin else 0) | rsv | opcode])
    if form == "7":
        head = first + bytes([size])
    elif form == "16":
        head = first + bytes([126]) + size.to_bytes(2, "big")
    else:
        head = first + bytes([127]) + size.to_bytes(8, "big")
    return head + payload


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of the masked frames a client wrote."""
    frames = []
    pos = 0
    while pos < len(data):
        opcode = data[pos] & 0x0F
        assert data[pos + 1] & 0x80, "client frames must be masked"
        size = data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        frames.append((opcode, apply_mask(data[pos : pos + size], mask)))
        pos += size
    return frames


class RecordingTransport(asyncio.Transport):
    """Records what is written; reads come from the test, or from ``sock`` once the
    protocol stops reading through the transport (``Receiver``)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        super().__init__(extra={"socket": sock})
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def take(self) -> list[tuple[int, bytes]]:
        """The client frames written since the last call."""
        frames = client_frames(bytes(self.written))
        self.written.clear()
        return frames


def opened(cls: type[C], after_head: bytes = b"", sock: socket.socket | None = None) -> C:
    """A connection of class ``cls`` after a real opening handshake over a recording
    transport; ``after_head`` arrives in the same read as the 101."""
    connection = cls("ws://127.0.0.1:1/ws", {"Authorization": "Bearer x"}, ())
    transport = RecordingTransport(sock)
    connection.connection_made(transport)
    request = bytes(transport.written)
    transport.written.clear()
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    connection.data_received(head + after_head)
    assert connection.opened.done() and connection.opened.exception() is None
    return connection


def transport_of(connection: FastConnection) -> RecordingTransport:
    transport = connection._transport
    assert isinstance(transport, RecordingTransport)
    return transport


class Subscribers:
    """Counting connections adopted by a ``Receiver`` over socketpairs: the test
    writes server bytes to ``send(i, data)`` and the receiver reads them."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.connections: list[CountingConnection] = []
        self._writers: list[socket.socket] = []
        self._sockets: list[socket.socket] = []

    def add(
        self, last_seq: int = 0, client: str = "realtime", room: str = ""
    ) -> CountingConnection:
        writer, reader = socket.socketpair()
        reader.setblocking(False)
        connection = opened(CountingConnection, sock=reader)
        if client == "realtime":
            RealtimeClient(connection).on_push = realtime_recorder(connection, room)
        else:
            SocketIOClient(connection).on_event = socketio_recorder(connection)
        connection.start(self.receiver.latency, last_seq)
        self.receiver.adopt(connection)
        self.connections.append(connection)
        self._writers.append(writer)
        self._sockets.append(reader)
        return connection

    def write(self, index: int, data: bytes) -> None:
        """Bytes from the server to subscriber ``index``."""
        self._writers[index].sendall(data)

    def send(self, index: int, data: bytes) -> None:
        """Bytes from the server to subscriber ``index``, read by the receiver at once."""
        self.write(index, data)
        self.receiver.ready()

    def close(self) -> None:
        for sock in (*self._writers, *self._sockets):
            sock.close()
        self.receiver.close()
