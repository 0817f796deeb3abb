"""A WebSocket client connection cheap enough to read 100,000s of frames a second.

The generator must spend less per delivery than the server it measures. Public
client libraries cost 5 to 9 µs per received frame in Python (a task wake-up or a
generator-based parser per frame), so this connection is an ``asyncio.Protocol``
that parses frames in ``data_received`` and hands each message to a callback, with
no task per message. The opening handshake goes through the ``websockets`` Sans-I/O
protocol (key and subprotocol checks); frames are ours (``wsframes.py``).

Sockets are opened by hand so that a source address can be chosen without
reserving a port (``IP_BIND_ADDRESS_NO_PORT``): past ~28,000 connections to one
destination the loopback runs out of ports per source address, and
``Dialer`` rotates through 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Self, cast
from urllib.parse import urlparse

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .wsframes import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    client_frame,
    parse_close,
)

OnPayload = Callable[[int, bytes], None]
"""(opcode, payload) for each complete text or binary message."""

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_HEAD = 65536
MAX_EARLY = 1000
ABNORMAL = 1006


class HandshakeError(ConnectionError):
    """The server answered the upgrade with something else than 101."""

    def __init__(self, status: int, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {detail}".strip())
        self.status = status
        self.retry_after = retry_after
        """Seconds from the response's ``Retry-After`` (a 503 or 429), if it had one."""


class FastConnection(asyncio.Protocol):
    def __init__(self, url: str, headers: dict[str, str], subprotocols: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        # None, not []: an empty list sends an empty Sec-WebSocket-Protocol header,
        # which strict servers (Node's ws, so Socket.IO) refuse with a 400.
        offered = [Subprotocol(p) for p in subprotocols] or None
        self._handshake: ClientProtocol | None = ClientProtocol(
            parse_uri(url), subprotocols=offered, max_size=None
        )
        self._headers = headers
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader()
        self.opened: asyncio.Future[None] = loop.create_future()
        # A refusal can land while the timeout cancels ``create_connection``, before
        # ``connect`` holds this protocol: retrieved here, or asyncio reports it.
        self.opened.add_done_callback(_retrieve)
        self.closed: asyncio.Future[int] = loop.create_future()
        """The close code once the TCP connection is gone (1006 without a close frame)."""
        self._on_payload: OnPayload | None = None
        self._early: list[tuple[int, bytes]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.subprotocol: str | None = None
        self.skip: tuple[bytes, ...] = ()
        """Text messages starting with one of these are dropped unread (pushes that a
        load client never looks at, like presence)."""

    # Setup ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        subprotocols: tuple[str, ...] = (),
        local_host: str | None = None,
        limit: float = 10.0,
    ) -> Self:
        """Open a TCP connection (from ``local_host`` if given) and upgrade it, within
        ``limit`` seconds."""
        parsed = urlparse(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(limit):
            address = await _resolve(parsed.hostname or "127.0.0.1", parsed.port or 80)
            sock = await _open_socket(address, local_host)
            try:
                _, protocol = await loop.create_connection(
                    lambda: cls(url, headers or {}, subprotocols), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            try:
                await protocol.opened
            except BaseException:
                protocol.abort()
                raise
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self._transport = cast(asyncio.Transport, transport)
        assert self._handshake is not None
        request = self._handshake.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        self._handshake.send_request(request)
        for chunk in self._handshake.data_to_send():
            self._transport.write(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code or ABNORMAL)

    # Reading ---------------------------------------------------------------------------

    @property
    def on_payload(self) -> OnPayload:
        """Called with each text or binary message. Messages that arrive before it is
        set (with the handshake's response, say) wait for it."""
        return self._on_payload or self._keep

    @on_payload.setter
    def on_payload(self, callback: OnPayload) -> None:
        self._on_payload = callback
        early, self._early = self._early, []
        for opcode, payload in early:
            callback(opcode, payload)

    def _keep(self, opcode: int, payload: bytes) -> None:
        if len(self._early) < MAX_EARLY:
            self._early.append((opcode, payload))

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            self._read_handshake(data)
            return
        try:
            frames = self._reader.feed(data, self.skip)
        except FrameError as error:
            self.fail(str(error))
            return
        for opcode, payload in frames:
            self._on_frame(opcode, payload)

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY):
            self.on_payload(opcode, payload)
        elif opcode == PING:
            self._write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            self._on_close(payload)

    def _read_handshake(self, data: bytes) -> None:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            if len(head) > MAX_HEAD:
                self._refuse(HandshakeError(0, "response head too long"))
            return
        self._head = b""
        status_line = head[: head.find(b"\r\n")].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 101:
            self._refuse(HandshakeError(status, retry_after=retry_after(head[:end])))
            return
        handshake = self._handshake
        assert handshake is not None
        handshake.receive_data(head[: end + 4])
        for event in handshake.events_received():
            if isinstance(event, Response) and handshake.state is State.OPEN:
                self.subprotocol = handshake.subprotocol
        if handshake.state is not State.OPEN:
            self._refuse(HandshakeError(101, f"refused: {handshake.handshake_exc}"))
            return
        self._handshake = None  # keeps memory per idle connection low
        self.opened.set_result(None)
        if len(head) > end + 4:
            self.data_received(head[end + 4 :])

    def _refuse(self, error: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        self.abort()

    def _on_close(self, payload: bytes) -> None:
        self.close_code, self.close_reason = parse_close(payload)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(client_frame(CLOSE, payload[:2]))
            transport.close()

    def fail(self, reason: str) -> None:
        """The server broke the protocol: close with 1002 at once."""
        self.close_code, self.close_reason = 1002, reason
        self._write(client_frame(CLOSE, (1002).to_bytes(2, "big")))
        self.abort()

    # Writing ---------------------------------------------------------------------------

    def send_text(self, text: bytes) -> None:
        self._write(client_frame(TEXT, text))

    def send_binary(self, data: bytes) -> None:
        self._write(client_frame(BINARY, data))

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    @property
    def is_open(self) -> bool:
        return (
            self._transport is not None
            and not self._transport.is_closing()
            and self.opened.done()
            and self.opened.exception() is None
        )

    async def close(self, code: int = 1000, limit: float = 5.0) -> None:
        """Close handshake: send a close frame, wait for the server to end TCP."""
        transport = self._transport
        if transport is None or self.closed.done():
            return
        if not transport.is_closing():
            transport.write(client_frame(CLOSE, code.to_bytes(2, "big")))
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self.closed)
        except TimeoutError:
            transport.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def retry_after(head: bytes) -> float | None:
    """The ``Retry-After`` of a response head, in seconds (the delay form only)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            value = value.strip()
            return float(value) if value.isdigit() else None
    return None


_addresses: dict[tuple[str, int], tuple[int, tuple[str, int]]] = {}


async def _resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """(address family, socket address), looked up once per host and port."""
    key = (host, port)
    if key not in _addresses:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        _addresses[key] = (family, (str(address[0]), int(address[1])))
    return _addresses[key]


async def _open_socket(
    address: tuple[int, tuple[str, int]], local_host: str | None
) -> socket.socket:
    family, destination = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_host is not None:
            # Choose the port at connect time, per destination: without this, bind()
            # reserves a port for this source address whatever the destination.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local_host, 0))
        await asyncio.get_running_loop().sock_connect(sock, destination)
    except BaseException:
        sock.close()
        raise
    return sock
