"""A Socket.IO client over ``FastConnection``: Engine.IO v4 on the websocket transport.

Opening: the server sends ``0{…}`` (open), the client ``40{"token":…}`` (connect
to the default namespace with socket.io-client's ``auth``), the server ``40{…}``
or ``44{…}`` (refused). Engine.IO pings (``2``) are answered with ``3``. Events
go to ``on_event``; ``call`` emits an event with an ack id and waits for its ack,
``emit(…, ack=n)`` leaves the ack to ``on_ack`` (the publisher's hot path).

The events are the ones realtime's ``/socket.io/`` serves and the benchmark's
peers mimic: ``join`` ``{room, token}`` acked with ``{room, seq, …}``, ``send``
``{room, body}`` acked with ``{room, seq, ts}``, ``{"error": {code, message}}``
as the ack of a refused one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from .fastws import FastConnection
from .sioproto import PONG, Kind, Packet, PacketError, connect_packet, event, parse
from .target import Target
from .wsclient import ConnectionClosed

TIMEOUT = 30.0

IGNORED = (b'42["offset",', b'42["presence",', b'42["typing",')
"""Events no load client looks at, dropped unread: realtime's /socket.io/ follows a
write with the connection's recovery ``offset``, and presence and typing as on ``/ws``."""

OnEvent = Callable[[str, list[Any]], None]
OnAck = Callable[[int, list[Any]], None]


class SocketIOError(Exception):
    """An ack carrying ``{"error": {code, message}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class SocketIOClient:
    def __init__(self, connection: FastConnection) -> None:
        loop = asyncio.get_running_loop()
        self.connection = connection
        self.opened: asyncio.Future[Any] = loop.create_future()
        self.connected: asyncio.Future[Any] = loop.create_future()
        self._calls: dict[int, asyncio.Future[list[Any]]] = {}
        self._ids = itertools.count(1)
        self.on_event: OnEvent = _ignore
        self.on_ack: OnAck = _ignore_ack
        """Acks nobody awaits (ids from ``next_ack``, sent with ``emit(…, ack=…)``)."""
        connection.skip = IGNORED
        connection.on_payload = self._on_payload
        connection.closed.add_done_callback(self._on_closed)

    @classmethod
    async def open(
        cls,
        target: Target,
        index: int,
        token: str | None,
        connection_class: type[FastConnection] = FastConnection,
    ) -> SocketIOClient:
        """Open the WebSocket, then the Engine.IO session and the default namespace,
        the token in the CONNECT's ``auth`` (as ``io(url, {auth: {token}})`` does)."""
        connection = await target.open(index, connection_class, None)
        client = cls(connection)
        try:
            async with asyncio.timeout(target.connect_timeout):
                await client.opened
                connection.send_text(connect_packet({"token": token} if token else None))
                await client.connected
        except BaseException:
            connection.abort()
            raise
        return client

    def next_ack(self) -> int:
        return next(self._ids)

    def emit(self, name: str, *args: Any, ack: int | None = None) -> None:
        self.connection.send_text(event(name, *args, ack=ack))

    async def call(self, name: str, data: Any, limit: float = TIMEOUT) -> Any:
        """Emit ``name`` with ``data`` and an ack id; the ack's first argument (its ok
        reply), or ``SocketIOError`` for an ``{"error": …}`` one."""
        ack = self.next_ack()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._calls[ack] = future
        try:
            self.emit(name, data, ack=ack)
            async with asyncio.timeout(limit):
                args = await future
        finally:
            self._calls.pop(ack, None)
        reply = args[0] if args else None
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            error = reply["error"]
            raise SocketIOError(str(error.get("code")), str(error.get("message")))
        return reply

    def _on_payload(self, opcode: int, payload: bytes) -> None:
        try:
            packet = parse(payload)
        except PacketError as error:
            self.connection.fail(f"socket.io: {error}")
            return
        kind = packet.kind
        if kind is Kind.EVENT:
            self._on_event(packet)
        elif kind is Kind.ACK:
            self._on_ack(packet)
        elif kind is Kind.PING:
            self.connection.send_text(PONG)
        elif kind is Kind.OPEN:
            _settle(self.opened, packet.data)
        elif kind is Kind.CONNECT:
            _settle(self.connected, packet.data)
        elif kind is Kind.CONNECT_ERROR:
            if not self.connected.done():
                self.connected.set_exception(ConnectionError(f"socket.io refused: {packet.data}"))
        elif kind is Kind.CLOSE or kind is Kind.DISCONNECT:
            self.connection.abort()

    def _on_event(self, packet: Packet) -> None:
        name = packet.event
        if name is not None:
            self.on_event(name, packet.args)

    def _on_ack(self, packet: Packet) -> None:
        if packet.ack is None:
            return
        args = packet.data if isinstance(packet.data, list) else []
        future = self._calls.pop(packet.ack, None)
        if future is None:
            self.on_ack(packet.ack, args)
        elif not future.done():
            future.set_result(args)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        error = ConnectionClosed(closed.result(), self.connection.close_reason)
        futures = [self.opened, self.connected, *self._calls.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        # Nobody may await them any more: retrieve, so asyncio does not complain.
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()

    async def close(self) -> None:
        await self.connection.close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _ignore(name: str, args: list[Any]) -> None:
    pass


def _ignore_ack(ack: int, args: list[Any]) -> None:
    pass
